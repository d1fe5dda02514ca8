"""Concurrency on the write path: group commit, the SQLite writers' lock, and
the password-verification cache under a burst of identical requests.

Real SQLite files, real threads and real forked processes; nothing stubbed.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from estkit.ca import passwords
from estkit.ca.passwords import VerifyCache, hash_password
from estkit.ca.ports import AuditEvent, Conflict, IssuedCert
from estkit.store import open_store
from estkit.store.groupcommit import GroupCommit
from estkit.store.writelock import WriteLock


def _issued(serial: int) -> tuple[IssuedCert, AuditEvent]:
    now = datetime.now(UTC)
    cert = IssuedCert(serial=serial, ca="default", label="default", subject=f"CN=dev{serial}", sans=(),
                      not_before=now, not_after=now + timedelta(days=1), requester="user:t", key_type="ec:P-256",
                      csr_fingerprint="00" * 32, der=b"\x30\x00")
    return cert, AuditEvent(event="issued", identity="user:t", peer="-", label="default", serial=serial)


def _threads(n: int, fn: object) -> list[BaseException | None]:
    """Run fn(i) in n threads released together; each thread's exception or None."""
    results: list[BaseException | None] = [None] * n
    gate = threading.Barrier(n)

    def run(i: int) -> None:
        gate.wait()
        try:
            fn(i)  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            results[i] = exc

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    return results


# -- GroupCommit on its own: batching and failure attribution ------------------------------------

@pytest.mark.parametrize("bad", [(), (3,), (0, 5)], ids=["ok/all-good", "fail/one-bad", "fail/two-bad"])
def test_group_commit_batches_and_attributes_failures(bad: tuple[int, ...]) -> None:
    committed: list[int] = []
    batches: list[int] = []

    def write_batch(items: list[int]) -> None:
        time.sleep(0.02)  # a slow transaction: the others queue behind it
        if any(i in bad for i in items):
            raise RuntimeError("batch refused")
        committed.extend(items)
        batches.append(len(items))

    def write_one(item: int) -> None:
        time.sleep(0.02)
        if item in bad:
            raise ValueError(f"item {item} refused")
        committed.append(item)
        batches.append(1)

    gc: GroupCommit[int] = GroupCommit(write_batch, write_one)

    def submit(i: int) -> None:
        gc.submit(i)
        assert i in committed  # committed before submit returns

    errors = _threads(12, submit)
    assert [i for i, e in enumerate(errors) if e is not None] == sorted(bad)
    assert all(isinstance(errors[i], ValueError) for i in bad)
    assert sorted(committed) == [i for i in range(12) if i not in bad]
    if not bad:
        assert max(batches) > 1, "concurrent submits shared no transaction"


# -- the real store: every concurrent record lands, a duplicate is that request's Conflict ------

@pytest.mark.parametrize("duplicate", [False, True], ids=["ok/distinct-serials", "fail/one-duplicate-serial"])
def test_concurrent_record_issued(tmp_path: Path, duplicate: bool) -> None:
    store = open_store(f"sqlite:///{tmp_path}/c.db")
    serials = list(range(1000, 1032))
    if duplicate:
        store.record_issued(*_issued(serials[7]))
    errors = _threads(len(serials), lambda i: store.record_issued(*_issued(serials[i])))
    if duplicate:
        assert isinstance(errors[7], Conflict)
        assert [e for i, e in enumerate(errors) if i != 7] == [None] * (len(serials) - 1)
    else:
        assert errors == [None] * len(serials)
    assert store.count_certificates() == len(serials)
    audits = store.list_audit(limit=1000, event="issued")
    assert len(audits) == len(serials)
    store.close()


# -- each thread's own SQLite connection (estkit.store.driversql.ThreadConnections) ----------------

def _record_in_thread(store: object, serial: int) -> float:
    """Seconds another thread takes to record ``serial`` (a write lock left held would
    make it wait for SQLite's 30 s busy timeout)."""
    out: list[object] = []

    def run() -> None:
        t0 = time.monotonic()
        try:
            store.record_issued(*_issued(serial))  # type: ignore[attr-defined]
            out.append(time.monotonic() - t0)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert not t.is_alive(), "another thread could not write: a transaction was left open"
    assert isinstance(out[0], float), out[0]
    return out[0]


@pytest.mark.parametrize("first", ["conflict", "read"], ids=["fail/duplicate-serial-leaves-nothing-open",
                                                               "ok/user-read-leaves-nothing-open"])
def test_kept_connection_is_clean_after_each_transaction(tmp_path: Path, first: str) -> None:
    from estkit.ca.ports import UserRecord
    store = open_store(f"sqlite:///{tmp_path}/k.db")
    store.record_issued(*_issued(1))
    if first == "conflict":  # its audit row was inserted before the duplicate certificate failed
        with pytest.raises(Conflict):
            store.record_issued(*_issued(1))
    else:
        store.add_user(UserRecord("dev", "scrypt$x", datetime.now(UTC)))
        assert store.get_user("dev") is not None and store.get_user("nobody") is None
    assert _record_in_thread(store, 2) < 5
    store.record_issued(*_issued(3))  # this thread's next commit must not carry anything left over
    assert [a.serial for a in store.list_audit(limit=10, event="issued")] == [3, 2, 1]
    store.close()


