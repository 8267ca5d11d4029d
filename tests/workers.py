"""Processes that the concurrency and fault tests start: consumers that record what they got.

    python tests/workers.py consume OUT_FILE POOL_TYPE GROUPS TARGET [fallback]
    python tests/workers.py consume_until OUT_FILE POOL_TYPE GROUPS STOP_FILE PAUSE_MS [fallback]
    python tests/workers.py go_consume OUT_FILE POOL_TYPE GROUPS STOP_FILE PAUSE_MS

Settings come from POOLCTL_* environment variables like any poolctl process.
Each line of OUT_FILE is one delivered item: its id and where it came from.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

from poolctl.config import load_settings
from poolctl.consumer import PoolConsumer
from poolctl.errors import ServiceUnavailable
from poolctl.sql import connect_database
from poolctl.store import RedisStore

OUTAGE_PAUSE_S = 0.05


def consume(out_path: str, pool_type: str, groups: list[int], target: int, fallback: bool) -> None:
    """Pop until target items were delivered or every group stays empty for two seconds."""
    rng = random.Random()
    delivered = 0
    idle_since: float | None = None
    with PoolConsumer() as consumer, open(out_path, "w", buffering=1) as out:
        while delivered < target:
            group = rng.choice(groups)
            if fallback and rng.random() < 0.2:
                found = [item] if (item := consumer.pop_with_fallback(pool_type, group)) else []
            else:
                found = consumer.pop_many(pool_type, group, rng.randint(1, 5))
            for item in found:
                out.write(f"{item.id} {item.source}\n")
            delivered += len(found)
            if found:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > 2.0:
                break
            else:
                time.sleep(0.005)


def consume_until(out_path: str, pool_type: str, groups: list[int], stop_file: Path, pause_s: float, fallback: bool) -> None:
    """Pop until stop_file exists, riding out Redis and SQL outages; pause up to pause_s between pops."""
    rng = random.Random()
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    with PoolConsumer() as consumer:
        while not stop_file.exists():
            group = rng.choice(groups)
            try:
                if fallback and rng.random() < 0.3:
                    found = [item] if (item := consumer.pop_with_fallback(pool_type, group)) else []
                else:
                    found = consumer.pop_many(pool_type, group, rng.randint(1, 5))
            except ServiceUnavailable:
                time.sleep(OUTAGE_PAUSE_S)
                continue
            if found:
                os.write(out, "".join(f"{item.id} {item.source}\n" for item in found).encode())
            time.sleep(rng.uniform(0, pause_s))


def go_consume(out_path: str, pool_type: str, groups: list[int], stop_file: Path, pause_s: float) -> None:
    """Behave like the Go service: RPOP the JSON, use it, then set status = 0 a few milliseconds later, no acks."""
    import json

    rng = random.Random()
    settings = load_settings()
    store = RedisStore.from_settings(settings)
    db = connect_database(settings)
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    while not stop_file.exists():
        keys = store.keys(pool_type, rng.choice(groups))
        try:
            raw = store.client.rpop(keys.pool)
        except Exception:  # any Redis failure: the Go service retries later too
            time.sleep(OUTAGE_PAUSE_S)
            continue
        if raw is not None:
            item_id = json.loads(raw)["id"]
            os.write(out, f"{item_id} go\n".encode())
            time.sleep(rng.uniform(0.001, 0.005))
            while True:
                try:
                    db.mark_consumed(pool_type, [item_id])
                    break
                except ServiceUnavailable:
                    time.sleep(OUTAGE_PAUSE_S)
        time.sleep(rng.uniform(0, pause_s))
    db.close()


if __name__ == "__main__":
    command, out_file, pool, groups_arg, *rest = sys.argv[1:]
    group_ids = [int(g) for g in groups_arg.split(",")]
    if command == "consume":
        consume(out_file, pool, group_ids, int(rest[0]), fallback="fallback" in rest)
    elif command == "consume_until":
        consume_until(out_file, pool, group_ids, Path(rest[0]), int(rest[1]) / 1000, fallback="fallback" in rest)
    elif command == "go_consume":
        go_consume(out_file, pool, group_ids, Path(rest[0]), int(rest[1]) / 1000)
    else:
        raise SystemExit(f"unknown worker command {command}")
