"""Group commit: concurrent writers of the same kind share one transaction.

Each caller queues its item and waits until the item is committed, so "recorded
before it is returned" holds for every caller.  Whoever finds no write in
progress becomes the leader and writes everything queued so far in one
transaction; items that arrive meanwhile go in the next one.  Under load the
batches grow by themselves, so the cost of a transaction (and of the SQLite
writers' lock, ``estkit.store.writelock``) is shared; alone, a caller writes
its item at once.  If a batch fails, each of its items is written on its own,
so every caller gets the error of its own item (a duplicate serial stays a
``Conflict`` of that one request).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")


class _Slot(Generic[T]):
    __slots__ = ("item", "done", "error")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = False
        self.error: BaseException | None = None


class GroupCommit(Generic[T]):
    """Writes items through ``write_batch`` (one transaction for a list),
    falling back to ``write_one`` per item when a batch fails."""

    def __init__(self, write_batch: Callable[[list[T]], None], write_one: Callable[[T], None],
                 max_batch: int = 256) -> None:
        self._write_batch = write_batch
        self._write_one = write_one
        self._max = max_batch
        self._queue: list[_Slot[T]] = []
        self._queue_lock = threading.Lock()
        self._leader = threading.Lock()

    def submit(self, item: T) -> None:
        """Return once ``item`` is committed; raise its error otherwise."""
        slot = _Slot(item)
        with self._queue_lock:
            self._queue.append(slot)
        while not slot.done:
            with self._leader:
                if slot.done:  # the previous leader wrote it
                    break
                with self._queue_lock:
                    batch, self._queue = self._queue[:self._max], self._queue[self._max:]
                self._write(batch)
        if slot.error is not None:
            raise slot.error

    def _write(self, batch: list[_Slot[T]]) -> None:
        try:
            if len(batch) == 1:
                self._write_one(batch[0].item)
            else:
                self._write_batch([s.item for s in batch])
        except BaseException as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                for s in batch:  # attribute the failure to the item(s) that cause it
                    try:
                        self._write_one(s.item)
                    except BaseException as one:
                        s.error = one
        for s in batch:
            s.done = True
