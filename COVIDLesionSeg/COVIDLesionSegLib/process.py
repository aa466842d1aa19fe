"""Background runs of the core's command line: a run's state from its output lines, and two runners.

The worker is started through a small leader script (``LEADER``) that puts it in its own process group,
prints ``WORKER_PGID <n>`` and ends the whole group when its stdin closes (the parent died); Cancel kills
that group, so the python under Slicer's ``PythonSlicer`` launcher and anything it started end together
(as MONAIAuto3DSeg ends the whole tree).  `QProcessRunner` serves the widget (merged channels,
readyRead/finished signals, as SlicerNNUnet); `SubprocessRunner` serves scripts and tests (a reader thread
that only fills a queue; `poll()` delivers lines on the caller's thread).  Each run has its own runner and
queue, so no line of one run reaches the next.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

ERROR_PREFIX = "covidlesionseg:"
PGID_PREFIX = "WORKER_PGID "

# Runs a module (argv[1]) as __main__ in a new process group; the group ends when stdin reaches EOF.
LEADER = (
    "import os, runpy, signal, sys, threading\n"
    "try:\n    os.setpgrp()\nexcept (AttributeError, OSError):\n    pass\n"
    "print('WORKER_PGID', os.getpgrp() if hasattr(os, 'getpgrp') else os.getpid(), flush=True)\n"
    "def _watch():\n"
    "    while os.read(0, 4096):\n        pass\n"
    "    if hasattr(os, 'killpg'):\n        os.killpg(os.getpgrp(), signal.SIGKILL)\n"
    "    os._exit(1)\n"
    "threading.Thread(target=_watch, daemon=True).start()\n"
    "module = sys.argv[1]\n"
    "sys.argv = [module] + sys.argv[2:]\n"
    "runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
)


def leader_command(python: str, module: str, args: Sequence[str]) -> list[str]:
    """``python -c LEADER module args...``: run ``module`` as a process-group leader."""
    return [python, "-c", LEADER, module, *args]


def kill_process_group(pgid: int) -> None:
    """Kill every process of group ``pgid`` (never our own group); quiet when it has already ended."""
    if pgid <= 0:
        return
    if os.name == "nt":  # pragma: no cover - Windows: the tree by pid
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pgid)], capture_output=True, check=False)
        return
    if pgid == os.getpgrp():
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class RunState:
    """What the module shows about a run, built from the worker's lines (none is lost between timer ticks)."""

    progress: float = 0.0
    message: str = ""
    errors: list[str] = field(default_factory=list)
    pgid: int = 0
    status: str = "running"  # running | succeeded | failed | cancelled
    exit_code: int | None = None
    lines: list[str] = field(default_factory=list)

    def add_line(self, line: str) -> None:
        line = line.rstrip("\r\n")
        self.lines.append(line)
        if line.startswith("PROGRESS "):
            parts = line.split(" ", 2)
            try:
                self.progress = float(parts[1])
            except ValueError:
                return
            self.message = parts[2] if len(parts) > 2 else ""
        elif line.startswith(PGID_PREFIX):
            self.pgid = int(line[len(PGID_PREFIX):].strip() or 0)
        elif line.startswith(ERROR_PREFIX) or line.startswith("Traceback") or "Error:" in line:
            self.errors.append(line)

    def finish(self, exit_code: int) -> None:
        """Record the exit; a cancelled run stays "cancelled" whatever code the killed process gave."""
        self.exit_code = exit_code
        if self.status == "cancelled":
            return
        self.status = "succeeded" if exit_code == 0 else "failed"
        if exit_code != 0 and not self.errors:
            self.errors.append(f"segmentation stopped (exit code {exit_code})")

    @property
    def summary(self) -> str:
        if self.status == "failed":
            return self.errors[-1]
        if self.status == "cancelled":
            return "cancelled; nothing loaded"
        return self.message


LineCallback = Callable[[str], None]
FinishedCallback = Callable[[int], None]


