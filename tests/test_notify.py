"""`estkit serve` under systemd's Type=notify (deploy/systemd/estkit.service):
READY=1 on $NOTIFY_SOCKET once the EST port accepts connections, STOPPING=1 on
SIGTERM (sd_notify(3)), with one worker and with several."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from support import ServerProcess, init_server_dir

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`


@pytest.mark.parametrize("workers", [1, 2], ids=["ok/one-worker", "ok/two-workers"])
def test_ready_and_stopping_are_notified(tmp_path: Path, workers: int) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(20)
        srv = ServerProcess(init_server_dir(tmp_path / "d"), workers=workers, env={"NOTIFY_SOCKET": str(path)})
        srv.start()
        try:
            assert sock.recv(4096) == b"READY=1"
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5):
                pass  # it does listen once it says so
        finally:
            assert srv.stop() == 0
        assert sock.recv(4096) == b"STOPPING=1"
