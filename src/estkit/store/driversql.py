"""The statements of every enrollment, run on the driver's cursor in a pooled connection.

Per enrollment the store reads the user (HTTP Basic) and writes the
certificate with its audit row.  Through SQLAlchemy's ``Connection`` each
transaction cost 15 µs before any statement (``Connection`` and transaction
objects, events) and each statement 20-40 µs more (execution context, result
metadata): a read of one row by its key took 60 µs alone where the driver
takes 4 (bench/caprofile.py, docs/benchmark.md).  These run the same SQL, compiled
once per dialect by SQLAlchemy, on the DB-API cursor of a connection from the
same pool (``Engine.raw_connection``: checkout, pre-ping on PostgreSQL, reset
on return), with each column's value going through the bind and result
processors SQLAlchemy would apply (SQLite keeps datetimes as text and JSON as
a string, for instance).  A driver error is translated into the exception
SQLAlchemy would have raised (``DBAPIError.instance``), so the store reports it
as before: a duplicate key is a ``Conflict``, a lost database a 503.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, Select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

__all__ = ["DriverSelect", "driver_transaction"]


class DriverSelect:
    """A SELECT compiled once for a dialect, whose rows come back as dicts of
    processed values (what a SQLAlchemy ``Row`` would hold)."""

    def __init__(self, stmt: Select[Any], dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = str(compiled)
        self._positional = compiled.positional
        self._binds = tuple(compiled.positiontup or ()) if compiled.positional else tuple(compiled.binds)
        self._bind_procs = {name: compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
                            for name in self._binds}
        # The result processor of each selected column (the driver's type code is not
        # needed by any column type of estkit's tables: it is passed as None).
        self._columns: list[tuple[str, Callable[[Any], Any] | None]] = [
            (col.name, col.type.dialect_impl(dialect).result_processor(dialect, None))
            for col in stmt.selected_columns]

    def params(self, values: dict[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """The bound values in the driver's style."""
        out = {}
        for name in self._binds:
            proc = self._bind_procs[name]
            out[name] = proc(values[name]) if proc is not None else values[name]
        return tuple(out[name] for name in self._binds) if self._positional else out

    def first(self, cursor: Any, values: dict[str, Any]) -> dict[str, Any] | None:
        """The first row for ``values``, None when there is none."""
        cursor.execute(self.sql, self.params(values))
        raw = cursor.fetchone()
        if raw is None:
            return None
        return {name: proc(v) if proc is not None else v for (name, proc), v in zip(self._columns, raw)}


@contextmanager
def driver_transaction(engine: Engine) -> Iterator[Any]:
    """A DB-API cursor in a transaction on a pooled connection: committed when
    the block ends, rolled back if it raises.  Driver errors come out as the
    ``sqlalchemy.exc`` exceptions SQLAlchemy raises for them, and a
    connection the error shows to be lost is invalidated (never pooled again)."""
    dialect = engine.dialect
    dbapi_error = dialect.loaded_dbapi.Error
    try:
        fairy = engine.raw_connection()  # pool checkout; PostgreSQL: pre-ping, reconnect
    except dbapi_error as exc:  # connecting failed (the pool raises the driver's own error)
        raise DBAPIError.instance(None, None, exc, dbapi_error, dialect=dialect) from exc
    try:
        cursor = fairy.cursor()
        try:
            yield cursor
            fairy.commit()
        except dbapi_error as exc:
            lost = dialect.is_disconnect(exc, fairy.dbapi_connection, cursor)
            if lost:
                fairy.invalidate(exc)
            raise DBAPIError.instance(None, None, exc, dbapi_error, connection_invalidated=lost,
                                      dialect=dialect) from exc
        finally:
            if fairy.dbapi_connection is not None:
                cursor.close()
    finally:
        fairy.close()  # back to the pool, which rolls back whatever is left open
