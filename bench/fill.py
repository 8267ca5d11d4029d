"""Fill throughput: poolctl's one-pass fill against a hand-written claim-and-push loop.

Both sides start from an identical fresh copy of the same sample rows, once
InnoDB has purged the previous round's updates, and move every row into the
pools in one pass, 500 rows per batch. poolctl runs
the code path of `poolctl fill` (Filler.discover, then Filler.run_pass) on
connections opened beforehand. The hand-written loop does per batch: SELECT
by the fill query with FOR UPDATE SKIP LOCKED, UPDATE the rows to queued,
one LPUSH of the JSON items, COMMIT. It keeps no fill lock, no claiming set
and no rate counter, which is the bookkeeping poolctl's guarantees cost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pymysql

from poolctl.config import Settings
from poolctl.fill import Filler
from poolctl.sql import Database, connect_database
from poolctl.store import RedisStore

from bench.core import Result, Scale, Target, run_rounds
from bench.data import copy_table, drop_tables, encode_item, load_samples
from bench.env import BenchEnv

log = logging.getLogger("bench")

BATCH = 500
AVAILABLE, QUEUED = 1, 2
TARGET = Target(">=", 0.9)


@dataclass(frozen=True)
class FillCase:
    """One pool type to fill: its row count and the table names used."""

    pool_type: str
    label: str
    text_column: str
    text_type: str
    rows: int

    @property
    def table(self) -> str:
        return f"fill_{self.pool_type}"

    @property
    def source(self) -> str:
        return f"fill_{self.pool_type}_source"


def run(env: BenchEnv, scale: Scale) -> list[Result]:
    cases = [
        FillCase("titles", "titles", "title", "short", scale.fill_titles),
        FillCase("contents", "bodies", "content", "long", scale.fill_bodies),
    ]
    return [_run_case(env, scale, case) for case in cases]


def _run_case(env: BenchEnv, scale: Scale, case: FillCase) -> Result:
    size = max(case.rows, BATCH)
    pool = {"table": case.table, "text_column": case.text_column, "text_type": case.text_type,
            "size": size, "threshold": size - 1, "batch": BATCH}
    settings, _ = env.settings(f"fill-{case.pool_type}", {case.pool_type: pool})
    source_settings, _ = env.settings(f"fill-{case.pool_type}-source", {case.pool_type: {**pool, "table": case.source}})
    load_samples(source_settings, case.pool_type, case.rows, scale.fill_groups)
    groups = [row[0] for row in env.query(f"SELECT DISTINCT group_id FROM `{case.source}` ORDER BY group_id")]

    store = RedisStore.from_settings(settings)
    db = connect_database(settings)
    conn = env.sql_connection()
    try:
        def poolctl_fill() -> float:
            _fresh_copy(env, settings, case)
            seconds, pushed = _poolctl_pass(env, settings, store, db, case)
            _check_moved(env, settings, case, groups, pushed)
            return case.rows / seconds

        def handwritten() -> float:
            _fresh_copy(env, settings, case)
            seconds = _handwritten_pass(env, conn, settings, case, groups)
            _check_moved(env, settings, case, groups, case.rows)
            return case.rows / seconds

        variants = {"poolctl": poolctl_fill, "handwritten": handwritten}
        values = run_rounds(f"fill.{case.label}", variants, scale.warmup, scale.rounds)
    finally:
        conn.close()
        db.close()
        store.client.close()
        drop_tables(env, [case.table, case.source])
        env.delete_keys(settings.redis.key_prefix)

    return Result(
        benchmark="fill",
        name=f"fill.{case.label}",
        unit="items/s",
        samples=values["poolctl"],
        baseline="hand-written SELECT ... FOR UPDATE SKIP LOCKED, UPDATE, LPUSH, COMMIT loop",
        baseline_samples=values["handwritten"],
        target=TARGET,
        detail=(f"{case.rows:,} sample {case.label} in {len(groups)} groups, batch {BATCH}, one pass; "
                f"code path of `poolctl fill` (discover + run_pass)"),
    )


def _fresh_copy(env: BenchEnv, settings: Settings, case: FillCase) -> None:
    """Copy the rows afresh and empty the pools, keeping their sentinels.

    Without its sentinel, a pool's first fill reconciles it, as after a
    Redis data loss. Kept, every round measures the steady state, in which
    the SQL rows are available and the pools empty.
    """
    copy_table(env, case.source, case.table)
    keys = [key for key in env.redis.scan_iter(match=f"{settings.redis.key_prefix}*", count=1000)
            if not key.endswith(b":sentinel")]
    if keys:
        env.redis.unlink(*keys)
    env.wait_for_purge()  # the previous round's updates, which would load the server during this one


def _poolctl_pass(env: BenchEnv, settings: Settings, store: RedisStore, db: Database, case: FillCase) -> tuple[float, int]:
    filler = Filler(settings, store, db)
    with env.stopwatch(f"fill-{case.label}").running() as watch:
        targets = filler.discover([case.pool_type])
        result = filler.run_pass(targets)
    return watch.seconds, result.pushed


def _handwritten_pass(env: BenchEnv, conn: pymysql.connections.Connection, settings: Settings, case: FillCase,
                      groups: list[int]) -> float:
    select = (f"SELECT id, `{case.text_column}` FROM `{case.table}` WHERE group_id = %s AND status = %s "
              f"ORDER BY batch_id DESC, id ASC LIMIT %s FOR UPDATE SKIP LOCKED")
    client = env.redis
    with env.stopwatch(f"fill-{case.label}-handwritten").running() as watch:
        for group in groups:
            key = _pool_key(settings, case, group)
            while True:
                conn.begin()
                with conn.cursor() as cursor:
                    cursor.execute(select, (group, AVAILABLE, BATCH))
                    rows = cursor.fetchall()
                    if not rows:
                        conn.rollback()
                        break
                    ids = [row[0] for row in rows]
                    marks = ", ".join(["%s"] * len(ids))
                    cursor.execute(f"UPDATE `{case.table}` SET status = %s WHERE id IN ({marks})", (QUEUED, *ids))
                client.lpush(key, *[encode_item(row_id, text) for row_id, text in rows])
                conn.commit()
                if len(rows) < BATCH:
                    break
    return watch.seconds


def _check_moved(env: BenchEnv, settings: Settings, case: FillCase, groups: list[int], pushed: int) -> None:
    """Fail the benchmark unless every row is queued in SQL and is in a pool."""
    queued = env.query(f"SELECT COUNT(*) FROM `{case.table}` WHERE status = %s", (QUEUED,))[0][0]
    pipe = env.redis.pipeline(transaction=False)
    for group in groups:
        pipe.llen(_pool_key(settings, case, group))
    in_pools = sum(pipe.execute())
    if not (pushed == queued == in_pools == case.rows):
        raise RuntimeError(
            f"fill of {case.table} moved the wrong number of rows: {case.rows} rows, {pushed} pushed, "
            f"{queued} queued in SQL, {in_pools} in pools"
        )


def _pool_key(settings: Settings, case: FillCase, group: int) -> str:
    # Spelled out rather than taken from poolctl.keys: the baseline must not run poolctl code.
    return f"{settings.redis.key_prefix}{case.pool_type}:pool:{group}"
