"""A device's key and certificate on disk, replaced atomically on renewal.

Layout of a credential directory ``DIR``::

    DIR/current -> gen-<time>       a symlink: the one switch
    DIR/gen-<time>/key.pem          mode 0600
    DIR/gen-<time>/cert.pem         the certificate, then its CA chain
    DIR/key.pem  -> current/key.pem     stable paths for programs
    DIR/cert.pem -> current/cert.pem

A new pair is written into a new ``gen-*`` directory and fsynced, then
``current`` is switched by one ``rename(2)`` of a new symlink over it, and
the directory is fsynced.  Killed at any moment, ``DIR`` holds the complete
old pair or the complete new one, never a mix.  Leftover ``gen-*``
directories of interrupted runs are removed by the next write.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes, PrivateKeyTypes

from estkit.client.responses import public_der
from estkit.protocol.keys import signing_key

__all__ = ["CredentialDir", "renewal_due", "remaining_fraction"]

_CURRENT = "current"


def remaining_fraction(cert: x509.Certificate, now: datetime | None = None) -> float:
    """How much of the certificate's lifetime is left, 0.0 to 1.0."""
    t = now or datetime.now(UTC)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    life = (end - start).total_seconds()
    if life <= 0:
        return 0.0
    return max(0.0, min(1.0, (end - t).total_seconds() / life))


def renewal_due(cert: x509.Certificate, fraction: float, now: datetime | None = None) -> bool:
    """True once less than ``fraction`` of the lifetime remains."""
    return remaining_fraction(cert, now) < fraction


def _checkpoint(step: str) -> None:
    # Test hook for the kill-mid-write tests: ESTCLIENT_TEST_KILL_AT names a step.
    if os.environ.get("ESTCLIENT_TEST_KILL_AT") == step:
        os.kill(os.getpid(), 9)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class CredentialDir:
    """A credential directory (see the module's description)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def key_path(self) -> Path:
        return self.path / "key.pem"

    @property
    def cert_path(self) -> Path:
        return self.path / "cert.pem"

    def exists(self) -> bool:
        """True when a pair has been written."""
        return (self.path / _CURRENT / "cert.pem").exists() and (self.path / _CURRENT / "key.pem").exists()

    def load(self) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
        """The current key and certificate (through ``current``, never a mix)."""
        gen = self.path / os.readlink(self.path / _CURRENT)
        key = signing_key(serialization.load_pem_private_key((gen / "key.pem").read_bytes(), None))
        cert = x509.load_pem_x509_certificates((gen / "cert.pem").read_bytes())[0]
        if public_der(key.public_key()) != public_der(cert.public_key()):
            raise ValueError(f"{gen}: key and certificate do not match")
        return key, cert

    def write(self, key: PrivateKeyTypes, cert: x509.Certificate, chain: list[x509.Certificate] | None = None) -> Path:
        """Install a new pair atomically; returns its generation directory."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o755)
        self._remove_stale()
        gen = self.path / f"gen-{time.time_ns()}"
        gen.mkdir(mode=0o755)
        _write(gen / "key.pem", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()), 0o600)
        _checkpoint("key-written")
        pem = b"".join(ct.public_bytes(serialization.Encoding.PEM) for ct in [cert, *(chain or [])])
        _write(gen / "cert.pem", pem, 0o644)
        _fsync_dir(gen)
        _checkpoint("gen-written")
        old = os.readlink(self.path / _CURRENT) if (self.path / _CURRENT).is_symlink() else None
        tmp = self.path / f".{_CURRENT}.{os.getpid()}"
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(gen.name, tmp)
        os.replace(tmp, self.path / _CURRENT)  # the atomic switch
        _fsync_dir(self.path)
        _checkpoint("switched")
        for name in ("key.pem", "cert.pem"):
            self._link(name)
        if old and old != gen.name:
            shutil.rmtree(self.path / old, ignore_errors=True)
        return gen

    def _link(self, name: str) -> None:
        target = f"{_CURRENT}/{name}"
        link = self.path / name
        if link.is_symlink() and os.readlink(link) == target:
            return
        tmp = self.path / f".{name}.{os.getpid()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, link)
        _fsync_dir(self.path)

    def _remove_stale(self) -> None:
        current = os.readlink(self.path / _CURRENT) if (self.path / _CURRENT).is_symlink() else None
        for p in self.path.glob("gen-*"):
            if p.name != current:
                shutil.rmtree(p, ignore_errors=True)
        for p in self.path.glob(".*.[0-9]*"):
            if p.is_symlink():
                p.unlink()
