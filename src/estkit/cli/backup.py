"""``estkit backup`` and ``estkit restore``: a consistent snapshot of a data
directory, taken while the server runs.

The archive (tar, gzip) holds every file of DIR as it is (config, CA and TLS
certificates and keys, encrypted if they were, secrets), except the live
SQLite files, which are replaced by a snapshot from SQLite's online backup
API: a consistent copy even while workers write.  A PostgreSQL store is not
in the archive; back it up with ``pg_dump`` (README, "Operating estkit").
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import click

from estkit.config import ConfigError, load_config, resolve_dir

__all__ = ["register", "backup_dir", "restore_archive"]

MANIFEST = "estkit-backup.json"
_FORMAT = 1
# What SQLite keeps beside the database file while it runs (WAL mode, estkit's writers' lock).
_LIVE_SUFFIXES = ("", "-wal", "-shm", "-journal", "-lock")


class BackupError(Exception):
    """A backup or restore could not be done; the message says why."""


def _sqlite_path(store_url: str) -> Path | None:
    if store_url.startswith("sqlite:///") and ":memory:" not in store_url:
        return Path(store_url[len("sqlite:///"):].split("?", 1)[0])
    return None


def backup_dir(directory: Path, out: Path) -> dict[str, object]:
    """Write DIR's archive to ``out`` (mode 0600); returns its manifest."""
    try:
        config = load_config(directory)
    except ConfigError as exc:
        raise BackupError(str(exc)) from None
    db = _sqlite_path(config.store_url)
    live = {Path(str(db) + s).resolve() for s in _LIVE_SUFFIXES} if db is not None else set()
    db_name = db.resolve().relative_to(directory.resolve()).as_posix() if db is not None and \
        db.resolve().is_relative_to(directory.resolve()) else None
    manifest: dict[str, object] = {"format": _FORMAT, "created": datetime.now(UTC).isoformat(),
                                   "store": "sqlite" if db is not None else "external",
                                   "database": db_name, "files": []}
    files: list[str] = []
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            if not path.is_file() or path.resolve() in live or path.resolve() == out.resolve():
                continue
            rel = path.relative_to(directory).as_posix()
            tar.add(path, arcname=rel, recursive=False)
            files.append(rel)
        if db is not None:
            if db_name is None:
                raise BackupError(f"the SQLite store {db} is outside {directory}: back it up separately")
            with tempfile.TemporaryDirectory() as tmp:
                snap = Path(tmp) / "snapshot.db"
                src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                try:
                    dst = sqlite3.connect(snap)
                    with dst:
                        src.backup(dst)  # SQLite's online backup: consistent while others write
                    dst.close()
                finally:
                    src.close()
                tar.add(snap, arcname=db_name, recursive=False)
                files.append(db_name)
        manifest["files"] = files
        data = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime, info.mode = len(data), int(datetime.now(UTC).timestamp()), 0o600
        tar.addfile(info, io.BytesIO(data))
    return manifest


def restore_archive(archive: Path, directory: Path) -> dict[str, object]:
    """Unpack an archive of :func:`backup_dir` into a new (or empty) DIR, private:
    the directory 0700, every file 0600 but ca.pem (what clients need)."""
    if directory.exists() and any(directory.iterdir()):
        raise BackupError(f"{directory} is not empty: restore into a new directory")
    try:
        tar = tarfile.open(archive, mode="r:gz")
    except (OSError, tarfile.TarError) as exc:
        raise BackupError(f"{archive}: not an estkit backup ({exc})") from None
    with tar:
        try:
            member = tar.extractfile(MANIFEST)
            manifest = json.loads(member.read()) if member is not None else None
        except (KeyError, ValueError):
            manifest = None
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
            raise BackupError(f"{archive}: not an estkit backup (no {MANIFEST} of format {_FORMAT})")
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        # The "data" filter refuses absolute paths, "..", links out of DIR and device files.
        tar.extractall(directory, members=[m for m in tar.getmembers() if m.name != MANIFEST], filter="data")
    for path in directory.rglob("*"):
        os.chmod(path, 0o700 if path.is_dir() else 0o644 if path.name == "ca.pem" else 0o600)
    return manifest


@click.command()
@click.option("--dir", "directory", default=None, metavar="DIR",
              help="Data directory (default: $ESTKIT_DIR, then ./estkit-data).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Archive to write (.tar.gz).")
def backup(directory: str | None, out: str) -> None:
    """Write a consistent snapshot of DIR to an archive, also while the server runs."""
    d = resolve_dir(directory)
    try:
        manifest = backup_dir(d, Path(out))
    except (BackupError, OSError, sqlite3.Error) as exc:
        raise click.ClickException(str(exc)) from None
    files = manifest["files"]
    click.echo(f"wrote {out}: {len(files) if isinstance(files, list) else 0} files"
               + ("" if manifest["store"] == "sqlite" else "; the store is external: back it up with pg_dump"))


@click.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("--dir", "directory", required=True, metavar="NEWDIR", help="Directory to restore into (new or empty).")
def restore(archive: str, directory: str) -> None:
    """Restore an archive of `estkit backup` into NEWDIR; serve it with `estkit serve --dir NEWDIR`."""
    try:
        manifest = restore_archive(Path(archive), Path(directory))
    except (BackupError, OSError, tarfile.TarError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"restored {archive} (taken {manifest.get('created')}) into {directory}")


def register(cli: click.Group) -> None:
    """Add these commands to the ``estkit`` group."""
    cli.add_command(backup)
    cli.add_command(restore)
