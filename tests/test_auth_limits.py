"""The throttle's buckets and the auth-failed aggregation, in process with an
injected clock and a real SQLite store (the end-to-end behaviour is in
test_auth_hostile.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from estkit.ca.ports import AuditEventType
from estkit.server.authaudit import AuthFailureLog
from estkit.server.throttle import FailureThrottle, Rule, address_of
from estkit.store import open_store


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("peer,key", [
    ("127.0.0.1:5555", "127.0.0.1"),
    ("2001:db8:1:2:3:4:5:6:443", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::1:443", "2001:db8:1:2::/64"),
    ("::ffff:10.1.2.3:80", "10.1.2.3"),
    ("-", "-"),
], ids=["ok/ipv4", "ok/ipv6-per-64", "ok/ipv6-same-64", "ok/v4-mapped", "ok/unknown-peer"])
def test_address_key(peer: str, key: str) -> None:
    assert address_of(peer) == key


def test_bucket_empties_refills_and_names_the_rule() -> None:
    clock = Clock()
    t = FailureThrottle(Rule("auth_address_failures_per_minute", 6), Rule("auth_user_failures_per_minute", 100),
                        clock=clock)
    for _ in range(6):
        assert t.attempt("10.0.0.1:1", "alice") is None
    blocked = t.attempt("10.0.0.1:2", "alice")
    assert blocked is not None and blocked.who == "address:10.0.0.1" and blocked.retry_after == 10
    err = blocked.error()
    assert err.status == 429 and err.retry_after == 10 and "rule 'server.auth_address_failures_per_minute'" in err.reason
    assert t.check("10.0.0.2:1", "alice") is None  # another address
    clock.t += 10  # one token back (6 a minute)
    assert t.attempt("10.0.0.1:3", "alice") is None
    assert t.check("10.0.0.1:3", "alice") is not None
    t.refund("10.0.0.1:3", "alice")  # that attempt verified
    assert t.check("10.0.0.1:3", "alice") is None


def test_user_bucket_and_off() -> None:
    clock = Clock()
    t = FailureThrottle(Rule("a", 0), Rule("auth_user_failures_per_minute", 2), clock=clock)
    t.failed("10.0.0.1:1", "bob")
    t.failed("10.0.0.2:1", "bob")
    blocked = t.check("10.0.0.3:1", "bob")
    assert blocked is not None and blocked.who == "user:bob" and blocked.retry_after == 30
    assert t.check("10.0.0.3:1", "carol") is None
    for _ in range(1000):  # address limit 0: off
        t.failed("10.0.0.9:1", None)
    assert t.check("10.0.0.9:1", None) is None


def test_keys_are_bounded() -> None:
    clock = Clock()
    t = FailureThrottle(Rule("a", 5), Rule("u", 5), clock=clock, max_keys=100)
    for i in range(1000):
        t.failed(f"10.0.{i // 250}.{i % 250}:1", f"user-{i}")
    assert len(t._address._tokens) <= 101 and len(t._user._tokens) <= 101
    assert t.check("10.0.3.249:1", "user-999") is None  # 4 tokens left of 5


def test_auth_failures_aggregated_per_minute(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'estkit.db'}")
    clock = Clock(60 * 1000 + 5)
    log = AuthFailureLog(store.audit, clock=clock, max_keys=2)
    for _ in range(3):
        log.record("user:alice", "10.0.0.1", "wrong user name or password", "default")
    log.record("user:bob", "10.0.0.2", "wrong user name or password", "default")
    log.record("user:eve", "10.0.0.3", "wrong user name or password", "default")  # third key: folded into *
    log.record("user:zed", "10.0.0.4", "wrong user name or password", "default")
    assert log.flush() == 0  # the minute is not over: nothing written
    clock.t += 60
    log.record("user:alice", "10.0.0.1", "wrong user name or password", "default")  # the next minute
    assert log.flush() == 3
    rows = {e.identity: e for e in store.list_audit(event=AuditEventType.AUTH_FAILED)}
    assert set(rows) == {"user:alice", "user:bob", "*"}
    assert "wrong user name or password: 3 failures in the minute from" in rows["user:alice"].detail
    assert "2 failures" in rows["*"].detail and rows["*"].peer == "10.0.0.3 +more"
    assert log.flush(everything=True) == 1  # at shutdown, the current minute too
    assert len(store.list_audit(event="auth-failed")) == 4
    store.close()
