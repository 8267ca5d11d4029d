"""Outages and shutdowns with real processes: Redis restarted, SQL connections killed, signals.

The Redis tests start their own redis-server on a free port, without
persistence, and stop only that process. The MariaDB tests never stop the
server: they kill connections of their own test database with KILL
CONNECTION from a separate root connection.
"""

from __future__ import annotations

import json
import logging
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
import redis

from poolctl.audit import audit
from poolctl.consumer import PoolConsumer
from poolctl.locks import flush_locks, list_locks
from poolctl.reconcile import reconcile
from poolctl.sql import connect_database
from poolctl.store import RedisStore

from conftest import MARIADB_ROOT, REDIS_URL, drop_tables, load_rows, make_settings, mariadb_settings, status_of
from processes import (
    WORKERS, Ledger, drain, process_env, read_deliveries, start, start_daemon, stop_daemon, wait_for, write_config,
)

GROUPS = [1, 2, 3]


class ThrowawayRedis:
    """A redis-server on a free local port, without persistence, that a test may stop and start again."""

    def __init__(self, log_file: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=log, stderr=log,
            )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        wait_for(lambda: _answers(client), 10, f"redis-server on port {self.port}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=20)
        self.process = None


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis(tmp_path / "redis-server.log")
    server.start()
    yield server
    server.stop(signal.SIGKILL)


def load_titles(database: str, key_prefix: str, redis_url: str, rows_per_group: int, size: int, threshold: int,
                batch: int):  # type: ignore[no-untyped-def]
    settings = mariadb_settings(database, key_prefix, titles={"size": size, "threshold": threshold, "batch": batch})
    settings = make_settings(settings, redis={"url": redis_url, "socket_timeout_s": 1.0, "connect_timeout_s": 1.0})
    db = connect_database(settings)
    drop_tables(db)
    load_rows(db, "titles", [(g, n % 3, f"标题 {g}-{n}") for g in GROUPS for n in range(rows_per_group)])
    return settings, db


@pytest.mark.slow
def test_redis_restart_daemon_recovers(mariadb_database: str, key_prefix: str, tmp_path: Path,
                                       throwaway_redis: ThrowawayRedis) -> None:
    settings, db = load_titles(mariadb_database, key_prefix, throwaway_redis.url, 3000, 80, 30, 20)
    config = write_config(tmp_path / "poolctl.toml", 80, 30, 20)
    env = process_env(config, settings.database.url, throwaway_redis.url, key_prefix, fill_lock_ttl_s="2",
                      acks_batch="20", acks_interval_s="0.2", redis_socket_timeout_s="1", redis_connect_timeout_s="1")
    groups = ",".join(map(str, GROUPS))
    stop_file = tmp_path / "stop"
    daemon_log = tmp_path / "daemon.log"
    outputs = [tmp_path / "plain.txt", tmp_path / "fallback.txt", tmp_path / "go.txt"]
    daemon = start_daemon(env, daemon_log)
    workers = [
        start([str(WORKERS), "consume_until", str(outputs[0]), "titles", groups, str(stop_file), "10"], env,
              tmp_path / "plain.log"),
        start([str(WORKERS), "consume_until", str(outputs[1]), "titles", groups, str(stop_file), "10", "fallback"],
              env, tmp_path / "fallback.log"),
        start([str(WORKERS), "go_consume", str(outputs[2]), "titles", groups, str(stop_file), "20"], env,
              tmp_path / "go.log"),
    ]
    outages = [signal.SIGTERM, signal.SIGKILL]
    try:
        for number, how in enumerate(outages, start=1):
            time.sleep(2.0)
            throwaway_redis.stop(how)
            time.sleep(2.0)
            throwaway_redis.start()
            wait_for(lambda n=number: daemon_log.read_text().count("Redis is back") >= n, 60, "the daemon to see Redis")
            wait_for(lambda n=number: daemon_log.read_text().count("had no sentinel") >= n, 60, "the data-loss reconcile")
        time.sleep(2.0)
        assert daemon.poll() is None, daemon_log.read_text()[-3000:]
    finally:
        stop_file.touch()
        for worker in workers:
            worker.wait(timeout=60)
        stop_daemon(daemon, daemon_log)

    log_text = daemon_log.read_text()
    assert log_text.count("Redis is unavailable") == len(outages), log_text[-3000:]
    assert log_text.count("Redis is back") == len(outages), log_text[-3000:]
    store = RedisStore.from_settings(settings)
    result = audit(settings, store, db, ["titles"])
    assert result.ok, [finding.text for finding in result.findings]

    drained = drain(settings, store, db, "titles")
    (tmp_path / "drain.txt").write_text("".join(f"{item}\n" for item in drained))
    ledger = Ledger(len(GROUPS) * 3000, read_deliveries([*outputs, tmp_path / "drain.txt"]), status_of(db, "titles"),
                    settings.status.consumed)
    restored = sum(int(count) for count in re.findall(r"reconciled before filling, (\d+) missing items restored", log_text))
    print(f"\nredis restarts: {len(outages)}, items restored after data loss {restored}; {ledger.summary()}")
    assert ledger.unknown == []
    assert ledger.duplicates == [], f"{len(ledger.duplicates)} items delivered twice: {ledger.duplicates[:20]}"
    assert ledger.lost == [], f"{len(ledger.lost)} items lost: {ledger.lost[:20]}"
    db.close()


def _kill_connections(database: str) -> int:
    """Kill every connection to the test database from a separate root connection; return how many."""
    admin = pymysql.connect(**MARIADB_ROOT, autocommit=True)
    try:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()", [database]
            )
            victims = [row[0] for row in cursor.fetchall()]
            for victim in victims:
                try:
                    cursor.execute(f"KILL CONNECTION {int(victim)}")
                except pymysql.err.OperationalError:
                    pass  # it closed by itself in between
        return len(victims)
    finally:
        admin.close()


