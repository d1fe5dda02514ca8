"""The statements of every enrollment, run on the driver's cursor in a pooled connection.

Per enrollment the store reads the user (HTTP Basic) and writes the
certificate with its audit row.  Through SQLAlchemy's ``Connection`` each
transaction cost 15 µs before any statement (``Connection`` and transaction
objects, events) and each statement 20-40 µs more (execution context, result
metadata): a read of one row by its key took 60 µs alone where the driver
takes 4 (bench/caprofile.py).  These run the same SQL, compiled
once per dialect by SQLAlchemy, on the DB-API cursor of a connection from the
same pool (``Engine.raw_connection``: checkout, pre-ping on PostgreSQL, reset
on return), with each column's value going through the bind and result
processors SQLAlchemy would apply (SQLite keeps datetimes as text and JSON as
a string, for instance).  A driver error is translated into the exception
SQLAlchemy would have raised (``DBAPIError.instance``), so the store reports it
as before: a duplicate key is a ``Conflict``, a lost database a 503.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, Select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

__all__ = ["DriverSelect", "driver_transaction", "ThreadConnections"]


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


class _Kept:
    """One thread's connection, closed when the thread ends (its thread-local
    storage goes) or the store closes."""

    __slots__ = ("fairy", "__weakref__")

    def __init__(self, fairy: Any) -> None:
        self.fairy: Any = fairy

    def close(self) -> None:
        fairy, self.fairy = self.fairy, None
        if fairy is not None:
            try:
                fairy.close()  # detached from the pool: really closed
            except Exception:  # noqa: BLE001 -- closing a broken connection must not raise
                pass

    __del__ = close


class ThreadConnections:
    """SQLite files: each thread keeps one connection for the driver statements.

    Taking a connection from SQLAlchemy's pool and giving it back (checkout,
    reset, queue) cost 25-35 µs per transaction in the enrollment loop, and an
    enrollment has two (bench/caprofile.py).  A SQLite connection is a file
    handle in this process, with no server-side cost, so each thread that runs
    these statements keeps one, made by the pool (its ``connect`` event sets
    the pragmas: WAL, synchronous=FULL, busy timeout, foreign keys) and then
    detached from it.  At most ``limit`` threads keep one; others use the pool.
    PostgreSQL never comes here: its connections are bounded by the pool and
    pre-pinged at checkout."""

    def __init__(self, engine: Engine, limit: int = 64) -> None:
        self._engine = engine
        self._limit = limit
        self._local = threading.local()
        self._lock = threading.Lock()
        self._kept: weakref.WeakSet[_Kept] = weakref.WeakSet()
        # After a fork the parent's connections are never used nor closed here
        # (SQLite: a connection must not cross fork()); they stay referenced.
        self._orphans: list[Any] = []

    def _connection(self) -> _Kept | None:
        kept: _Kept | None = getattr(self._local, "kept", None)
        if kept is not None and kept.fairy is not None:
            return kept
        with self._lock:
            if len(self._kept) >= self._limit:
                return None
        dialect = self._engine.dialect
        try:
            fairy = self._engine.raw_connection()
        except dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(None, None, exc, dialect.loaded_dbapi.Error, dialect=dialect) from exc
        fairy.detach()
        kept = self._local.kept = _Kept(fairy)
        with self._lock:
            self._kept.add(kept)
        return kept

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """What :func:`driver_transaction` gives, on this thread's connection."""
        kept = self._connection()
        if kept is None:
            with driver_transaction(self._engine) as cursor:
                yield cursor
            return
        dialect = self._engine.dialect
        dbapi_error = dialect.loaded_dbapi.Error
        fairy = kept.fairy
        try:
            cursor = fairy.cursor()
        except dbapi_error as exc:  # closed underneath (the store is closing): not kept
            kept.close()
            raise DBAPIError.instance(None, None, exc, dbapi_error, dialect=dialect) from exc
        try:
            yield cursor
            fairy.commit()
        except dbapi_error as exc:
            lost = dialect.is_disconnect(exc, fairy.dbapi_connection, cursor)
            self._rollback(kept, lost)
            raise DBAPIError.instance(None, None, exc, dbapi_error, connection_invalidated=lost,
                                      dialect=dialect) from exc
        except BaseException:
            self._rollback(kept, False)
            raise
        finally:
            try:
                cursor.close()
            except dbapi_error:
                pass

    def _rollback(self, kept: _Kept, lost: bool) -> None:
        """Leave nothing open on a kept connection; one that cannot, goes."""
        if not lost:
            try:
                kept.fairy.rollback()
                return
            except self._engine.dialect.loaded_dbapi.Error:
                pass
        kept.close()

    def forget(self) -> None:
        """In a forked child: the parent's connections are not this process's."""
        with self._lock:
            for kept in self._kept:
                if kept.fairy is not None:
                    self._orphans.append(kept.fairy)
                    kept.fairy = None
            self._kept = weakref.WeakSet()
        self._local = threading.local()

    def close(self) -> None:
        """Close every kept connection (the store is closing)."""
        with self._lock:
            kept, self._kept = list(self._kept), weakref.WeakSet()
        for k in kept:
            k.close()
