"""A worker for the runner tests: starts a grandchild, prints an undecodable byte and progress, then waits."""

import subprocess
import sys
import time

if __name__ == "__main__":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(f"CHILD {child.pid}", flush=True)
    sys.stdout.buffer.write(b"bad byte \xff here\n")
    sys.stdout.flush()
    print("PROGRESS 0.500 halfway", flush=True)
    if "--fail" in sys.argv:
        print("covidlesionseg: error: the worker was told to fail", file=sys.stderr, flush=True)
        sys.exit(2)
    time.sleep(600)