@pytest.mark.slow
def test_sql_connections_killed(mariadb_database: str, key_prefix: str, tmp_path: Path) -> None:
    settings, db = load_titles(mariadb_database, key_prefix, REDIS_URL, 2000, 80, 30, 20)
    config = write_config(tmp_path / "poolctl.toml", 80, 30, 20)
    env = process_env(config, settings.database.url, REDIS_URL, key_prefix, fill_lock_ttl_s="2",
                      acks_batch="20", acks_interval_s="0.2")
    groups = ",".join(map(str, GROUPS))
    stop_file = tmp_path / "stop"
    daemon_log = tmp_path / "daemon.log"
    outputs = [tmp_path / "plain.txt", tmp_path / "go.txt"]
    daemon = start_daemon(env, daemon_log)
    # No fallback consumer here: a fallback pop whose COMMIT is killed may have
    # consumed its row without returning it, and this test counts every row.
    workers = [
        start([str(WORKERS), "consume_until", str(outputs[0]), "titles", groups, str(stop_file), "10"], env,
              tmp_path / "plain.log"),
        start([str(WORKERS), "go_consume", str(outputs[1]), "titles", groups, str(stop_file), "20"], env,
              tmp_path / "go.log"),
    ]
    killed = 0
    rng = random.Random()
    try:
        time.sleep(1.0)
        for _ in range(15):
            killed += _kill_connections(mariadb_database)
            time.sleep(rng.uniform(0.1, 0.4))
        time.sleep(1.0)
        assert daemon.poll() is None, daemon_log.read_text()[-3000:]
    finally:
        stop_file.touch()
        for worker in workers:
            worker.wait(timeout=60)
        stop_daemon(daemon, daemon_log)

    log_text = daemon_log.read_text()
    assert "reconnected after this error" in log_text, log_text[-3000:]
    store = RedisStore.from_settings(settings)
    restored = reconcile(settings, store, db, ["titles"], apply=True).restored
    result = audit(settings, store, db, ["titles"])
    assert result.ok, [finding.text for finding in result.findings]
    drained = drain(settings, store, db, "titles")
    (tmp_path / "drain.txt").write_text("".join(f"{item}\n" for item in drained))
    ledger = Ledger(len(GROUPS) * 2000, read_deliveries([*outputs, tmp_path / "drain.txt"]), status_of(db, "titles"),
                    settings.status.consumed)
    print(f"\nconnections killed: {killed}, restored by the final reconcile {restored}; {ledger.summary()}")
    assert killed >= 15
    assert ledger.duplicates == [], f"{len(ledger.duplicates)} items delivered twice: {ledger.duplicates[:20]}"
    assert ledger.lost == [], f"{len(ledger.lost)} items lost: {ledger.lost[:20]}"
    db.close()
    store.client.close()


