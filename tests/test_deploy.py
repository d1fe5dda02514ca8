"""The deployment files in deploy/ (issue 13): systemd units that
`systemd-analyze verify` accepts, sandboxed as the README promises."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from support import VENV_BIN, require_tool, run

pytestmark = pytest.mark.e2e  # runs an external tool

DEPLOY = Path(__file__).parent.parent / "deploy"
UNITS = ("estkit.service", "estclient-renew.service", "estclient-renew.timer")


def _installed(tmp: Path) -> list[Path]:
    """The units as installed, ExecStart pointing at this checkout's commands."""
    out = []
    for name in UNITS:
        text = (DEPLOY / "systemd" / name).read_text()
        text = text.replace("/usr/local/bin/", f"{VENV_BIN}/")
        (tmp / name).write_text(text)
        out.append(tmp / name)
    return out


def test_units_verify(tmp_path: Path) -> None:
    require_tool("systemd-analyze")
    p = run(["systemd-analyze", "verify", *map(str, _installed(tmp_path))], check=False)
    assert p.returncode == 0 and not (p.stdout + p.stderr).strip(), p


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key is reported."""
    require_tool("systemd-analyze")
    unit = _installed(tmp_path)[0]
    unit.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    p = run(["systemd-analyze", "verify", str(unit)], check=False)
    assert b"Unknown key" in p.stdout + p.stderr, p


def test_server_unit_is_sandboxed() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "systemd" / "estkit.service")
    svc = unit["Service"]
    assert svc["Type"] == "notify" and svc["User"] == "estkit" and svc["ProtectSystem"] == "strict"
    assert svc["NoNewPrivileges"] == "true" and svc["PrivateTmp"] == "true"
    assert svc["ReadWritePaths"] == "/var/lib/estkit" and svc["UMask"] == "0077"
