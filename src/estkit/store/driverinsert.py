"""The INSERTs of every enrollment, handed to the database driver as they are.

``conn.execute(insert(table), rows)`` compiles the statement's parameters and
runs SQLAlchemy's result machinery on every call: for the two rows of an
enrollment that was a fifth of the CA's time per request (docs/benchmark.md).
Here the SQL text is built once per dialect, each value goes through the same
bind processor SQLAlchemy would apply (SQLite stores a datetime as text, for
instance), and the rows go to ``exec_driver_sql``, which keeps SQLAlchemy's
transaction and its error translation (a duplicate key is still an
``IntegrityError``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.engine import Dialect

__all__ = ["DriverInsert"]

_Marker = Callable[[int, str], str]
_POSITIONAL: dict[str, _Marker] = {"qmark": lambda i, n: "?", "format": lambda i, n: "%s",
                                   "numeric": lambda i, n: f":{i + 1}"}
_NAMED: dict[str, _Marker] = {"named": lambda i, n: f":{n}", "pyformat": lambda i, n: f"%({n})s"}


class DriverInsert:
    """``INSERT INTO table (columns) VALUES (...)`` for one dialect."""

    def __init__(self, table: Table, columns: Sequence[str], dialect: Dialect) -> None:
        style = dialect.paramstyle
        marks = _POSITIONAL.get(style) or _NAMED.get(style)
        if marks is None:
            raise ValueError(f"unsupported DB-API paramstyle {style!r}")
        preparer = dialect.identifier_preparer

        def quote(name: str) -> str:
            return str(preparer.quote(name))

        self.columns = tuple(columns)
        self.named = style in _NAMED
        self.sql = (f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in self.columns)}) "
                    f"VALUES ({', '.join(marks(i, c) for i, c in enumerate(self.columns))})")
        self._procs: list[tuple[str, Callable[[Any], Any] | None]] = [
            (c, table.c[c].type.dialect_impl(dialect).bind_processor(dialect)) for c in self.columns]

    def params(self, row: dict[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """One row's parameters in the driver's style (a missing column is NULL)."""
        values = [(c, p(row.get(c)) if p is not None else row.get(c)) for c, p in self._procs]
        return dict(values) if self.named else tuple(v for _, v in values)

    def execute(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Insert ``rows`` in the connection's transaction."""
        if len(rows) == 1:
            conn.exec_driver_sql(self.sql, self.params(rows[0]))
        else:
            conn.exec_driver_sql(self.sql, [self.params(r) for r in rows])

    def run(self, cursor: Any, rows: Sequence[dict[str, Any]]) -> None:
        """Insert ``rows`` on a DB-API cursor (estkit.store.driversql's transaction)."""
        if len(rows) == 1:
            cursor.execute(self.sql, self.params(rows[0]))
        else:
            cursor.executemany(self.sql, [self.params(r) for r in rows])
