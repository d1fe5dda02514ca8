"""Run a function in N threads released at the same instant, and lose nothing.

A bare ``threading.Thread(target=...)`` swallows an exception raised in the
thread (it is only printed), and threads started one by one hardly overlap.
``together`` releases every thread at one ``threading.Barrier`` and returns
each call's result in order; if any call raised, or did not finish, it raises
(so a test can never pass on fewer calls than it claims)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["together"]

T = TypeVar("T")
_MISSING = object()


def together(n: int, fn: Callable[[int], T], *, timeout: float = 60.0) -> list[T]:
    """``[fn(0), ..., fn(n-1)]``, each in its own thread, all started together."""
    gate = threading.Barrier(n)
    results: list[object] = [_MISSING] * n
    errors: list[BaseException | None] = [None] * n

    def run(i: int) -> None:
        try:
            gate.wait(timeout)
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    failed = [(i, e) for i, e in enumerate(errors) if e is not None]
    if failed:
        raise AssertionError(f"{len(failed)} of {n} concurrent calls raised: {failed[0][1]!r}") from failed[0][1]
    missing = [i for i, r in enumerate(results) if r is _MISSING]
    if missing:
        raise AssertionError(f"{len(missing)} of {n} concurrent calls did not return (still running: {missing})")
    return results  # type: ignore[return-value]
