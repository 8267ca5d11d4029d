"""The SQL contract every backend fulfils, and the statements both backends share.

Item state lives in one status column (available, queued, consumed). Every
state change is a conditional UPDATE inside a transaction, so concurrent
fillers and fallback consumers can never claim the same row twice.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from poolctl.config import PoolTypeSettings, StatusValues

log = logging.getLogger(__name__)

# Ids per statement in IN (...) lists: small enough for any packet size, large
# enough that an ack flush of a few thousand ids is a handful of statements.
IN_CHUNK = 1000
# groups() walks at most one group per this many rows of a table (its id
# span), and at least WALK_MIN_STEPS groups, before it reads the rest with a GROUP BY.
WALK_STEP_ROWS = 1000
WALK_MIN_STEPS = 16

# Called with the claimed ids after they are selected and before the claim
# commits; returning False rolls the claim back (the fill lock was lost).
BeforeCommit = Callable[[list[int]], bool]

T = TypeVar("T")


class Rollback(Exception):
    """Raised inside a transaction block to undo it without an error."""


@dataclass(frozen=True, slots=True)
class Row:
    """A claimed row: its id and its text."""

    id: int
    text: str


@dataclass(frozen=True, slots=True)
class QueryPlan:
    """The database's plan for the fill query."""

    uses_index: bool
    filesort: bool
    index: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class TextColumn:
    """Character set and maximum length of a table's text column; None means no limit."""

    charset: str | None = None
    max_chars: int | None = None
    max_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class StateCounts:
    """Rows of one group per item state."""

    available: int = 0
    queued: int = 0
    consumed: int = 0
    other: int = 0


@dataclass(frozen=True)
class Table:
    """One pool type's table with its quoted names and the SQL statements built from them."""

    pool_type: str
    spec: PoolTypeSettings
    status: StatusValues
    quote: Callable[[str], str]
    placeholder: str
    names: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        spec = self.spec
        object.__setattr__(
            self,
            "names",
            {
                "table": self.quote(spec.table),
                "id": self.quote(spec.id_column),
                "text": self.quote(spec.text_column),
                "group": self.quote(spec.group_column),
                "batch": self.quote(spec.batch_column),
                "status": self.quote(spec.status_column),
            },
        )

    @property
    def index_name(self) -> str:
        return f"{self.spec.table}_poolctl_fill"

    def sql(self, template: str) -> str:
        """Fill {table}, {id}, ... with quoted names and {p} with the driver's placeholder."""
        return template.format(p=self.placeholder, **self.names)

    def in_list(self, count: int) -> str:
        return ", ".join([self.placeholder] * count)

    def select_available(self, limit_clause: str = "LIMIT {p}") -> str:
        # Fill order: newest batch first, then oldest id. The fill index
        # (group, status, batch DESC, id) serves this without a sort.
        return self.sql(
            "SELECT {id}, {text} FROM {table} WHERE {group} = {p} AND {status} = {p} "
            "ORDER BY {batch} DESC, {id} ASC " + limit_clause
        )

    def set_status_of_ids(self, ids: Sequence[int]) -> str:
        """UPDATE setting the status ({p}) of the ids, written into the statement as integer literals.

        For the ack flush: binding each id as a parameter costs the driver
        more than the rest of the flush. "%d" writes nothing but digits.
        """
        literals = ",".join(["%d" % item for item in ids])
        return self.sql("UPDATE {table} SET {status} = {p} WHERE {id} IN (" + literals + ")")

    def update_status(self, count: int, only_from: bool = False) -> str:
        where = f"{{id}} IN ({self.in_list(count)})"
        if only_from:
            where += " AND {status} = {p}"
        return self.sql("UPDATE {table} SET {status} = {p} WHERE " + where)


def chunks(ids: Sequence[int], size: int = IN_CHUNK) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


