"""estclient's shared options arrive as typed values (ConnectionOptions,
SpecOptions), never as a ``**kwargs`` bag; checked in-process."""

from __future__ import annotations

import inspect
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from estkit.cli.client import estclient
from estkit.cli import client_renew  # noqa: F401  (registers renew and fullcmc)
from estkit.cli.client_options import ConnectionOptions, SpecOptions


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out: list[tuple[str, click.Command]] = []
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += _commands(cmd, prefix + name + " ")
        else:
            out.append((prefix + name, cmd))
    return out


@pytest.mark.parametrize("name,cmd", _commands(estclient), ids=[n for n, _ in _commands(estclient)])
def test_ok_command_takes_typed_options(name: str, cmd: click.Command) -> None:
    assert cmd.callback is not None
    params = inspect.signature(inspect.unwrap(cmd.callback), eval_str=True).parameters.values()
    assert not [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD], f"{name} takes **kwargs"
    kinds = {p.name: p.annotation for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert kinds.get("conn") is ConnectionOptions, f"{name}: no conn: ConnectionOptions"
    option_names = {p.name for p in cmd.params}
    if "csr_file" in option_names:
        assert kinds.get("spec") is SpecOptions, f"{name}: no spec: SpecOptions"


def test_fail_csr_key_that_cannot_sign_is_a_usage_error(tmp_path: Path) -> None:
    key = tmp_path / "x25519.pem"
    key.write_bytes(x25519.X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    result = CliRunner().invoke(estclient, ["enroll", "--server", "https://127.0.0.1:9", "--cn", "dev",
                                            "--csr-key", str(key), "--key-out", str(tmp_path / "k")])
    assert result.exit_code == 2, result.output
    assert "X25519PrivateKey cannot sign" in result.output