def _child_records(store: object, serial: int) -> None:
    store.record_issued(*_issued(serial))  # type: ignore[attr-defined]
    assert store.get_user("dev") is not None  # type: ignore[attr-defined]


def test_forked_child_opens_its_own_connections(tmp_path: Path) -> None:
    # ok/...: the parent's kept connection is not used across fork (SQLite forbids it)
    from estkit.ca.ports import UserRecord
    store = open_store(f"sqlite:///{tmp_path}/f.db")
    store.add_user(UserRecord("dev", "scrypt$x", datetime.now(UTC)))
    store.record_issued(*_issued(1))
    assert store.get_user("dev") is not None
    ctx = multiprocessing.get_context("fork")
    ps = [ctx.Process(target=_child_records, args=(store, 10 + i)) for i in range(2)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(60)
        assert p.exitcode == 0
    store.record_issued(*_issued(2))
    assert sorted(c.serial for c in store.list_certificates()) == [1, 2, 10, 11]
    store.close()


# -- WriteLock: mutual exclusion across forked processes -------------------------------------------

def _increment(lock_path: str, counter: str, n: int) -> None:
    lock = WriteLock(Path(lock_path))
    for _ in range(n):
        with lock.held():
            p = Path(counter)
            value = int(p.read_text())
            time.sleep(0.0005)  # widen the window a lost update would need
            p.write_text(str(value + 1))


@pytest.mark.parametrize("procs", [2, 4], ids=["ok/two-processes", "ok/four-processes"])
def test_write_lock_excludes_across_processes(tmp_path: Path, procs: int) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    lock = WriteLock(tmp_path / "db-lock")
    with lock.held():  # the parent's lock, inherited by fork, must not let children in together
        pass
    ctx = multiprocessing.get_context("fork")
    ps = [ctx.Process(target=_increment, args=(str(tmp_path / "db-lock"), str(counter), 50)) for _ in range(procs)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(60)
        assert p.exitcode == 0
    assert int(counter.read_text()) == 50 * procs


def test_write_lock_without_its_file_still_serialises_threads(tmp_path: Path) -> None:
    # fail/...: the lock file cannot be created; writes go on (SQLite's own locking remains)
    lock = WriteLock(tmp_path / "missing-dir" / "db-lock")
    inside = [0, 0]

    def body(_i: int) -> None:
        with lock.held():
            inside[0] += 1
            inside[1] = max(inside[1], inside[0])
            time.sleep(0.002)
            inside[0] -= 1

    assert _threads(8, body) == [None] * 8
    assert inside[1] == 1


# -- VerifyCache: a burst of the same credentials costs one scrypt -------------------------------

@pytest.mark.parametrize("password,expected,max_scrypts", [
    ("right", True, 1),
    ("wrong", False, 1),
], ids=["ok/burst-verifies-once", "fail/wrong-password-burst-shares-one-failure"])
def test_verify_cache_single_flight(monkeypatch: pytest.MonkeyPatch, password: str, expected: bool,
                                    max_scrypts: int) -> None:
    stored = hash_password("right")
    calls: list[int] = []
    running = [0, 0]  # now, peak
    lock = threading.Lock()
    real = passwords.verify_password

    def counting(pw: str, st: str) -> bool:  # the real scrypt, counted
        with lock:
            calls.append(1)
            running[0] += 1
            running[1] = max(running[1], running[0])
        try:
            return real(pw, st)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(passwords, "verify_password", counting)
    cache = VerifyCache()
    results: list[bool] = [False] * 8
    errors = _threads(8, lambda i: results.__setitem__(i, cache.verify("u", password, stored)))
    assert errors == [None] * 8
    assert results == [expected] * 8
    assert 1 <= len(calls) <= max_scrypts
    assert running[1] <= 2, "more scrypts at once than the memory bound allows"
    assert cache.verify("u", "right", stored) is True


@pytest.mark.parametrize("same", [False, True], ids=["fail/distinct-guesses", "fail/same-guess"])
def test_verify_cache_bounds_threads_inside(monkeypatch: pytest.MonkeyPatch, same: bool) -> None:
    """More verifications at once than max_parallel + max_waiting (distinct guesses), or
    more waiting for one (the same guess): the rest get 503 at once instead of holding a
    worker thread; never more than max_parallel scrypts."""
    from estkit.errors import ServiceUnavailable
    stored = hash_password("right")
    running = [0, 0]
    lock = threading.Lock()
    real = passwords.verify_password

    def counting(pw: str, st: str) -> bool:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        try:
            return real(pw, st)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(passwords, "verify_password", counting)
    cache = VerifyCache(max_parallel=1, max_waiting=2, max_following=4)
    results: list[object] = [None] * 8

    def one(i: int) -> None:
        try:
            results[i] = cache.verify("u", "guess" if same else f"guess-{i}", stored)
        except ServiceUnavailable as exc:
            results[i] = exc

    assert _threads(8, one) == [None] * 8
    refused = [r for r in results if isinstance(r, ServiceUnavailable)]
    # distinct: 1 running + 2 waiting for the slot; same: 1 running + 4 waiting for its result
    assert results.count(False) == (5 if same else 3) and len(refused) == 8 - results.count(False), results
    assert all(r.status == 503 and r.retry_after == 1 for r in refused)
    assert running[1] == 1