class Database(ABC):
    """A connection to the SQL side: claims, state changes, counts and schema."""

    dialect: str
    placeholder: str

    def __init__(self, status: StatusValues, pools: dict[str, PoolTypeSettings]) -> None:
        self.status = status
        self.tables = {name: self.make_table(name, spec) for name, spec in pools.items()}

    def make_table(self, pool_type: str, spec: PoolTypeSettings) -> Table:
        return Table(pool_type, spec, self.status, self.quote, self.placeholder)

    def table(self, pool_type: str) -> Table:
        return self.tables[pool_type]

    @staticmethod
    @abstractmethod
    def quote(name: str) -> str: ...

    # -- transactions and statements, per backend -------------------------

    @abstractmethod
    def claim(self, pool_type: str, group: int, limit: int, before_commit: BeforeCommit | None = None) -> list[Row]:
        """Select up to `limit` available rows in fill order and mark them queued, in one transaction."""

    @abstractmethod
    def claim_for_consumer(self, pool_type: str, group: int) -> Row | None:
        """Take one available row straight to consumed (the fallback pop), or None when there is none."""

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement in its own transaction and return the affected row count."""

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one read statement and return all rows."""

    @abstractmethod
    def check_table(self, pool_type: str) -> None:
        """Raise SchemaError when the table or one of its configured columns is missing."""

    @abstractmethod
    def create_table(self, pool_type: str) -> bool:
        """Create the table and its fill index when missing; return True when it was created."""

    @abstractmethod
    def explain_claim(self, pool_type: str) -> QueryPlan:
        """Return the database's plan for the fill query."""

    @abstractmethod
    def insert_rows(self, pool_type: str, rows: Iterable[tuple[int, int, str]]) -> int:
        """Insert (group, batch, text) rows as available, in bulk and in one transaction."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def server_version(self) -> str: ...

    @abstractmethod
    def _transaction(self, pool_type: str | None = None) -> AbstractContextManager[Any]:
        """Run the block in one write transaction and yield a cursor; raising Rollback inside undoes it quietly."""

    # Appended to a SELECT inside _transaction: lock the rows read, waiting for
    # other transactions (row_lock_clause), or skipping rows they hold
    # (skip_locked_clause). Empty where the transaction itself already
    # excludes other writers.
    row_lock_clause: str = ""
    skip_locked_clause: str = ""

    def _retrying(self, operation: Callable[[], T]) -> T:
        """Run a transaction or query once; a backend that can retry one safely overrides this."""
        return operation()

    def text_column(self, pool_type: str) -> TextColumn:
        """Return the character set and maximum length of the pool type's text column (no limits by default)."""
        return TextColumn()

    # -- shared operations --------------------------------------------------

    def mark_consumed(self, pool_type: str, ids: Sequence[int]) -> int:
        """Set the rows to consumed, whatever state they are in; return how many changed."""
        table = self.table(pool_type)
        changed = 0
        for part in chunks(ids):
            changed += self.execute(table.set_status_of_ids(part), [self.status.consumed])
        return changed

    def restore(self, pool_type: str, ids: Sequence[int], before_commit: BeforeCommit | None = None) -> list[int]:
        """Make queued rows available again and return their ids; rows in any other state are left alone.

        Works in chunks of IN_CHUNK ids, one transaction each. Each chunk's rows
        are locked and still queued when before_commit is called with their ids.
        A False from before_commit rolls that chunk back and stops, so a
        reconcile that lost its fill lock restores nothing more.
        """
        table = self.table(pool_type)
        restored: list[int] = []
        for part in chunks(ids):
            done = self._retrying(lambda part=part: self._restore_chunk(table, part, before_commit))
            if done is None:
                break
            restored.extend(done)
        return restored

    def _restore_chunk(self, table: Table, ids: Sequence[int], before_commit: BeforeCommit | None) -> list[int] | None:
        select = table.sql(
            f"SELECT {{id}} FROM {{table}} WHERE {{id}} IN ({table.in_list(len(ids))}) AND {{status}} = {{p}} {self.row_lock_clause}"
        )
        found: list[int] = []
        stopped = False
        with self._transaction(table.pool_type) as cursor:
            cursor.execute(select, [*ids, self.status.queued])
            found = [row[0] for row in cursor.fetchall()]
            if not found:
                raise Rollback
            if before_commit is not None and not before_commit(found):
                stopped = True
                raise Rollback
            cursor.execute(table.update_status(len(found), only_from=True), [self.status.available, *found, self.status.queued])
        if stopped:
            return None
        return found

    def unlocked_statuses(self, pool_type: str, ids: Sequence[int]) -> dict[int, int]:
        """Return the status of each row that exists and that no other transaction holds locked.

        A fill that recorded ids in a claiming set holds their rows locked until
        it commits or rolls back, so a row missing from the result may still be
        on its way to queued. On SQLite no other writer can be in a transaction
        at the same time, and every existing row is returned.
        """
        table = self.table(pool_type)
        found: dict[int, int] = {}
        for part in chunks(ids):
            select = table.sql(
                f"SELECT {{id}}, {{status}} FROM {{table}} WHERE {{id}} IN ({table.in_list(len(part))}) {self.skip_locked_clause}"
            )

            def read(select: str = select, part: Sequence[int] = part) -> dict[int, int]:
                rows: dict[int, int] = {}
                with self._transaction(pool_type) as cursor:
                    cursor.execute(select, list(part))
                    rows = {row[0]: row[1] for row in cursor.fetchall()}
                    raise Rollback  # read only: release the row locks at once
                return rows

            found.update(self._retrying(read))
        return found

    def ping(self) -> None:
        """Run a trivial query, reconnecting first where the backend can; raise DatabaseUnavailable when that fails."""
        self.query("SELECT 1")

    def queued_ids(self, pool_type: str, group: int) -> set[int]:
        table = self.table(pool_type)
        rows = self.query(
            table.sql("SELECT {id} FROM {table} WHERE {group} = {p} AND {status} = {p}"),
            [group, self.status.queued],
        )
        return {row[0] for row in rows}

    def queued_groups(self, pool_type: str) -> dict[int, int]:
        """Return the group of every queued row, by id."""
        table = self.table(pool_type)
        rows = self.query(table.sql("SELECT {id}, {group} FROM {table} WHERE {status} = {p}"), [self.status.queued])
        return {row[0]: row[1] for row in rows}

    def groups_and_statuses(self, pool_type: str, ids: Sequence[int]) -> dict[int, tuple[int, int]]:
        """Return (group, status) of each id that exists."""
        table = self.table(pool_type)
        found: dict[int, tuple[int, int]] = {}
        for part in chunks(ids):
            sql = table.sql(
                f"SELECT {{id}}, {{group}}, {{status}} FROM {{table}} WHERE {{id}} IN ({table.in_list(len(part))})"
            )
            found.update((row[0], (row[1], row[2])) for row in self.query(sql, part))
        return found

    def statuses(self, pool_type: str, ids: Sequence[int]) -> dict[int, int]:
        """Return the status of each id that exists."""
        table = self.table(pool_type)
        found: dict[int, int] = {}
        for part in chunks(ids):
            sql = table.sql(f"SELECT {{id}}, {{status}} FROM {{table}} WHERE {{id}} IN ({table.in_list(len(part))})")
            found.update((row[0], row[1]) for row in self.query(sql, part))
        return found

    def groups(self, pool_type: str, status: int | None = None) -> list[int]:
        """Return the groups that have rows, or only those with rows in the given status.

        A GROUP BY reads the whole fill index (MariaDB 10.11 does not use a
        loose index scan for it: 4.4 s on 10,000,000 rows, once a minute or
        more for `fill --watch`). So the groups are walked instead, one
        statement per group: an index seek for the next group and, with a
        status, one for a row of that group in it. A walk step costs about
        as much as reading WALK_STEP_ROWS index entries, so a table with many
        groups for its size finishes with one GROUP BY over the groups left.
        """
        table = self.table(pool_type)
        has = "EXISTS (SELECT 1 FROM {table} AS t WHERE t.{group} = walk.{group} AND t.{status} = {p})"
        after = table.sql("SELECT walk.{group}, " + has + " FROM (SELECT {group} FROM {table} "
                          "WHERE {group} > {p} ORDER BY {group} LIMIT 1) AS walk")
        first = table.sql("SELECT walk.{group}, " + has + " FROM (SELECT {group} FROM {table} "
                          "ORDER BY {group} LIMIT 1) AS walk")
        probe_status = self.status.available if status is None else status  # any value will do without a status
        span = self.query(table.sql("SELECT MAX({id}) - MIN({id}) FROM {table}"))[0][0] or 0  # by the primary key
        steps_left = max(WALK_MIN_STEPS, span // WALK_STEP_ROWS)
        found: list[int] = []
        rows = self.query(first, [probe_status])
        while rows:
            group, in_status = rows[0]
            if status is None or in_status:
                found.append(group)
            steps_left -= 1
            if steps_left == 0:
                return found + self._groups_after(table, group, status)
            rows = self.query(after, [probe_status, group])
        return found

    def _groups_after(self, table: Table, group: int, status: int | None) -> list[int]:
        """Return the groups above group (with rows in status, if given) by one GROUP BY."""
        if status is None:
            sql = table.sql("SELECT {group} FROM {table} WHERE {group} > {p} GROUP BY {group}")
            return sorted(row[0] for row in self.query(sql, [group]))
        sql = table.sql("SELECT {group} FROM {table} WHERE {group} > {p} AND {status} = {p} GROUP BY {group}")
        return sorted(row[0] for row in self.query(sql, [group, status]))

    def group_exists(self, pool_type: str, group: int) -> bool:
        table = self.table(pool_type)
        return bool(self.query(table.sql("SELECT 1 FROM {table} WHERE {group} = {p} LIMIT 1"), [group]))

    def state_counts(self, pool_type: str) -> dict[int, StateCounts]:
        """Return, per group, how many rows are available, queued and consumed."""
        table = self.table(pool_type)
        rows = self.query(table.sql("SELECT {group}, {status}, COUNT(*) FROM {table} GROUP BY {group}, {status}"))
        by_group: dict[int, dict[str, int]] = {}
        names = {self.status.available: "available", self.status.queued: "queued", self.status.consumed: "consumed"}
        for group, status, count in rows:
            counts = by_group.setdefault(group, {})
            name = names.get(status, "other")
            counts[name] = counts.get(name, 0) + count
        return {group: StateCounts(**counts) for group, counts in by_group.items()}
