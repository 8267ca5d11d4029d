"""Query plans: the claim and fallback queries on a large table, and a fill pass on a large and a small table.

The statements checked are the ones poolctl sends. A real claim (rolled
back through its before_commit hook) and a real fallback pop (undone
afterwards) run with a cursor that records each statement. The first
SELECT of each is then EXPLAINed with its own parameters.

Both tables have 5 groups and 50 batches, ids rising with the batch, as
rows that were loaded over time. The oldest rows, the same number in both
tables, are available, and every newer row is consumed, as after fills
that serve the newest batch first. So a fill reads the same rows on the
same number of pages in both tables, and only the amount of consumed
history differs. An index without the status column would have to step
through all of that history in fill order, which the large table would show.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pymysql
import pymysql.cursors

from poolctl.config import Settings
from poolctl.fill import Filler
from poolctl.sql import Database, connect_database
from poolctl.store import RedisStore

from bench.core import Result, Scale, Target, run_rounds
from bench.data import create_tables, drop_tables, generate_rows
from bench.env import BenchEnv

log = logging.getLogger("bench")

GROUPS = 5
BATCHES = 50
FILL_GROUP = 1
MAX_AVAILABLE_PER_GROUP = 10_000
MAX_POOL_SIZE, BATCH = 5_000, 500
AVAILABLE, QUEUED, CONSUMED = 1, 2, 0


@dataclass(frozen=True)
class Plan:
    """One row of EXPLAIN for a statement poolctl sent."""

    statement: str
    key: str | None
    access: str | None
    rows: int | None
    extra: str

    @property
    def ok(self) -> bool:
        return self.key is not None and "filesort" not in self.extra.lower() and "temporary" not in self.extra.lower()

    def describe(self) -> str:
        return f"key={self.key} type={self.access} rows={self.rows} extra={self.extra or '-'}"


class RecordingCursor(pymysql.cursors.Cursor):
    """A cursor that appends every statement and its parameters to its connection's `bench_statements` list."""

    def execute(self, query: str, args: Any = None) -> int:
        self.connection.bench_statements.append((query, args))  # type: ignore[union-attr]
        return super().execute(query, args)


