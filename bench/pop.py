"""Pop: PoolConsumer.pop and pop_many(100) against raw redis-py RPOP on the same pool data.

Before each measurement the pool is loaded with the same JSON items (ids of
real queued rows, so that ack flushes update real rows), and the rows are
set back to queued. Neither step is timed. A consumer pops until the pool
is empty and then flushes its remaining acks inside the timed part, because
a consumer owes that work for every item it popped. The raw loops only RPOP.

The main rows use the consumer's default settings. The info rows take the
cost apart: the same runs without the time spent in flush_acks() calls made
in the popping thread, and RedisStore.pop alone (the Lua pop script with
its acks, no decoding and no flush). A consumer that flushes in another
thread keeps that work in its main row and out of the info row.
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
QUEUED = 2


class FlushTimer:
    """Adds up the seconds that the popping thread spends in a consumer's flush_acks, including flushes its pops trigger."""

    def __init__(self, consumer: PoolConsumer) -> None:
        self.seconds = 0.0
        self._flush = consumer.flush_acks
        # An instance attribute wins over the method, so the consumer's own calls come here too.
        consumer.flush_acks = self._timed  # type: ignore[method-assign]

    def _timed(self) -> int:
        started = time.perf_counter()
        try:
            return self._flush()
        finally:
            self.seconds += time.perf_counter() - started


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
    items = [encode_item(row_id, text) for row_id, text in env.query(f"SELECT id, title FROM `{TABLE}` ORDER BY id")]
    key = f"{settings.redis.key_prefix}{POOL_TYPE}:pool:{GROUP}"

    client = redis.Redis.from_url(settings.redis.url)
    consumer = PoolConsumer(settings)
    flushes = FlushTimer(consumer)
    store = RedisStore.from_settings(settings)
    single, many = items[: scale.pop_single], items[: scale.pop_many]
    without_flush: dict[str, list[float]] = {"one": [], "many": []}
    try:
        def prepare(chosen: list[str]) -> None:
            env.execute(f"UPDATE `{TABLE}` SET status = %s WHERE status <> %s", (QUEUED, QUEUED))
            env.delete_keys(settings.redis.key_prefix)
            push_items(env, key, chosen)

        def measure(label: str, chosen: list[str], loop: Callable[[], int]) -> Callable[[], float]:
            def once() -> float:
                prepare(chosen)
                flushes.seconds = 0.0
                with env.stopwatch(f"pop-{label}").running() as watch:
                    popped = loop()
                if popped != len(chosen):
                    raise RuntimeError(f"pop {label}: {popped} items popped from a pool of {len(chosen)}")
                if label.startswith("consumer-"):
                    without_flush[label.removeprefix("consumer-")].append(popped / (watch.seconds - flushes.seconds))
                return popped / watch.seconds
            return once

        variants = {
            "raw_one": measure("raw-one", single, lambda: _raw_one(client, key)),
            "consumer_one": measure("consumer-one", single, lambda: _consumer_one(consumer)),
            "store_one": measure("store-one", single, lambda: _store_loop(store, 1)),
            "raw_many": measure("raw-many", many, lambda: _raw_many(client, key)),
            "consumer_many": measure("consumer-many", many, lambda: _consumer_many(consumer)),
            "store_many": measure("store-many", many, lambda: _store_loop(store, MANY)),
        }
        values = run_rounds("pop", variants, scale.warmup, scale.rounds)
    finally:
        consumer.close()
        store.client.close()
        client.close()
        drop_tables(env, [TABLE])
        env.delete_keys(settings.redis.key_prefix)

    # run_rounds drops the warm-up rounds from its values; drop them here too.
    values["consumer_one_without_flush"] = without_flush["one"][scale.warmup :]
    values["consumer_many_without_flush"] = without_flush["many"][scale.warmup :]
    one = f"{len(single):,} titles per round, one item per call"
    hundred = f"{len(many):,} titles per round, {MANY} items per call"
    return [
        Result("pop", "pop.one", "items/s", values["consumer_one"],
               baseline="raw redis-py RPOP loop, one per round trip", baseline_samples=values["raw_one"],
               target=Target(">=", 0.8), detail=f"PoolConsumer.pop, default settings (acks every "
               f"{settings.acks.batch} pops or {settings.acks.interval_s:g}s); {one}"),
        Result("pop", "pop.many100", "items/s", values["consumer_many"],
               baseline=f"raw redis-py RPOP with count {MANY}", baseline_samples=values["raw_many"],
               target=Target(">=", 0.5), detail=f"PoolConsumer.pop_many({MANY}), default settings; {hundred}"),
        Result("pop", "pop.one_without_flush", "items/s", values["consumer_one_without_flush"],
               baseline="raw RPOP, one per round trip", baseline_samples=values["raw_one"],
               detail="the pop.one runs without the time spent in flush_acks() in the popping thread"),
        Result("pop", "pop.many100_without_flush", "items/s", values["consumer_many_without_flush"],
               baseline=f"raw RPOP with count {MANY}", baseline_samples=values["raw_many"],
               detail="the pop.many100 runs without the time spent in flush_acks() in the popping thread"),
        Result("pop", "pop.one_lua_only", "items/s", values["store_one"],
               baseline="raw RPOP, one per round trip", baseline_samples=values["raw_one"],
               detail="RedisStore.pop(keys, 1): the Lua pop script with acks, no decoding, no flush"),
        Result("pop", "pop.many100_lua_only", "items/s", values["store_many"],
               baseline=f"raw RPOP with count {MANY}", baseline_samples=values["raw_many"],
               detail=f"RedisStore.pop(keys, {MANY}): the Lua pop script with acks, no decoding, no flush"),
    ]


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
    consumer.flush_acks()
    return popped


def _consumer_many(consumer: PoolConsumer) -> int:
    popped = 0
    while items := consumer.pop_many(POOL_TYPE, GROUP, MANY):
        popped += len(items)
    consumer.flush_acks()
    return popped


def _store_loop(store: RedisStore, count: int) -> int:
    keys = store.keys(POOL_TYPE, GROUP)
    popped = 0
    while result := store.pop(keys, count).ids:
        popped += len(result)
    return popped
