"""Progress and cancellation for one run, shared by every stage (lungs, engines, inference, pipeline,
evaluate) and the consoles that show it (the command line, ``demo``).

A stage reports ``(fraction done in [0, 1], short message)`` through a ``ProgressCallback`` and stops
when a ``CancelCheck`` returns True (the Slicer module's Cancel button, a subprocess signal, a test) by
raising ``Cancelled``; nothing is written then.  This module sits at the bottom of the package: it
imports nothing of covidlesionseg.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

ProgressCallback = Callable[[float, str], None]
"""Called with (fraction done in [0, 1], short message)."""
CancelCheck = Callable[[], bool]
"""Returns True when the caller wants the work stopped."""


class Cancelled(RuntimeError):
    """Raised by a stage that was asked to stop; nothing is written."""


@dataclass
class RunControl:
    """Progress reporting and cancellation for one run, safe to call with neither given."""

    progress: ProgressCallback | None = None
    cancel: CancelCheck | None = None

    def report(self, fraction: float, message: str = "") -> None:
        if self.progress is not None:
            self.progress(float(min(max(fraction, 0.0), 1.0)), message)

    def check(self) -> None:
        """Raise ``Cancelled`` if cancellation was asked for."""
        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled by the user")

    def part(self, start: float, end: float, name: str) -> RunControl:
        """A control for one stage: its 0..1 progress fills [start, end] of this one's, messages prefixed with
        ``name``; the same cancel check."""
        def progress(fraction: float, message: str) -> None:
            self.report(start + (end - start) * fraction, f"{name}: {message}" if message else name)

        return RunControl(progress, self.cancel)

    def callbacks(self) -> tuple[ProgressCallback | None, CancelCheck | None]:
        """(progress, cancel) for APIs that take the two callbacks."""
        return self.report, self.cancel


PROGRESS_ENV = "COVIDLESIONSEG_PROGRESS"
"""``COVIDLESIONSEG_PROGRESS=lines`` turns on ``PROGRESS`` lines as ``--progress-lines`` does."""


class ConsoleProgress:
    """A ``ProgressCallback`` that shows progress on the console: a tqdm bar on stderr when it is a
    terminal, one line per stage (``segment:  35% right and left``) when stderr is a file or pipe, nothing
    with ``quiet``.

    With ``lines`` (``--progress-lines``) or ``COVIDLESIONSEG_PROGRESS=lines`` it prints
    ``PROGRESS <fraction 0..1> <message>`` lines on stdout instead, which the Slicer module reads from its
    subprocess (COVIDLesionSegLib.process parses exactly this: split on the first two spaces).
    """

    def __init__(self, desc: str, quiet: bool = False, lines: bool = False):
        from tqdm import tqdm

        self.lines = lines or os.environ.get(PROGRESS_ENV) == "lines"
        self.stage_lines = not (quiet or self.lines or sys.stderr.isatty())
        self.desc, self.stage = desc, None
        self.bar = tqdm(total=100, desc=desc, file=sys.stderr, disable=quiet or self.lines or self.stage_lines,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}")
        self.done = 0

    def __call__(self, fraction: float, message: str = "") -> None:
        if self.lines:
            print(f"PROGRESS {fraction:.3f} {message}", flush=True)
        elif self.stage_lines and message and message != self.stage:
            self.stage = message
            print(f"{self.desc}: {100 * fraction:3.0f}% {message}", file=sys.stderr, flush=True)
        target = int(round(100 * fraction))
        if target > self.done:
            self.bar.update(target - self.done)
            self.done = target
        if message:
            self.bar.set_postfix_str(message[:40], refresh=False)

    def close(self) -> None:
        self.bar.close()