def run(env: BenchEnv, scale: Scale) -> list[Result]:
    # Smaller only in smoke mode, whose small table has fewer rows per group.
    available = min(MAX_AVAILABLE_PER_GROUP, scale.plans_small // GROUPS)
    pool_size = min(MAX_POOL_SIZE, available // 2)
    pools = {
        name: {"table": f"plans_{name}", "text_column": "title", "text_type": "short",
               "size": pool_size, "threshold": pool_size - 1, "batch": min(BATCH, pool_size)}
        for name in ("large", "small")
    }
    settings, _ = env.settings("plans", pools)
    create_tables(settings)
    for name, rows in (("large", scale.plans_large), ("small", scale.plans_small)):
        _generate(env, f"plans_{name}", rows, available, pool_size)

    store = RedisStore.from_settings(settings)
    db = connect_database(settings)
    try:
        claim = _explain(env, *_record_claim(db, "large"))
        fallback = _explain(env, *_record_fallback(env, db, "large"))
        filler = Filler(settings, store, db)
        discover_plans = [_explain(env, query, args) for query, args in _record_discover(db, filler, "large")]

        def fill_pass(name: str) -> float:
            keys = store.keys(name, FILL_GROUP)
            with env.stopwatch(f"plans-fill-{name}").running() as watch:
                result = filler.run_pass([keys])
            if result.pushed != pool_size:
                raise RuntimeError(f"the fill pass on plans_{name} pushed {result.pushed} items, expected {pool_size}")
            # Undo the pass: the same rows are available again and the pool is empty.
            env.redis.unlink(keys.pool)
            env.execute(f"UPDATE `plans_{name}` SET status = %s WHERE group_id = %s AND status = %s",
                        (AVAILABLE, FILL_GROUP, QUEUED))
            return watch.seconds * 1000

        def discover(name: str) -> float:
            with env.stopwatch(f"plans-discover-{name}").running() as watch:
                filler.discover([name])
            return watch.seconds * 1000

        # Fill passes first: a discover scans the whole fill index of the large
        # table, which evicts the rows a fill pass reads from a small buffer pool.
        fills = {"large": lambda: fill_pass("large"), "small": lambda: fill_pass("small")}
        values = run_rounds("plans fill pass", fills, scale.warmup, scale.fast_rounds)
        discovers = {"large": lambda: discover("large"), "small": lambda: discover("small")}
        discovered = run_rounds("plans discover", discovers, scale.warmup, scale.rounds)
    finally:
        db.close()
        store.client.close()
        drop_tables(env, [spec["table"] for spec in pools.values()])
        env.delete_keys(settings.redis.key_prefix)

    large, small = f"{scale.plans_large:,}", f"{scale.plans_small:,}"
    check_label = "index, no filesort"
    return [
        Result("plans", "plans.claim_query", "", check=claim.ok, check_label=check_label,
               detail=f"EXPLAIN on {large} rows: {claim.describe()}; statement: {claim.statement}"),
        Result("plans", "plans.fallback_query", "", check=fallback.ok, check_label=check_label,
               detail=f"EXPLAIN on {large} rows: {fallback.describe()}; statement: {fallback.statement}"),
        Result("plans", "plans.fill_pass", "ms", values["large"],
               baseline=f"the same fill pass on {small} rows", baseline_samples=values["small"],
               target=Target("<=", 1.5),
               detail=f"Filler.run_pass filling one pool with {pool_size:,} items (batch {BATCH}) on {large} rows, "
               f"{available:,} available per group"),
        Result("plans", "plans.discover", "ms", discovered["large"],
               baseline=f"Filler.discover on {small} rows", baseline_samples=discovered["small"],
               detail=f"Filler.discover on {large} rows: the group queries that `poolctl fill` runs first "
               "and `fill --watch` repeats every discover interval"),
        Result("plans", "plans.discover_query", "", detail=f"EXPLAIN on {large} rows: " + "; ".join(
            dict.fromkeys(f"{plan.describe()} for {plan.statement}" for plan in discover_plans))),
    ]


def _generate(env: BenchEnv, table: str, rows: int, available_per_group: int, pool_size: int) -> None:
    status = f"IF(seq <= {available_per_group * GROUPS}, {AVAILABLE}, {CONSUMED})"
    generate_rows(env, table, "id, group_id, batch_id, status, title",
                  f"seq, 1 + seq % {GROUPS}, 1 + seq * {BATCHES} div {rows}, {status}, CONCAT('标题 ', seq)", rows)
    found = env.query(f"SELECT COUNT(*) FROM `{table}` WHERE group_id = %s AND status = %s", (FILL_GROUP, AVAILABLE))
    if found[0][0] < pool_size:
        raise RuntimeError(f"table {table} has {found[0][0]} available rows in group {FILL_GROUP}, "
                           f"fewer than the pool size {pool_size}")


def _recording(db: Database) -> pymysql.connections.Connection:
    conn = db.connection()  # type: ignore[attr-defined]
    conn.bench_statements = []
    conn.cursorclass = RecordingCursor
    return conn


def _stop_recording(conn: pymysql.connections.Connection) -> list[tuple[str, Any]]:
    conn.cursorclass = pymysql.cursors.Cursor
    return conn.bench_statements


def _first_select(statements: list[tuple[str, Any]], what: str) -> tuple[str, Any]:
    for query, args in statements:
        if query.lstrip().upper().startswith("SELECT"):
            return query, args
    raise RuntimeError(f"the {what} sent no SELECT: {statements}")


def _record_claim(db: Database, pool_type: str) -> tuple[str, Any]:
    """Run a real claim, rolled back by its before_commit hook; return its SELECT and parameters."""
    conn = _recording(db)
    try:
        rows = db.claim(pool_type, FILL_GROUP, BATCH, before_commit=lambda ids: False)
    finally:
        statements = _stop_recording(conn)
    if rows:
        raise RuntimeError("a claim rolled back by before_commit returned rows")
    return _first_select(statements, "claim")


def _record_fallback(env: BenchEnv, db: Database, pool_type: str) -> tuple[str, Any]:
    """Run a real fallback pop and make its row available again; return its SELECT and parameters."""
    conn = _recording(db)
    try:
        row = db.claim_for_consumer(pool_type, FILL_GROUP)
    finally:
        statements = _stop_recording(conn)
    if row is None:
        raise RuntimeError(f"the fallback pop found no available row in plans_{pool_type}")
    env.execute(f"UPDATE `plans_{pool_type}` SET status = %s WHERE id = %s", (AVAILABLE, row.id))
    return _first_select(statements, "fallback pop")


def _record_discover(db: Database, filler: Filler, pool_type: str) -> list[tuple[str, Any]]:
    """Run Filler.discover; return the SELECTs it sent, with their parameters."""
    conn = _recording(db)
    try:
        filler.discover([pool_type])
    finally:
        statements = _stop_recording(conn)
    return [(query, args) for query, args in statements if query.lstrip().upper().startswith("SELECT")]


def _explain(env: BenchEnv, query: str, args: Any) -> Plan:
    with env.sql.cursor(pymysql.cursors.DictCursor) as cursor:
        cursor.execute("EXPLAIN " + query, args)
        first = cursor.fetchall()[0]
    statement = " ".join(query.split())
    return Plan(statement, first.get("key"), first.get("type"), first.get("rows"), str(first.get("Extra") or ""))
