"""The fill daemon loop: rediscovery, keeping up with drains, and a clean stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from poolctl.sql import connect_database
from poolctl.store import RedisStore
from poolctl.watch import Watcher

from conftest import Backend, load_rows, make_settings


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def start_watcher(backend: Backend, **fill: float) -> tuple[threading.Thread, threading.Event]:
    """Run a Watcher in a thread with its own connections, as `fill --watch` would."""
    settings = make_settings(backend.settings, fill={"interval_s": 0.2, "min_interval_s": 0.01, **fill})
    stop = threading.Event()

    def run() -> None:
        db = connect_database(settings)
        watcher = Watcher(settings, backend.store if backend.name.startswith("sqlite") else RedisStore.from_settings(settings),
                          db, pool_types=["titles"], stop=stop)
        try:
            watcher.run()
        finally:
            db.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, stop


def test_watch_discovers_new_group(mariadb_redis: Backend) -> None:
    backend = mariadb_redis
    load_rows(backend.db, "titles", [(1, 1, f"a{n}") for n in range(30)])
    thread, stop = start_watcher(backend, discover_interval_s=0.2)
    try:
        client = backend.redis_client
        assert wait_until(lambda: client.llen(backend.store.keys("titles", 1).pool) == 30)
        backend.db.insert_rows("titles", [(2, 1, f"b{n}") for n in range(12)])
        assert wait_until(lambda: client.llen(backend.store.keys("titles", 2).pool) == 12)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_watch_stops_and_flushes_acks(mariadb_redis: Backend) -> None:
    backend = mariadb_redis
    load_rows(backend.db, "titles", [(1, 1, f"item {n}") for n in range(30)])
    keys = backend.store.keys("titles", 1)
    thread, stop = start_watcher(backend, interval_s=30.0)
    assert wait_until(lambda: backend.redis_client.llen(keys.pool) == 30)
    backend.store.pop(keys, 3)
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert backend.redis_client.llen(keys.acks) == 0
    assert backend.redis_client.exists(keys.lock) == 0
    counts = backend.db.state_counts("titles")[1]
    assert (counts.consumed, counts.queued) == (3, 27)


def test_watch_refills_between_intervals(mariadb_redis: Backend) -> None:
    """A pool popped down to its threshold is refilled at once, not at the next interval 30 s away."""
    backend = mariadb_redis
    load_rows(backend.db, "titles", [(1, 1, f"item {n}") for n in range(200)])
    keys = backend.store.keys("titles", 1)
    size = backend.settings.pools["titles"].size
    thread, stop = start_watcher(backend, interval_s=30.0, min_interval_s=0.02)
    try:
        assert wait_until(lambda: backend.redis_client.llen(keys.pool) == size)
        backend.store.pop(keys, size - backend.settings.pools["titles"].threshold)
        assert wait_until(lambda: backend.redis_client.llen(keys.pool) == size, timeout_s=5.0)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_fast_drain_raises_the_threshold(sqlite_fake: Backend) -> None:
    settings = make_settings(sqlite_fake.settings, fill={"lead_s": 0.5})
    watcher = Watcher(settings, sqlite_fake.store, sqlite_fake.db, pool_types=["titles"])
    keys = sqlite_fake.store.keys("titles", 1)
    spec = settings.pools["titles"]  # size 50, threshold 10 in the test settings
    watcher._observe(keys, 50, 100.0)
    watcher._observe(keys, 45, 101.0)  # 5 items/s: 2.5 items in lead_s, below the threshold
    assert watcher.thresholds() == {}
    watcher._observe(keys, 5, 101.5)  # 80 items/s measured: the estimate moves halfway there
    assert watcher.thresholds() == {keys: min(int(42.5 * 0.5), spec.size - 1)}
    watcher._observe(keys, 50, 102.0)  # filled: gives no drain rate
    assert keys in watcher.thresholds()
    for at in (103.0, 104.0, 105.0, 106.0, 107.0, 108.0):
        watcher._observe(keys, 50, at)  # resting: the rate decays and the raise goes
    assert watcher.thresholds() == {}