class SubprocessRunner:
    """A worker as a `subprocess.Popen` in a new session; lines reach callbacks when `poll` is called."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.state = RunState()
        self._lines: queue.Queue = queue.Queue()
        self._on_line: LineCallback | None = None
        self._on_finished: FinishedCallback | None = None
        self._reader_done = threading.Event()

    def start(self, command: Sequence[str], env: dict[str, str], on_line: LineCallback | None = None,
              on_finished: FinishedCallback | None = None) -> None:
        self._on_line, self._on_finished = on_line, on_finished
        self.process = subprocess.Popen(
            list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, **env}, start_new_session=(os.name != "nt"))
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()

    def _read(self, process: subprocess.Popen) -> None:
        # Only the pipe: bytes decoded leniently, so a bad byte never ends the reader.
        try:
            for raw in iter(process.stdout.readline, b""):
                self._lines.put(raw.decode("utf-8", errors="replace"))
        finally:
            self._reader_done.set()

    def poll(self) -> bool:
        """Deliver pending lines; True once the process has ended and every line was delivered."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            self.state.add_line(line)
            if self._on_line:
                self._on_line(line)
        if self.process is None or self.process.poll() is None:
            return False
        if not self._reader_done.is_set():
            # The worker has ended but something it started still holds the pipe: end the rest of its tree.
            self._reader_done.wait(0.2)
            if not self._reader_done.is_set():
                kill_process_group(self.state.pgid or self.process.pid)
            return False
        if self._lines.empty() and self.state.exit_code is None:
            self.state.finish(self.process.returncode)
            if self.process.stdin:
                self.process.stdin.close()
            if self._on_finished:
                self._on_finished(self.process.returncode)
        return self._lines.empty()

    def wait(self, timeout: float | None = None) -> RunState:
        """Block until the run ends (scripts, tests), delivering lines as they come."""
        assert self.process is not None, "start() first"
        self.process.wait(timeout)
        while not self.poll():
            pass
        return self.state

    def cancel(self) -> None:
        """End the worker's whole process tree; the run's status stays "cancelled"."""
        if self.process is None or self.state.exit_code is not None:
            return
        self.state.status = "cancelled"
        self.poll()  # learn the worker's group from lines already printed
        if self.state.pgid:
            kill_process_group(self.state.pgid)
        if os.name != "nt":
            kill_process_group(self.process.pid)  # its own session: the leader and everything it started
        self.process.kill()


class QProcessRunner:
    """The same contract on `qt.QProcess` for the widget: signals deliver lines on the GUI thread."""

    def __init__(self) -> None:
        self.process = None
        self.state = RunState()
        self._partial = b""

    def start(self, command: Sequence[str], env: dict[str, str], on_line: LineCallback | None = None,
              on_finished: FinishedCallback | None = None) -> None:
        import qt

        self._on_line, self._on_finished = on_line, on_finished
        process = qt.QProcess()
        process.setProcessChannelMode(qt.QProcess.MergedChannels)
        environment = qt.QProcessEnvironment.systemEnvironment()
        for key, value in env.items():
            environment.insert(key, value)
        process.setProcessEnvironment(environment)
        process.readyRead.connect(self._read)
        process.finished.connect(self._finished)
        self.process = process
        process.start(command[0], list(command[1:]))

    def _read(self) -> None:
        data = self._partial + bytes(self.process.readAll().data())
        *complete, self._partial = data.split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", errors="replace")
            self.state.add_line(line)
            if self._on_line:
                self._on_line(line)

    def _finished(self, exit_code, _exit_status=None) -> None:
        self._read()
        if self._partial:
            self.state.add_line(self._partial.decode("utf-8", errors="replace"))
            self._partial = b""
        self.state.finish(int(exit_code))
        if self.state.pgid:
            kill_process_group(self.state.pgid)  # anything the worker started and left behind
        if self._on_finished:
            self._on_finished(int(exit_code))

    def poll(self) -> bool:
        return self.state.exit_code is not None

    def cancel(self) -> None:
        if self.process is None or self.state.exit_code is not None:
            return
        self.state.status = "cancelled"
        self._read()
        if self.state.pgid:
            kill_process_group(self.state.pgid)
        self.process.closeWriteChannel()  # the leader's watchdog ends its group when stdin closes
        self.process.kill()


def runner_for_environment():
    """QProcessRunner inside the Slicer application, SubprocessRunner elsewhere."""
    if "qt" in sys.modules and hasattr(sys.modules["qt"], "QProcess"):
        return QProcessRunner()
    return SubprocessRunner()
