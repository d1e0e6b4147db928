"""Another process holding a lock file, for tests of what waits on it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

HOLD = """
import sys, time
from pathlib import Path
from mtbench import paths
path, how, seconds = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
path.parent.mkdir(parents=True, exist_ok=True)
lock = paths.waiting_lock(path, "a test") if how == "alive" else paths.exclusive_lock(path, owner="silent")
with lock:
    print("held", flush=True)
    time.sleep(seconds)
"""


class Holder:
    """Another process holding the lock ``path``: ``alive`` (signs of life) or ``silent`` (none, as an
    older mtbench), for ``seconds``."""

    def __init__(self, path: Path, how: str, seconds: float):
        self.process = subprocess.Popen([sys.executable, "-c", HOLD, str(path), how, str(seconds)],
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "held"
        # a waiter that never gives up (as before the fix) must not hang the test session
        self.watchdog = threading.Timer(20, self.end)
        self.watchdog.start()

    def end(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # in case a test stopped it
            self.process.kill()
        self.process.wait(timeout=30)

    def __enter__(self) -> subprocess.Popen:
        return self.process

    def __exit__(self, *exc_info) -> None:
        self.watchdog.cancel()
        self.end()
