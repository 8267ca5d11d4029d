"""Processes killed with SIGKILL at every step of a fill and between a pop and its ack flush.

One fill daemon, a poolctl consumer and a Go-style consumer (RPOP, then
status = 0, no acks) run the whole time against MariaDB and Redis. Meanwhile
the test starts, one after the other, fillers that kill themselves after
their claim is recorded, after it committed, or while their push is in flight,
and consumers that die after popping and before flushing their acks. It
flushes the dead fillers' locks as an operator would and runs reconcile from
time to time while everything else runs. At the end: reconcile --apply,
audit must find nothing wrong, and a drain must deliver every row exactly once.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from poolctl.locks import flush_locks, list_locks
from poolctl.reconcile import reconcile
from poolctl.sql import connect_database
from poolctl.store import RedisStore

from conftest import REDIS_URL, drop_tables, load_rows, mariadb_settings, status_of
from processes import (
    FAULT_DRIVER, WORKERS, Ledger, drain, process_env, read_deliveries, start, start_daemon, stop_daemon, write_config,
)

GROUPS = [1, 2, 3]
ROWS_PER_GROUP = 4000
SIZE, THRESHOLD, BATCH = 60, 20, 10
STEPS = ["claim", "commit", "push", "consumer"]
KILLS_PER_STEP = 15
RECONCILE_EVERY = 6  # runs of the kill loop between two concurrent reconciles


@pytest.mark.slow
def test_kills_lose_nothing_twice_nothing(mariadb_database: str, key_prefix: str, tmp_path: Path) -> None:
    settings = mariadb_settings(mariadb_database, key_prefix, titles={"size": SIZE, "threshold": THRESHOLD, "batch": BATCH})
    db = connect_database(settings)
    store = RedisStore.from_settings(settings)
    drop_tables(db)
    load_rows(db, "titles", [(g, n % 4, f"标题 {g}-{n}") for g in GROUPS for n in range(ROWS_PER_GROUP)])
    config = write_config(tmp_path / "poolctl.toml", SIZE, THRESHOLD, BATCH)
    env = process_env(config, settings.database.url, REDIS_URL, key_prefix,
                      fill_lock_ttl_s="3", acks_batch="50", acks_interval_s="0.2")
    killer_filler_env = {**env, "POOLCTL_POOLS_TITLES_THRESHOLD": str(SIZE - 1)}  # fills whenever a pool is short
    killer_consumer_env = {**env, "POOLCTL_ACKS_BATCH": "100000", "POOLCTL_ACKS_INTERVAL_S": "3600"}
    groups = ",".join(map(str, GROUPS))
    stop_file = tmp_path / "stop"
    daemon_log = tmp_path / "daemon.log"
    outputs = [tmp_path / "live.txt", tmp_path / "go.txt", tmp_path / "killed.txt"]

    daemon = start_daemon(env, daemon_log)
    live = start([str(WORKERS), "consume_until", str(outputs[0]), "titles", groups, str(stop_file), "20", "fallback"],
                 env, tmp_path / "live.log")
    go = start([str(WORKERS), "go_consume", str(outputs[1]), "titles", groups, str(stop_file), "30"],
               env, tmp_path / "go.log")

    rng = random.Random()
    kills: Counter[str] = Counter()
    not_reached: Counter[str] = Counter()
    reconciled = 0
    started = time.monotonic()
    try:
        for run in range(KILLS_PER_STEP * len(STEPS)):
            step = STEPS[run % len(STEPS)]
            seed = str(rng.randrange(1 << 30))
            if step == "consumer":
                args, run_env = [str(FAULT_DRIVER), "consume", str(outputs[2]), "titles", groups, seed], killer_consumer_env
            else:
                args, run_env = [str(FAULT_DRIVER), "fill", step, seed], killer_filler_env
            driver = subprocess.Popen([sys.executable, *args], env=run_env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)
            _, stderr = driver.communicate(timeout=120)
            if driver.returncode == -9:
                kills[step] += 1
            elif driver.returncode == 3:
                not_reached[step] += 1
            else:
                pytest.fail(f"{step} driver exited {driver.returncode}: {stderr[-2000:]}")
            # An operator flushes the locks of the dead filler; a lock a live filler took since stays.
            flush_locks(store, [lock for lock in list_locks(store) if f":{driver.pid}:" in lock.owner])
            if run % RECONCILE_EVERY == RECONCILE_EVERY - 1:
                result = reconcile(settings, store, db, ["titles"], apply=True)
                reconciled += result.restored
        assert daemon.poll() is None, daemon_log.read_text()[-3000:]
    finally:
        stop_file.touch()
        for worker in (live, go):
            worker.wait(timeout=60)
        stop_daemon(daemon, daemon_log)
    loop_seconds = time.monotonic() - started

    leftover = list_locks(store)
    assert leftover == [], f"locks left after every process stopped: {leftover}"
    cli_reconcile = _poolctl(["reconcile", "--apply", "--json"], env)
    assert cli_reconcile.returncode == 0, cli_reconcile.stderr
    restored_at_end = json.loads(cli_reconcile.stdout)["restored"]
    cli_audit = _poolctl(["audit", "--json"], env)
    assert cli_audit.returncode == 0, f"audit found problems:\n{cli_audit.stdout}\n{cli_audit.stderr}"
    assert json.loads(cli_audit.stdout)["errors"] == 0

    drained = drain(settings, store, db, "titles")
    (tmp_path / "drain.txt").write_text("".join(f"{item} drain\n" for item in drained))
    ledger = Ledger(
        rows=len(GROUPS) * ROWS_PER_GROUP,
        delivered=read_deliveries([*outputs, tmp_path / "drain.txt"]),
        statuses=status_of(db, "titles"),
        consumed_value=settings.status.consumed,
    )
    daemon_restored = sum(int(count) for count in re.findall(r"(\d+) missing items restored", daemon_log.read_text()))
    print(
        f"\nfault suite: kills {dict(kills)}, kill point not reached {dict(not_reached)}; "
        f"restored by the daemon {daemon_restored}, by concurrent reconciles {reconciled}, "
        f"by the final reconcile {restored_at_end}; {ledger.summary()}; loop {loop_seconds:.1f}s"
    )
    for step in STEPS:
        assert kills[step] >= KILLS_PER_STEP * 2 // 3, f"only {kills[step]} kills at step {step}: {dict(not_reached)}"
    assert ledger.unknown == []
    assert ledger.duplicates == [], f"{len(ledger.duplicates)} items delivered twice: {ledger.duplicates[:20]}"
    assert ledger.lost == [], f"{len(ledger.lost)} items lost: {ledger.lost[:20]}"
    db.close()
    store.client.close()


def _poolctl(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "poolctl", *args], env=env, capture_output=True, text=True, timeout=120)
