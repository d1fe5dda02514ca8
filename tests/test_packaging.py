"""`pip install .` or `pipx install .` gives both commands (issue 13): the
wheel built from the checkout declares the estkit and estclient entry points,
and they import."""

from __future__ import annotations

import sys
import zipfile
from configparser import ConfigParser
from pathlib import Path

import pytest
from support import run

pytestmark = pytest.mark.e2e  # builds a wheel with pip: left out of `make test-fast`

ROOT = Path(__file__).resolve().parent.parent


def test_ok_wheel_declares_both_commands(tmp_path: Path) -> None:
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)], timeout=300)
    wheel = next(tmp_path.glob("estkit-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt"))
        entry_points = z.read(name).decode()
        assert any(n.endswith("estkit/py.typed") for n in z.namelist())
    cp = ConfigParser()
    cp.read_string(entry_points)
    scripts = dict(cp["console_scripts"])
    assert set(scripts) == {"estkit", "estclient"}, scripts
    for target in scripts.values():  # each names a function that exists
        module, func = target.split(":")
        run([sys.executable, "-c", f"import {module} as m; assert callable(m.{func})"])
