"""What every ``estkit`` command group shares: the ``--dir`` option and the one
way to load the configuration (a broken config is one line, never a traceback)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from estkit.config import Config, ConfigError, load_config, resolve_dir

__all__ = ["DirOption", "config_for"]

F = TypeVar("F", bound=Callable[..., Any])


def DirOption(f: F) -> F:  # noqa: N802 - used as a decorator, named like click's
    """``--dir DIR``: the data directory (default: $ESTKIT_DIR, then ./estkit-data)."""
    return click.option("--dir", "directory", default=None, metavar="DIR",
                        help="Data directory (default: $ESTKIT_DIR, then ./estkit-data).")(f)


def config_for(directory: str | None) -> Config:
    """The validated config of DIR; a ClickException naming the problem otherwise."""
    try:
        return load_config(resolve_dir(directory))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
