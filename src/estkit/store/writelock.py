"""One SQLite writer at a time, handed over without polling.

SQLite lets one writer in at a time; the others wait in its busy handler,
which sleeps 1, 2, 5, 10, ... 100 ms between tries.  Under load (several
worker processes, several threads each) those sleeps become the latency:
the benchmark's p99 was 60-240 ms with an idle CPU.  Writers therefore queue
on a lock that wakes the next one the moment it is released: a thread lock
within the process, then ``flock`` on a file beside the database across
processes (every estkit process writing the same file takes it; anything
else still meets SQLite's own locking and busy timeout).
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["WriteLock"]


class WriteLock:
    """A process-and-thread mutex on ``path`` (created if missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid = -1

    def _file(self) -> int:
        # flock belongs to the open file: a forked worker must open its own.
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the duration of a write transaction."""
        with self._thread_lock:
            fd = self._file()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
