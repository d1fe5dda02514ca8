"""The data directory is private: DIR 0700, every file estkit writes in it 0600
(the store with SQLite's -wal and -shm, the config that may hold the PostgreSQL
password, keys), except ``ca.pem`` that clients need; ``init`` and ``serve`` fix
an older directory and say so (issue 11)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from policy_support import enroll
from support import ServerProcess, estkit, init_server_dir, server

from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key

PUBLIC = {"ca.pem"}

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`


def _modes(d: Path) -> dict[str, int]:
    """Mode of DIR ("."), every directory and every file estkit wrote (test logs excluded)."""
    out = {".": stat.S_IMODE(d.stat().st_mode)}
    for p in d.rglob("*"):
        if p.name.startswith("serve-") and p.suffix == ".log":
            continue  # written by the test harness, not by estkit
        out[str(p.relative_to(d))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def _check_private(modes: dict[str, int]) -> None:
    lax = {name: oct(m) for name, m in modes.items()
           if name not in PUBLIC and m & 0o077}
    assert not lax, f"readable by others: {lax}"
    assert modes["."] == 0o700


def test_init_serve_enroll_leaves_everything_private(tmp_path: Path) -> None:
    d = tmp_path / "data"
    with server(d, users={"alice": "pw-alice"}, workers=2) as srv:
        r, cert = enroll(srv, build_csr(generate_key("ec:P-256"), cn="perm-dev"), user=("alice", "pw-alice"))
        assert r.status == 200 and cert is not None
        modes = _modes(d)
        for name in ("config.toml", "estkit.db", "estkit.db-wal", "estkit.db-shm", "ca/root.key", "tls/server.key"):
            assert name in modes, (name, sorted(modes))
        _check_private(modes)
        assert modes["ca.pem"] & 0o044 == 0o044  # clients need it: readable
    _check_private(_modes(d))


@pytest.mark.parametrize("command", ["serve", "init"])
def test_older_directory_is_fixed_and_said(tmp_path: Path, command: str) -> None:
    d = tmp_path / "data"
    if command == "init":
        d.mkdir()
        os.chmod(d, 0o755)  # an existing empty directory, e.g. made by a provisioning script
        p = estkit("init", "--dir", str(d))
        out = p.stdout.decode() + p.stderr.decode()
        assert f"{d}: mode 0755 -> 0700" in out, out
        _check_private(_modes(d))
        return
    init_server_dir(d)
    estkit("user", "add", "alice", "--dir", str(d), "--password-stdin", input="pw-alice\n")
    os.chmod(d, 0o755)
    for name in ("config.toml", "estkit.db", "ca/root.pem"):
        os.chmod(d / name, 0o644)
    os.chmod(d / "ca", 0o755)
    srv = ServerProcess(d)
    srv.start()
    try:
        r, _ = enroll(srv, build_csr(generate_key("ec:P-256"), cn="older"), user=("alice", "pw-alice"))
        assert r.status == 200
    finally:
        assert srv.stop() == 0
    log = srv.log()
    for name, old, new in ((d, "0755", "0700"), (d / "config.toml", "0644", "0600"),
                           (d / "estkit.db", "0644", "0600"), (d / "ca", "0755", "0700"),
                           (d / "ca/root.pem", "0644", "0600")):
        assert f"{name}: mode {old} -> {new}" in log, log
    _check_private(_modes(d))
