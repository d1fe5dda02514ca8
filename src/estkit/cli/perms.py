"""The data directory is private: DIR and its directories 0700, its files 0600.

DIR holds the CA and TLS keys, the store (SQLite's database and its ``-wal``
and ``-shm``, created by SQLite with the database's mode), the config (which
may hold the PostgreSQL password) and the Digest nonce key.  Only ``ca.pem``
is meant for clients and may stay readable.  ``estkit`` sets a umask of 077
when it starts (:func:`private_umask`), so whatever it or SQLite creates is
private; :func:`secure_dir` tightens a directory made by an older version.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["private_umask", "secure_dir", "PUBLIC_FILES", "PUBLIC_MODE"]

# What clients need to read (the trust anchor ``estkit init`` writes for them).
PUBLIC_FILES = frozenset({"ca.pem"})
PUBLIC_MODE = 0o644


def private_umask() -> None:
    """New files 0600, new directories 0700 (SQLite's -wal/-shm included)."""
    os.umask(0o077)


def secure_dir(directory: Path) -> list[str]:
    """Remove group and other permissions from DIR, its directories and files
    (``ca.pem`` excepted); one line per change made, e.g.
    ``DIR/config.toml: mode 0644 -> 0600``.  Symbolic links are not followed;
    a file that cannot be changed (another owner) is reported, not fatal."""
    if not directory.is_dir():
        return []
    fixes: list[str] = []
    todo = [directory]
    while todo:
        d = todo.pop()
        fixes += _tighten(d, 0o700)
        try:
            entries = sorted(d.iterdir())
        except OSError as exc:
            fixes.append(f"{d}: cannot list ({exc.strerror})")
            continue
        for p in entries:
            st = p.lstat()
            if stat.S_ISDIR(st.st_mode):
                todo.append(p)
            elif stat.S_ISREG(st.st_mode) and not (d == directory and p.name in PUBLIC_FILES):
                fixes += _tighten(p, 0o600)
    return fixes


def _tighten(path: Path, mode: int) -> list[str]:
    old = stat.S_IMODE(path.lstat().st_mode)
    if not old & 0o077:
        return []
    new = old & ~0o077 & 0o7777 | (mode & 0o700)
    try:
        os.chmod(path, new, follow_symlinks=False)
    except OSError as exc:
        return [f"{path}: mode {old:04o} is readable by others and cannot be changed ({exc.strerror})"]
    return [f"{path}: mode {old:04o} -> {new:04o}"]