def test_sql_reconnects_after_kill(mariadb_redis, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    db = mariadb_redis.db
    load_rows(db, "titles", [(1, 1, "a"), (1, 1, "b")])
    database = db.url.rsplit("/", 1)[1]
    assert _kill_connections(database) >= 1
    with caplog.at_level(logging.INFO, logger="poolctl.sql.mysql"):
        assert db.groups("titles") == [1]
    assert "reconnected after this error: lost the connection to" in caplog.text
    _kill_connections(database)
    assert len(db.claim("titles", 1, 5)) == 2  # a transaction is retried on a new connection too


def test_pop_fallback_while_redis_down(mariadb_database: str, key_prefix: str, tmp_path: Path) -> None:
    settings, db = load_titles(mariadb_database, key_prefix, REDIS_URL, 10, 50, 10, 20)
    config = write_config(tmp_path / "poolctl.toml", 50, 10, 20)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    env = process_env(config, settings.database.url, f"redis://127.0.0.1:{dead_port}/0", key_prefix)
    result = subprocess.run([sys.executable, "-m", "poolctl", "pop", "titles", "--group", "2", "--count", "3",
                             "--fallback", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    items = json.loads(result.stdout)["items"]
    assert [item["source"] for item in items] == ["sql", "sql", "sql"]
    assert result.stderr.count("Redis unreachable, popping from SQL until it is back") == 1, result.stderr
    statuses = status_of(db, "titles")
    assert {statuses[item["id"]] for item in items} == {settings.status.consumed}
    plain = subprocess.run([sys.executable, "-m", "poolctl", "pop", "titles", "--group", "2"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode == 4, plain.stderr
    assert f"redis://127.0.0.1:{dead_port}/0" in plain.stderr
    db.close()


def _pooled_ids(store: RedisStore, group: int) -> list[int]:
    return [json.loads(raw)["id"] for raw in store.client.lrange(store.keys("titles", group).pool, 0, -1)]


@pytest.mark.slow
def test_sigterm_finishes_batch_and_exits(mariadb_database: str, key_prefix: str, tmp_path: Path) -> None:
    """SIGTERM in the middle of long fills: exit 0, no lock left, acks flushed, nothing to reconcile."""
    settings, db = load_titles(mariadb_database, key_prefix, REDIS_URL, 2500, 2000, 1000, 5)
    config = write_config(tmp_path / "poolctl.toml", 2000, 1000, 5)
    env = process_env(config, settings.database.url, REDIS_URL, key_prefix)
    store = RedisStore.from_settings(settings)
    rng = random.Random()
    for run in range(4):
        daemon_log = tmp_path / f"daemon{run}.log"
        daemon = start_daemon(env, daemon_log, interval="0.05")
        wait_for(lambda: any(_pooled_ids(store, group) for group in GROUPS), 30, "the first push")
        consumer = PoolConsumer(make_settings(settings, acks={"batch": 100_000, "interval_s": 3600.0}), store=store, db=db)
        popped = [item.id for group in GROUPS for item in consumer.pop_many("titles", group, 3)]  # acks stay in Redis
        time.sleep(rng.uniform(0.0, 0.5))
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0, daemon_log.read_text()[-3000:]

        assert list_locks(store) == [], daemon_log.read_text()[-2000:]
        for group in GROUPS:
            assert store.client.llen(store.keys("titles", group).acks) == 0
        statuses = status_of(db, "titles")
        assert {statuses[item] for item in popped} == {settings.status.consumed}
        result = audit(settings, store, db, ["titles"])
        assert result.ok, [finding.text for finding in result.findings]
        assert "received: finishing the batch in hand" in daemon_log.read_text()
        for group in GROUPS:  # drain the pools so that the next run fills again
            store.client.delete(store.keys("titles", group).pool)
        db.restore("titles", sorted(i for i, s in status_of(db, "titles").items() if s == settings.status.queued))
    db.close()
    store.client.close()


@pytest.mark.slow
def test_second_signal_exits_at_once(mariadb_database: str, key_prefix: str, tmp_path: Path) -> None:
    """Two signals: exit at once with code 1, and whatever was in hand is found and restored by reconcile."""
    settings, db = load_titles(mariadb_database, key_prefix, REDIS_URL, 2500, 2000, 1000, 5)
    config = write_config(tmp_path / "poolctl.toml", 2000, 1000, 5)
    env = process_env(config, settings.database.url, REDIS_URL, key_prefix)
    store = RedisStore.from_settings(settings)
    rng = random.Random()
    for run in range(4):
        daemon_log = tmp_path / f"daemon{run}.log"
        daemon = start_daemon(env, daemon_log, interval="0.05")
        wait_for(lambda: any(_pooled_ids(store, group) for group in GROUPS), 30, "the first push")
        time.sleep(rng.uniform(0.0, 0.3))
        daemon.send_signal(signal.SIGTERM)
        time.sleep(rng.uniform(0.0, 0.01))
        daemon.send_signal(signal.SIGINT)
        started = time.monotonic()
        returncode = daemon.wait(timeout=60)
        # 0: the first signal's shutdown finished before the second arrived;
        # 1: the second signal's exit; -SIGINT: it arrived while the
        # interpreter was already tearing down, with default handlers again.
        assert returncode in (0, 1, -signal.SIGINT), daemon_log.read_text()[-3000:]
        assert time.monotonic() - started < 5.0

        flush_locks(store, list_locks(store))  # the locks of a process that is gone
        reconcile(settings, store, db, ["titles"], apply=True)
        result = audit(settings, store, db, ["titles"])
        assert result.ok, [finding.text for finding in result.findings]
        for group in GROUPS:
            store.client.delete(store.keys("titles", group).pool)
        db.restore("titles", sorted(i for i, s in status_of(db, "titles").items() if s == settings.status.queued))
    db.close()
    store.client.close()


def test_watch_logs_outage_once_each_way(sqlite_fake, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """Redis down for several passes: one warning when it goes, one when it is back, and passes resume."""
    from poolctl import watch as watch_module
    from poolctl.errors import RedisUnavailable
    from poolctl.watch import Watcher

    backend = sqlite_fake
    load_rows(backend.db, "titles", [(1, 1, f"item {n}") for n in range(100)])
    stop = threading.Event()
    settings = make_settings(backend.settings, fill={"interval_s": 0.01, "min_interval_s": 0.01})
    watcher = Watcher(settings, backend.store, backend.db, pool_types=["titles"], stop=stop)
    real_lengths = backend.store.lengths
    real_ping = backend.store.ping
    down = {"until": 4}
    calls = {"lengths": 0}

    def flaky_lengths(pools):  # type: ignore[no-untyped-def]
        calls["lengths"] += 1
        if calls["lengths"] <= 1:
            return real_lengths(pools)
        if down["until"] > 0:
            raise RedisUnavailable("Redis at redis://test is unreachable: connection refused", "")
        if calls["lengths"] > 8:
            stop.set()
        return real_lengths(pools)

    def flaky_ping() -> None:
        down["until"] -= 1
        if down["until"] > 0:
            raise RedisUnavailable("Redis at redis://test is unreachable: connection refused", "")
        real_ping()

    backend.store.lengths = flaky_lengths
    backend.store.ping = flaky_ping
    watch_module.BACKOFF_START_S, saved = 0.01, watch_module.BACKOFF_START_S
    try:
        with caplog.at_level(logging.INFO, logger="poolctl"):
            watcher.run()
    finally:
        watch_module.BACKOFF_START_S = saved
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0] == ("Redis is unavailable, fill passes paused and retried with backoff: "
                           "Redis at redis://test is unreachable: connection refused")
    assert re.fullmatch(r"Redis is back after \d+\.\ds; fill passes resumed", warnings[1]), warnings[1]
    assert watcher.passes >= 7


def test_commit_lost_not_retried(mariadb_redis, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """A connection that breaks during COMMIT leaves the outcome unknown: no retry, and the row is named."""
    from poolctl.errors import DatabaseUnavailable

    db = mariadb_redis.db
    load_rows(db, "titles", [(1, 1, "only row")])
    conn = db.connection()
    real_commit = conn.commit

    def commit_lost() -> None:
        conn.commit = real_commit  # once
        real_commit()
        raise pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")

    conn.commit = commit_lost
    with caplog.at_level(logging.ERROR, logger="poolctl.sql.mysql"), pytest.raises(DatabaseUnavailable):
        db.claim_for_consumer("titles", 1)
    row_id = next(iter(status_of(db, "titles")))
    assert (f"pool titles group 1: the connection broke during the COMMIT of a fallback pop; row {row_id} may now "
            "be consumed without having been handed out") in caplog.text
    assert status_of(db, "titles") == {row_id: mariadb_redis.settings.status.consumed}
    assert db.claim_for_consumer("titles", 1) is None  # no retry took a second row or reported this one
