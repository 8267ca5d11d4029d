"""SQLite backend: the embedded default, from the standard library.

SQLite has one writer at a time. A claim starts with BEGIN IMMEDIATE, which
takes the write lock before the SELECT, so two processes can never select the
same available rows. The second waits (up to the busy timeout) and then reads
them as queued.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from poolctl.config import PoolTypeSettings, StatusValues
from poolctl.errors import DatabaseUnavailable, DataError, SchemaError
from poolctl.sql.base import BeforeCommit, Database, QueryPlan, Rollback, Row

INSERT_CHUNK = 10_000
BUSY_TIMEOUT_S = 30.0
URL_HINT = "Check database.url (--database-url, POOLCTL_DATABASE_URL)"


def sqlite_path(url: str) -> str:
    """Return the file path of a sqlite:/// URL: sqlite:///rel.db is relative, sqlite:////abs.db absolute."""
    path = urlsplit(url).path
    return path[1:] if path.startswith("/") else path


class SqliteDatabase(Database):
    dialect = "sqlite"
    placeholder = "?"

    def __init__(
        self, url: str, status: StatusValues, pools: dict[str, PoolTypeSettings], timeout_s: float, create: bool = True
    ) -> None:
        super().__init__(status, pools)
        self.url = url
        self.path = sqlite_path(url)
        if not self.path:
            raise DatabaseUnavailable(f"SQLite URL {url} names no file", "Use sqlite:///poolctl.db or sqlite:////abs/path.db")
        parent = Path(self.path).parent
        if self.path != ":memory:" and not parent.is_dir():
            raise DatabaseUnavailable(f"cannot open SQLite database {self.path}: folder {parent} does not exist", URL_HINT)
        if not create and self.path != ":memory:" and not Path(self.path).exists():
            raise SchemaError(
                f"SQLite database {self.path} does not exist",
                "Create it with `poolctl db init`, or point database.url at the right file",
            )
        try:
            # isolation_level=None: no implicit transactions; every one is explicit below.
            self.conn = sqlite3.connect(self.path, timeout=max(timeout_s, BUSY_TIMEOUT_S), isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(f"cannot open SQLite database {self.path}: {exc}", URL_HINT) from None

    @staticmethod
    def quote(name: str) -> str:
        # Not "name": SQLite reads a double-quoted name that matches no column
        # as a string literal, so a misconfigured column would fill pools with
        # its own name instead of failing.
        return f"[{name}]"

    @contextmanager
    def _errors(self, pool_type: str | None = None) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "no such table" in text or "no such column" in text:
                raise self._schema_error(pool_type, text) from None
            if "locked" in text or "unable to open" in text or "disk I/O" in text:
                raise DatabaseUnavailable(f"SQLite database {self.path} failed: {text}", URL_HINT) from None
            raise

    def _schema_error(self, pool_type: str | None, text: str) -> SchemaError:
        where = f" for pool type {pool_type}" if pool_type else ""
        return SchemaError(f"SQLite database {self.path}{where}: {text}", "Run `poolctl db init` or fix [pools.*] in the config")

    @contextmanager
    def _transaction(self, pool_type: str | None = None) -> Iterator[sqlite3.Cursor]:
        """Run the block in one write transaction; raising Rollback inside undoes it quietly."""
        with self._errors(pool_type):
            cursor = self.conn.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
            except Rollback:
                cursor.execute("ROLLBACK")
                return
            except BaseException:
                if self.conn.in_transaction:
                    cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")

    def claim(self, pool_type: str, group: int, limit: int, before_commit: BeforeCommit | None = None) -> list[Row]:
        table = self.table(pool_type)
        rows: list[Row] = []
        with self._transaction(pool_type) as cursor:
            cursor.execute(table.select_available(), [group, self.status.available, limit])
            rows = [Row(row_id, text) for row_id, text in cursor.fetchall()]
            ids = [row.id for row in rows]
            if not rows or (before_commit is not None and not before_commit(ids)):
                rows = []
                raise Rollback
            cursor.execute(table.update_status(len(ids)), [self.status.queued, *ids])
        return rows

    def claim_for_consumer(self, pool_type: str, group: int) -> Row | None:
        table = self.table(pool_type)
        with self._transaction(pool_type) as cursor:
            cursor.execute(table.select_available(), [group, self.status.available, 1])
            found = cursor.fetchone()
            if found is None:
                return None
            cursor.execute(table.update_status(1), [self.status.consumed, found[0]])
        return Row(found[0], found[1])

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._transaction() as cursor:
            cursor.execute(sql, params)
            return cursor.rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._errors():
            return self.conn.execute(sql, params).fetchall()

    def columns(self, table_name: str) -> list[str]:
        return [row[1] for row in self.conn.execute(f"PRAGMA table_info({self.quote(table_name)})")]

    def check_table(self, pool_type: str) -> None:
        spec = self.table(pool_type).spec
        present = self.columns(spec.table)
        if not present:
            raise SchemaError(
                f"table {spec.table} for pool type {pool_type} not found in SQLite database {self.path}",
                "Run `poolctl db init` or fix pools." + pool_type + ".table in the config",
            )
        for column in (spec.id_column, spec.text_column, spec.group_column, spec.batch_column, spec.status_column):
            if column not in present:
                raise SchemaError(
                    f"column {column} not found in table {spec.table} (pool type {pool_type})",
                    f"Fix the column names under [pools.{pool_type}] in the config",
                )

    def create_table(self, pool_type: str) -> bool:
        table = self.table(pool_type)
        existed = bool(self.columns(table.spec.table))
        default_status = int(self.status.available)
        with self._transaction(pool_type) as cursor:
            cursor.execute(
                table.sql(
                    "CREATE TABLE IF NOT EXISTS {table} ("
                    "{id} INTEGER PRIMARY KEY, {group} INTEGER NOT NULL, {batch} INTEGER NOT NULL, "
                    f"{{status}} INTEGER NOT NULL DEFAULT {default_status}, {{text}} TEXT NOT NULL)"
                )
            )
            cursor.execute(
                table.sql(
                    f"CREATE INDEX IF NOT EXISTS {self.quote(table.index_name)} "
                    "ON {table} ({group}, {status}, {batch} DESC, {id})"
                )
            )
        return not existed

    def explain_claim(self, pool_type: str) -> QueryPlan:
        table = self.table(pool_type)
        rows = self.query("EXPLAIN QUERY PLAN " + table.select_available(), [1, self.status.available, 1])
        detail = "; ".join(str(row[-1]) for row in rows)
        index = None
        for row in rows:
            text = str(row[-1])
            if "USING INDEX" in text or "USING COVERING INDEX" in text:
                index = text.split("INDEX", 1)[1].split()[0]
        return QueryPlan(uses_index=index is not None, filesort="TEMP B-TREE" in detail, index=index, detail=detail)

    def insert_rows(self, pool_type: str, rows: Iterable[tuple[int, int, str]]) -> int:
        table = self.table(pool_type)
        sql = table.sql("INSERT INTO {table} ({group}, {batch}, {status}, {text}) VALUES ({p}, {p}, {p}, {p})")
        available = self.status.available
        inserted = 0
        iterator = iter(rows)
        with self._transaction(pool_type) as cursor:
            while chunk := list(islice(iterator, INSERT_CHUNK)):
                try:
                    cursor.executemany(sql, [(group, batch, available, text) for group, batch, text in chunk])
                except sqlite3.IntegrityError as exc:
                    raise DataError(f"insert into {table.spec.table} failed: {exc}", "Nothing was inserted") from None
                inserted += len(chunk)
        return inserted

    def server_version(self) -> str:
        return sqlite3.sqlite_version

    def close(self) -> None:
        self.conn.close()
