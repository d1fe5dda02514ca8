"""`make run` (estkit quickstart) for a newcomer (issue 13): a port already in
use is one line naming it and what to do, a non-zero exit, no traceback, and
no "serving" banner, which appears only once the server listens."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from support import ESTKIT, run

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`


@pytest.mark.parametrize("command", ["quickstart", "serve"])
def test_fail_port_in_use_is_one_clear_line(tmp_path: Path, command: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        if command == "serve":
            run([ESTKIT, "init", "--dir", str(tmp_path / "d")])
        p = run([ESTKIT, command, "--dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}"], check=False,
                timeout=60)
    out, err = p.stdout.decode(), p.stderr.decode()
    assert p.returncode == 1, (out, err)
    assert "Traceback" not in out + err and "serving EST" not in out + err and "Stop with Ctrl-C" not in out, err
    lines = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0] and "--listen" in lines[0], err
