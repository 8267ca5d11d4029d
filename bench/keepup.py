"""Keeping up: consumers drain one pool at a fixed rate while `poolctl fill --watch` runs as its own process.

The fill daemon is the real console script with the default pool and
timing settings (size 5000, threshold 1000, batch 500, interval 5 s). Two
consumer processes pop with PoolConsumer.pop_many, paced to half the rate
each. Every pop that returns fewer items than requested, while SQL still
has available rows, is a pop that found the pool empty or nearly so.

Each round starts a new fill daemon, waits until its first pass has filled
the pool, and starts the consumers START_DELAY_S later. So every round
starts the same way: a full pool and a daemon that has just gone to sleep
for its interval. After the round the daemon is stopped and the pool is
reset: the pool list is deleted and its queued rows become available again.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from poolctl.config import Settings

from bench.core import Result, Scale, Target
from bench.data import create_tables, drop_tables, generate_rows
from bench.env import BenchEnv, poolctl_command, stop_child

log = logging.getLogger("bench")

POOL_TYPE = "titles"
TABLE = "keepup_titles"
GROUP = 1
CONSUMERS = 2
CHUNK = 25  # items per pop_many call
START_DELAY_S = 1.5  # lets the consumer processes import and connect before the clock starts
FULL_WAIT_S = 60.0
FULL_POLL_S = 0.01
WATCH_LOG = "keepup-watch.log"
LENGTH_SAMPLE_S = 0.02
SPARE_ROWS = 20_000  # beyond what the rounds can drain, so that SQL never runs out mid-round
EMPTY_TARGET = Target("<=", 0, of="max")


def run(env: BenchEnv, scale: Scale) -> list[Result]:
    settings, config = env.settings("keepup", {POOL_TYPE: {"table": TABLE, "text_column": "title", "text_type": "short"}})
    spec = settings.pools[POOL_TYPE]
    rounds = scale.warmup + scale.keepup_rounds
    rows = int(scale.keepup_rate * scale.keepup_seconds * rounds) + spec.size + SPARE_ROWS
    create_tables(settings)
    # Titles of about 28 characters, like the sample generator's, made by the server in a second.
    generate_rows(env, TABLE, "group_id, batch_id, status, title",
                  f"{GROUP}, 1 + seq * 5 div {rows}, 1, CONCAT('标题', seq, ' ', REPEAT('城市发展', 5))", rows)

    empties: list[float] = []
    late_empties: list[float] = []
    delivered: list[float] = []
    min_lengths: list[float] = []
    per_second: list[int] = []
    try:
        for index in range(rounds):
            outcome = _round(env, settings, config, scale)
            if index >= scale.warmup:
                empties.append(outcome["shortfalls"])
                late_empties.append(outcome["late_shortfalls"])
                delivered.append(outcome["rate"])
                min_lengths.append(outcome["min_length"])
                per_second = outcome["per_second"]
    finally:
        drop_tables(env, [TABLE])
        env.delete_keys(settings.redis.key_prefix)

    interval = settings.fill.interval_s
    setup = (f"`poolctl fill --watch` (interval {interval:g}s), pool size {spec.size}, threshold {spec.threshold}, "
             f"batch {spec.batch}; {CONSUMERS} consumers x pop_many({CHUNK}) for {scale.keepup_seconds:g}s")
    return [
        Result("keepup", "keepup.empty_pops", "pops", empties, target=EMPTY_TARGET,
               detail=f"pops that got fewer items than requested, per round; {setup}; "
               f"last round, per second: {per_second}"),
        Result("keepup", "keepup.delivered", "items/s", delivered,
               baseline="the requested drain rate", baseline_samples=[float(scale.keepup_rate)] * len(delivered),
               detail="items the consumers received; below the requested rate when pops came back short, "
               "or when the consumers could not pop that fast"),
        Result("keepup", "keepup.empty_pops_late", "pops", late_empties,
               detail=f"of those, pops after the first {interval:g}s (the fill interval) of a round"),
        Result("keepup", "keepup.min_length", "items", min_lengths,
               detail=f"shortest pool length seen, sampled every {LENGTH_SAMPLE_S * 1000:g} ms"),
    ]


def _round(env: BenchEnv, settings: Settings, config: Path, scale: Scale) -> dict[str, Any]:
    spec = settings.pools[POOL_TYPE]
    key = f"{settings.redis.key_prefix}{POOL_TYPE}:pool:{GROUP}"
    watch = env.spawn([*poolctl_command(), "fill", "--watch", "--pool", POOL_TYPE], env.child_env(config), WATCH_LOG)
    try:
        _wait_until_full(env, key, spec.size, watch)
        outcome = _drain(env, settings, config, scale, key)
    finally:
        stop_child(watch)
        env.forget(watch)
    if watch.returncode != 0:
        raise RuntimeError(f"`poolctl fill --watch` exited {watch.returncode}: {env.log_tail(WATCH_LOG)}")

    # The daemon flushed every ack before it stopped, so the queued rows are the items left in the pool.
    env.redis.unlink(key)
    env.execute(f"UPDATE `{TABLE}` SET status = 1 WHERE status = 2")
    return outcome


def _drain(env: BenchEnv, settings: Settings, config: Path, scale: Scale, key: str) -> dict[str, Any]:
    """Run the consumers for one round while sampling the pool length; return what they saw."""
    spec = settings.pools[POOL_TYPE]

    start_at = time.time() + START_DELAY_S
    rate = scale.keepup_rate / CONSUMERS
    argv = [sys.executable, "-m", "bench.workers", "drain", POOL_TYPE, str(GROUP), str(rate),
            str(scale.keepup_seconds), str(start_at), str(CHUNK)]
    consumers = [env.spawn(argv, env.child_env(config), f"keepup-consumer{n}.log", stdout=subprocess.PIPE)  # type: ignore[arg-type]
                 for n in range(CONSUMERS)]
    min_length = spec.size
    while any(consumer.poll() is None for consumer in consumers):
        if time.time() >= start_at:
            min_length = min(min_length, env.redis.llen(key))
        time.sleep(LENGTH_SAMPLE_S)

    reports = []
    for n, consumer in enumerate(consumers):
        output = consumer.stdout.read() if consumer.stdout else b""
        env.forget(consumer)
        if consumer.returncode != 0:
            raise RuntimeError(f"consumer {n} exited {consumer.returncode}: {env.log_tail(f'keepup-consumer{n}.log')}")
        reports.append(json.loads(output))

    available = env.query(f"SELECT COUNT(*) FROM `{TABLE}` WHERE group_id = %s AND status = 1", (GROUP,))[0][0]
    if available == 0:
        raise RuntimeError(f"SQL ran out of available rows during the round; raise SPARE_ROWS in {__name__}")
    late_from = int(settings.fill.interval_s)
    per_second = [sum(counts) for counts in zip(*(report["shortfalls_per_second"] for report in reports))]
    log.info("keepup: short pops per second of the round: %s", per_second)
    return {
        "per_second": per_second,
        "shortfalls": sum(per_second),
        "late_shortfalls": sum(sum(report["shortfalls_per_second"][late_from:]) for report in reports),
        "rate": sum(report["items"] / report["seconds"] for report in reports),
        "min_length": min_length,
    }


def _wait_until_full(env: BenchEnv, key: str, size: int, watch: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + FULL_WAIT_S
    while env.redis.llen(key) < size:
        if watch.poll() is not None:
            raise RuntimeError(f"`poolctl fill --watch` exited {watch.returncode}: {env.log_tail(WATCH_LOG)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the fill daemon did not fill the pool within {FULL_WAIT_S:g}s: "
                               f"{env.log_tail(WATCH_LOG)}")
        time.sleep(FULL_POLL_S)
