"""Pop: PoolConsumer.pop and pop_many(100) against raw redis-py RPOP on the same pool data.

Before each measurement the pool is loaded with the same JSON items (ids of
real queued rows, so that ack flushes update real rows), and the rows are
set back to queued, and the benchmark waits until InnoDB has purged that
reset, which would otherwise load the server during the measurement. None
of this is timed. A consumer with its default
settings pops until the pool is empty. Its ack flusher works in its own
thread while the pops run, so the pops share the CPU with it, with MariaDB
and with Redis; the clock stops when the last pop returns. The raw loops
only RPOP.

After the clock stops, the benchmark flushes every remaining ack and checks
that every popped row is consumed in SQL (G3), so no run counts a pop whose
ack is lost. The info rows take the figure apart:
- the same runs up to the moment the last ack reached SQL;
- the ceiling that SQL sets on that figure, a bare loop of the same UPDATE
  statements over the same rows, with no Redis work at all;
- RedisStore.pop alone (the Lua pop script with its acks, no decoding and
  no flush).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from poolctl.consumer import PoolConsumer
from poolctl.store import RedisStore

from bench.core import Result, Scale, Target, run_rounds
from bench.data import create_tables, drop_tables, encode_item, generate_rows, push_items
from bench.env import BenchEnv

log = logging.getLogger("bench")

POOL_TYPE = "titles"
TABLE = "pop_titles"
GROUP = 1
MANY = 100
QUEUED, CONSUMED = 2, 0
DRAIN_TIMEOUT_S = 120.0


def run(env: BenchEnv, scale: Scale) -> list[Result]:
    rows = max(scale.pop_single, scale.pop_many)
    size = max(rows, 1000)
    settings, _ = env.settings(
        "pop", {POOL_TYPE: {"table": TABLE, "text_column": "title", "text_type": "short", "size": size,
                            "threshold": size - 1}}
    )
    create_tables(settings)
    generate_rows(env, TABLE, "group_id, batch_id, status, title",
                  f"{GROUP}, 1, {QUEUED}, CONCAT('标题', seq, ' ', REPEAT('城市发展', 5))", rows)
    rows_read = env.query(f"SELECT id, title FROM `{TABLE}` ORDER BY id")
    items = [encode_item(row_id, text) for row_id, text in rows_read]
    ids = [row_id for row_id, _ in rows_read]
    key = f"{settings.redis.key_prefix}{POOL_TYPE}:pool:{GROUP}"
    acks_key = f"{key}:acks"

    client = redis.Redis.from_url(settings.redis.url)
    consumer = PoolConsumer(settings)
    store = RedisStore.from_settings(settings)
    single, many = items[: scale.pop_single], items[: scale.pop_many]
    with_sql: dict[str, list[float]] = {"one": [], "many": []}
    try:
        def prepare(chosen: list[str]) -> None:
            env.execute(f"UPDATE `{TABLE}` SET status = %s WHERE status <> %s", (QUEUED, QUEUED))
            env.delete_keys(settings.redis.key_prefix)
            push_items(env, key, chosen)
            env.wait_for_purge()

        def measure(label: str, chosen: list[str], loop: Callable[[], int]) -> Callable[[], float]:
            def once() -> float:
                prepare(chosen)
                started = time.perf_counter()
                with env.stopwatch(f"pop-{label}").running() as watch:
                    popped = loop()
                if popped != len(chosen):
                    raise RuntimeError(f"pop {label}: {popped} items popped from a pool of {len(chosen)}")
                if label.startswith("consumer-"):
                    _drain_acks(consumer, client, acks_key)
                    drained = time.perf_counter() - started
                    _check_consumed(env, len(chosen), label)
                    with_sql[label.removeprefix("consumer-")].append(popped / drained)
                return popped / watch.seconds
            return once

        def sql_ceiling() -> float:
            """Run the UPDATE statements of an ack flush with nothing else around them, and return rows per second."""
            env.execute(f"UPDATE `{TABLE}` SET status = %s WHERE status <> %s", (QUEUED, QUEUED))
            env.wait_for_purge()
            chosen = ids[: scale.pop_many]
            batch = settings.acks.batch
            with env.sql.cursor() as cursor:
                started = time.perf_counter()
                for first in range(0, len(chosen), batch):
                    literals = ",".join(["%d" % item for item in chosen[first : first + batch]])
                    cursor.execute(f"UPDATE `{TABLE}` SET status = %s WHERE id IN ({literals})", (CONSUMED,))
                return len(chosen) / (time.perf_counter() - started)

        variants = {
            "raw_one": measure("raw-one", single, lambda: _raw_one(client, key)),
            "consumer_one": measure("consumer-one", single, lambda: _consumer_one(consumer)),
            "store_one": measure("store-one", single, lambda: _store_loop(store, 1)),
            "raw_many": measure("raw-many", many, lambda: _raw_many(client, key)),
            "consumer_many": measure("consumer-many", many, lambda: _consumer_many(consumer)),
            "store_many": measure("store-many", many, lambda: _store_loop(store, MANY)),
            "sql_ceiling": sql_ceiling,
        }
        values = run_rounds("pop", variants, scale.warmup, scale.pop_rounds)
    finally:
        consumer.close()
        store.client.close()
        client.close()
        drop_tables(env, [TABLE])
        env.delete_keys(settings.redis.key_prefix)

    # run_rounds drops the warm-up rounds from its values; drop them here too.
    values["consumer_one_with_sql"] = with_sql["one"][scale.warmup :]
    values["consumer_many_with_sql"] = with_sql["many"][scale.warmup :]
    one = f"{len(single):,} titles per round, one item per call"
    hundred = f"{len(many):,} titles per round, {MANY} items per call"
    defaults = f"default settings (acks flushed in a background thread every {settings.acks.batch} pops or " \
               f"{settings.acks.interval_s:g}s)"
    return [
        Result("pop", "pop.one", "items/s", values["consumer_one"],
               baseline="raw redis-py RPOP loop, one per round trip", baseline_samples=values["raw_one"],
               target=Target(">=", 0.8), detail=f"PoolConsumer.pop, {defaults}, until the last pop returns; {one}"),
        Result("pop", "pop.many100", "items/s", values["consumer_many"],
               baseline=f"raw redis-py RPOP with count {MANY}", baseline_samples=values["raw_many"],
               target=Target(">=", 0.5),
               detail=f"PoolConsumer.pop_many({MANY}), {defaults}, until the last pop returns; {hundred}"),
        Result("pop", "pop.one_with_sql", "items/s", values["consumer_one_with_sql"],
               baseline="raw RPOP, one per round trip", baseline_samples=values["raw_one"],
               detail="the pop.one runs up to the moment the last ack reached SQL"),
        Result("pop", "pop.many100_with_sql", "items/s", values["consumer_many_with_sql"],
               baseline=f"raw RPOP with count {MANY}", baseline_samples=values["raw_many"],
               detail="the pop.many100 runs up to the moment the last ack reached SQL"),
        Result("pop", "pop.sql_ceiling", "rows/s", values["sql_ceiling"],
               baseline=f"raw RPOP with count {MANY}", baseline_samples=values["raw_many"],
               detail=f"the UPDATE statements of the ack flush alone ({settings.acks.batch} ids each, autocommit) over "
               f"the same {len(many):,} rows: the most that pop.many100_with_sql can reach"),
        Result("pop", "pop.one_lua_only", "items/s", values["store_one"],
               baseline="raw RPOP, one per round trip", baseline_samples=values["raw_one"],
               detail="RedisStore.pop(keys, 1): the Lua pop script with acks, no decoding, no flush"),
        Result("pop", "pop.many100_lua_only", "items/s", values["store_many"],
               baseline=f"raw RPOP with count {MANY}", baseline_samples=values["raw_many"],
               detail=f"RedisStore.pop(keys, {MANY}): the Lua pop script with acks, no decoding, no flush"),
    ]


def _drain_acks(consumer: PoolConsumer, client: redis.Redis, acks_key: str) -> None:
    """Flush until the pool's acks list is empty; a flush call stops after a bounded number of batches."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while consumer.flush_acks() or client.llen(acks_key):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"pop: acks still in Redis {DRAIN_TIMEOUT_S:g}s after the last pop, so the ack flush is failing; "
                "check that MariaDB is up"
            )


def _check_consumed(env: BenchEnv, expected: int, label: str) -> None:
    consumed = env.query(f"SELECT COUNT(*) FROM `{TABLE}` WHERE status = %s", (CONSUMED,))[0][0]
    if consumed != expected:
        raise RuntimeError(
            f"pop {label}: only {consumed} of {expected} popped rows are consumed in SQL after a full flush"
        )


def _raw_one(client: redis.Redis, key: str) -> int:
    popped = 0
    while client.rpop(key) is not None:
        popped += 1
    return popped


def _raw_many(client: redis.Redis, key: str) -> int:
    popped = 0
    while values := client.rpop(key, MANY):
        popped += len(values)
    return popped


def _consumer_one(consumer: PoolConsumer) -> int:
    popped = 0
    while consumer.pop(POOL_TYPE, GROUP) is not None:
        popped += 1
    return popped


def _consumer_many(consumer: PoolConsumer) -> int:
    popped = 0
    while items := consumer.pop_many(POOL_TYPE, GROUP, MANY):
        popped += len(items)
    return popped


def _store_loop(store: RedisStore, count: int) -> int:
    keys = store.keys(POOL_TYPE, GROUP)
    popped = 0
    while result := store.pop(keys, count).count:
        popped += result
    return popped
