"""``estkit cluster-demo`` (``make cluster``): it starts PostgreSQL, the nodes
and HAProxy, prints how to enroll, the printed enrollment works, and Ctrl-C
removes everything (issue 14)."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cluster import DEPLOY
from support import ESTKIT, VENV_BIN, free_port, no_process_in_fast_tier, require_tool, run

pytestmark = pytest.mark.e2e


def test_cluster_demo_enroll_through_it_then_ctrl_c(tmp_path: Path) -> None:
    require_tool("haproxy")
    no_process_in_fast_tier("estkit cluster-demo")
    port = free_port()
    proc = subprocess.Popen([ESTKIT, "cluster-demo", "--nodes", "2", "--port", str(port), "--haproxy-config",
                             str(DEPLOY / "passthrough.cfg")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while "Ctrl-C stops everything" not in (out := "".join(lines)):
            assert time.monotonic() < deadline and proc.poll() is None, out
            time.sleep(0.1)
        password = re.search(r"ESTCLIENT_PASSWORD='([^']+)'", out)
        ca = re.search(r"CA certificate: (\S+)", out)
        assert password and ca, out
        run([str(VENV_BIN / "estclient"), "enroll", "--server", f"https://localhost:{port}", "--trust", ca[1],
             "--user", "demo", "--cn", "device1", "--key-out", str(tmp_path / "k.pem"), "--cert-out",
             str(tmp_path / "c.pem")], env={"ESTCLIENT_PASSWORD": password[1]})
        assert "BEGIN CERTIFICATE" in (tmp_path / "c.pem").read_text()
        base = Path(re.search(r"removes (\S+)\.", out)[1])  # type: ignore[index]
        assert base.exists()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, out
        assert not base.exists()
    finally:
        if proc.poll() is None:  # a failed test still lets the demo stop what it started
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
