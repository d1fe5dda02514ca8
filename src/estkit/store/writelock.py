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
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["WriteLock"]

log = logging.getLogger("estkit.store")


class WriteLock:
    """A process-and-thread mutex on ``path`` (created if missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid = -1

    def _file(self) -> int | None:
        # flock belongs to the open file: a forked worker must open its own.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            try:
                # Read-only is enough to flock, so a lock file another user
                # created (an operator's CLI run) still works for the server.
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                # Correctness does not depend on it: SQLite's own lock and busy timeout remain.
                log.warning("cannot open %s (%s): writers wait in SQLite's busy handler", self.path, exc)
                self._fd = None
        return self._fd

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the duration of a write transaction."""
        with self._thread_lock:
            fd = self._file()
            if fd is None:
                yield
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
