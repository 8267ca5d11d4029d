"""Idle pass: a fill pass over pools that are all full, against one pipelined LLEN of the same pools.

Every pool contains more items than its threshold and has no pending acks,
so a pass only has to find that out. The main rows time Filler.run_pass
over a known list of pools. An info row adds Filler.discover, which
`poolctl fill` runs first to ask SQL for the groups.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis

from poolctl.fill import Filler
from poolctl.keys import PoolKeys
from poolctl.sql import connect_database
from poolctl.store import RedisStore

from bench.core import Result, Scale, Target, run_rounds
from bench.data import create_tables, drop_tables, encode_item, generate_rows
from bench.env import BenchEnv

log = logging.getLogger("bench")

SIZE, THRESHOLD, BATCH = 10, 2, 10
ITEMS_PER_POOL = 5
QUEUED = 2
PIPELINE_CHUNK = 2000


def run(env: BenchEnv, scale: Scale) -> list[Result]:
    small, large = scale.idle_pools
    pools = {
        f"idle{count}": {"table": f"idle_{count}", "text_column": "title", "text_type": "short",
                         "size": SIZE, "threshold": THRESHOLD, "batch": BATCH}
        for count in (small, large)
    }
    settings, _ = env.settings("idle", pools)
    create_tables(settings)
    for count in (small, large):
        # One queued row per group, so that discover finds every pool.
        generate_rows(env, f"idle_{count}", "group_id, batch_id, status, title",
                      f"seq, 1, {QUEUED}, CONCAT('标题', seq)", count)

    store = RedisStore.from_settings(settings)
    db = connect_database(settings)
    client = redis.Redis.from_url(settings.redis.url)
    targets = {count: [store.keys(f"idle{count}", group) for group in range(1, count + 1)] for count in (small, large)}
    try:
        for count in (small, large):
            _fill_pools(client, targets[count])
        filler = Filler(settings, store, db)

        def timed(label: str, action: Callable[[], object]) -> Callable[[], float]:
            def once() -> float:
                with env.stopwatch(label).running() as watch:
                    action()
                return watch.seconds * 1000
            return once

        variants = {}
        for count in (small, large):
            variants[f"pass{count}"] = timed(f"idle-pass-{count}", _checked_pass(filler, targets[count]))
            variants[f"llen{count}"] = timed(f"idle-llen-{count}", _pipelined_llen(client, targets[count]))
        variants["cli"] = timed(f"idle-cli-{small}", lambda: filler.run_pass(filler.discover([f"idle{small}"])))
        variants["one_by_one"] = timed(f"idle-one-by-one-{small}", _llen_one_by_one(client, targets[small]))
        values = run_rounds("idle", variants, scale.warmup, scale.fast_rounds)
    finally:
        db.close()
        store.client.close()
        client.close()
        drop_tables(env, [spec["table"] for spec in pools.values()])
        env.delete_keys(settings.redis.key_prefix)

    per_pool_small = [value * 1000 / small for value in values[f"pass{small}"]]
    per_pool_large = [value * 1000 / large for value in values[f"pass{large}"]]
    setup = f"pools of size {SIZE}, threshold {THRESHOLD}, holding {ITEMS_PER_POOL} items each"
    return [
        Result("idle", "idle.pass", "ms", values[f"pass{small}"],
               baseline=f"one pipelined LLEN of the {small:,} pool keys", baseline_samples=values[f"llen{small}"],
               target=Target("<=", 1.5), detail=f"Filler.run_pass over {small:,} full pools; {setup}"),
        Result("idle", "idle.per_pool_growth", "us/pool", per_pool_large,
               baseline=f"per-pool cost of the pass over {small:,} pools", baseline_samples=per_pool_small,
               target=Target("<=", 1.5), detail=f"per-pool cost of Filler.run_pass over {large:,} full pools"),
        Result("idle", "idle.pass_large", "ms", values[f"pass{large}"],
               baseline=f"one pipelined LLEN of the {large:,} pool keys", baseline_samples=values[f"llen{large}"],
               detail=f"Filler.run_pass over {large:,} full pools"),
        Result("idle", "idle.cli_pass", "ms", values["cli"],
               baseline=f"one pipelined LLEN of the {small:,} pool keys", baseline_samples=values[f"llen{small}"],
               detail=f"code path of `poolctl fill`: Filler.discover (SQL) + run_pass, {small:,} groups"),
        Result("idle", "idle.llen_one_by_one", "ms", values["one_by_one"],
               baseline=f"one pipelined LLEN of the {small:,} pool keys", baseline_samples=values[f"llen{small}"],
               detail=f"{small:,} LLEN calls, one round trip each, for scale"),
    ]


def _fill_pools(client: redis.Redis, targets: list[PoolKeys]) -> None:
    pipe = client.pipeline(transaction=False)
    for index, keys in enumerate(targets, start=1):
        pipe.lpush(keys.pool, *[encode_item(index * 100 + n, "标题") for n in range(ITEMS_PER_POOL)])
        if index % PIPELINE_CHUNK == 0:
            pipe.execute()
    pipe.execute()


def _checked_pass(filler: Filler, targets: list[PoolKeys]) -> Callable[[], None]:
    def run_pass() -> None:
        result = filler.run_pass(targets)
        if result.fills or result.acks_flushed or result.wrong_type:
            raise RuntimeError(f"an idle pass did work: {len(result.fills)} fills, {result.acks_flushed} acks flushed")
    return run_pass


def _pipelined_llen(client: redis.Redis, targets: list[PoolKeys]) -> Callable[[], None]:
    def llen_all() -> None:
        pipe = client.pipeline(transaction=False)
        for keys in targets:
            pipe.llen(keys.pool)
        pipe.execute()
    return llen_all


def _llen_one_by_one(client: redis.Redis, targets: list[PoolKeys]) -> Callable[[], None]:
    def llen_each() -> None:
        for keys in targets:
            client.llen(keys.pool)
    return llen_each
