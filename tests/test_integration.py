"""Whole processes against the real MariaDB and Redis: concurrent fillers and consumers."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from poolctl.fill import Filler
from poolctl.sql import connect_database
from poolctl.store import RedisStore

from conftest import REDIS_URL, drop_tables, load_rows, mariadb_settings, status_of

WORKERS = Path(__file__).parent / "workers.py"
GROUPS = [1, 2, 3]
ROWS_PER_GROUP = 2000
SIZE, THRESHOLD, BATCH = 200, 60, 40


def process_env(database: str, key_prefix: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("POOLCTL_")}
    env.update(
        POOLCTL_DATABASE_URL=f"mysql://root@127.0.0.1:3306/{database}",
        POOLCTL_REDIS_URL=REDIS_URL,
        POOLCTL_REDIS_KEY_PREFIX=key_prefix,
        POOLCTL_POOLS_TITLES_SIZE=str(SIZE),
        POOLCTL_POOLS_TITLES_THRESHOLD=str(THRESHOLD),
        POOLCTL_POOLS_TITLES_BATCH=str(BATCH),
        POOLCTL_FILL_LOCK_TTL_S="5",
        POOLCTL_ACKS_BATCH="50",
        POOLCTL_ACKS_INTERVAL_S="0.2",
    )
    return env


@pytest.mark.slow
def test_two_fillers_four_consumers_no_duplicates(mariadb_database: str, key_prefix: str, tmp_path: Path) -> None:
    settings = mariadb_settings(mariadb_database, key_prefix, titles={"size": SIZE, "threshold": THRESHOLD, "batch": BATCH})
    db = connect_database(settings)
    drop_tables(db)
    load_rows(db, "titles", [(group, n % 4, f"标题 {group}-{n}") for group in GROUPS for n in range(ROWS_PER_GROUP)])
    env = process_env(mariadb_database, key_prefix)

    fillers = [
        subprocess.Popen([sys.executable, "-m", "poolctl", "fill", "--watch", "--pool", "titles", "--interval", "0.05", "-q"],
                         env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    time.sleep(1.0)
    outputs = [tmp_path / f"consumer{n}.txt" for n in range(4)]
    consumers = [
        subprocess.Popen([sys.executable, str(WORKERS), "consume", str(out), "titles", ",".join(map(str, GROUPS)), "1100",
                          *(["fallback"] if n % 2 else [])], env=env, stderr=subprocess.PIPE, text=True)
        for n, out in enumerate(outputs)
    ]
    for consumer in consumers:
        _, stderr = consumer.communicate(timeout=240)
        assert consumer.returncode == 0, stderr
    for filler in fillers:
        filler.send_signal(signal.SIGTERM)
    for filler in fillers:
        _, stderr = filler.communicate(timeout=60)
        print(stderr)
        assert filler.returncode == 0, stderr

    delivered = [int(line.split()[0]) for out in outputs for line in out.read_text().splitlines()]
    sources = Counter(line.split()[1] for out in outputs for line in out.read_text().splitlines())
    duplicates = [item for item, times in Counter(delivered).items() if times > 1]
    assert duplicates == [], f"{len(duplicates)} items delivered twice"
    assert len(delivered) >= 4000, f"only {len(delivered)} pops"
    assert sources["pool"] > 0 and sources["sql"] > 0, sources

    store = RedisStore.from_settings(settings)
    statuses = status_of(db, "titles")
    status = settings.status
    assert {i for i in delivered if statuses[i] != status.consumed} == set(), "delivered but not consumed"
    assert {i for i, s in statuses.items() if s == status.consumed} == set(delivered), "consumed but never delivered"

    pooled: Counter[int] = Counter()
    for group in GROUPS:
        keys = store.keys("titles", group)
        items = [json.loads(raw)["id"] for raw in store.client.lrange(keys.pool, 0, -1)]
        assert len(items) <= SIZE, f"group {group} pool holds {len(items)} > {SIZE}"
        pooled.update(items)
        assert store.client.exists(keys.lock) == 0, f"lock left on group {group}"
        assert store.client.llen(keys.acks) == 0, f"acks left on group {group}"
        left = [int(x) for x in store.client.smembers(keys.claiming)]
        assert store.client.scard(keys.claiming) == 0, f"claim record left on group {group}: {[statuses[i] for i in left]}"
    assert [i for i, times in pooled.items() if times > 1] == [], "an item sits in a pool twice"
    queued = {i for i, s in statuses.items() if s == status.queued}
    assert queued == set(pooled), "queued rows and pooled items differ"
    others = {i for i, s in statuses.items() if s not in (status.consumed, status.queued)}
    assert {statuses[i] for i in others} <= {status.available}
    db.close()


def test_pool_readable_by_plain_rpop_consumer(mariadb_database: str, real_redis) -> None:  # type: ignore[no-untyped-def]
    """With the default key names, a consumer that knows only `{type}:pool:{group}`, RPOP and the JSON reads a pool."""
    pool_type = f"gocompat{secrets.token_hex(3)}"
    settings = mariadb_settings(mariadb_database, "", **{pool_type: {"table": pool_type, "text_column": "title",
                                                                     "size": 20, "threshold": 5, "batch": 10}})
    db = connect_database(settings)
    store = RedisStore.from_settings(settings)
    try:
        load_rows(db, pool_type, [(7, 1, "第一个标题"), (7, 1, "second title")])
        filler = Filler(settings, store, db)
        filler.run_pass(filler.discover([pool_type]))
        raw = [real_redis.rpop(f"{pool_type}:pool:7") for _ in range(2)]
        items = [json.loads(value) for value in raw]
        assert [item["text"] for item in items] == ["第一个标题", "second title"]
        assert all(set(item) == {"id", "text"} and isinstance(item["id"], int) for item in items)
        assert real_redis.rpop(f"{pool_type}:pool:7") is None
    finally:
        # Every key of the pool, the sentinel and rate counters included: this test uses no key prefix.
        for key in list(real_redis.scan_iter(f"{pool_type}:pool:7*")):
            real_redis.delete(key)
        db.execute(f"DROP TABLE IF EXISTS `{pool_type}`")
        db.close()
