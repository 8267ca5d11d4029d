"""Reconcile on both backends: what it restores, what it must leave alone, and how fills use it."""

from __future__ import annotations

import json
import threading

import pytest

from poolctl import reconcile as reconcile_module
from poolctl.fill import Filler
from poolctl.reconcile import ReconcileResult, reconcile

from conftest import Backend, load_rows, status_of


def filled(backend: Backend, count: int = 30) -> Filler:
    load_rows(backend.db, "titles", [(1, 1, f"item {n}") for n in range(count)])
    filler = Filler(backend.settings, backend.store, backend.db)
    filler.run_pass(filler.discover(["titles"]))
    return filler


def run_reconcile(backend: Backend, **options: object) -> ReconcileResult:
    return reconcile(backend.settings, backend.store, backend.db, ["titles"], **options)  # type: ignore[arg-type]


def pool_ids(backend: Backend, group: int = 1) -> list[int]:
    keys = backend.store.keys("titles", group)
    return [json.loads(raw)["id"] for raw in backend.redis_client.lrange(keys.pool, 0, -1)]


def crash_after_commit(backend: Backend, count: int) -> list[int]:
    """Claim rows the way a fill does, then stop before the push, as a filler killed after its commit would."""
    keys = backend.store.keys("titles", 1)
    backend.store.acquire_lock(keys, "dead-filler", 30)
    rows = backend.db.claim(
        "titles", 1, count, before_commit=lambda ids: backend.store.record_claim(keys, "dead-filler", 30, ids)
    )
    backend.redis_client.delete(keys.lock)  # its TTL passed
    return [row.id for row in rows]


def queued(backend: Backend) -> set[int]:
    return {i for i, s in status_of(backend.db, "titles").items() if s == backend.settings.status.queued}


def available(backend: Backend) -> set[int]:
    return {i for i, s in status_of(backend.db, "titles").items() if s == backend.settings.status.available}


def test_recorded_items_restored(backend: Backend) -> None:
    filled(backend, count=60)  # 50 pooled, 10 left
    claimed = crash_after_commit(backend, 5)
    report = run_reconcile(backend, apply=True).pools[0]
    assert report.recorded == sorted(claimed)
    assert report.ambiguous == []
    assert report.restored == sorted(claimed)
    assert set(claimed) <= available(backend)
    assert backend.redis_client.exists(backend.store.keys("titles", 1).claiming) == 0


def test_dry_run_changes_nothing(backend: Backend) -> None:
    filled(backend, count=60)
    claimed = crash_after_commit(backend, 5)
    report = run_reconcile(backend).pools[0]
    assert report.recorded == sorted(claimed)
    assert report.restored == []
    assert set(claimed) <= queued(backend)
    assert backend.redis_client.scard(backend.store.keys("titles", 1).claiming) == 5


def test_ambiguous_items_kept_queued(backend: Backend) -> None:
    filled(backend)
    keys = backend.store.keys("titles", 1)
    go_popped = [json.loads(backend.redis_client.rpop(keys.pool))["id"] for _ in range(3)]  # RPOP, no ack
    report = run_reconcile(backend, apply=True).pools[0]
    assert report.ambiguous == sorted(go_popped)
    assert report.restored == []
    assert set(go_popped) <= queued(backend)


def test_ambiguous_restored_when_asked(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile_module, "AMBIGUOUS_SETTLE_S", 0.0)
    filled(backend)
    keys = backend.store.keys("titles", 1)
    go_popped = [json.loads(backend.redis_client.rpop(keys.pool))["id"] for _ in range(3)]
    backend.db.mark_consumed("titles", go_popped[:1])  # the Go service marked one consumed in time
    report = run_reconcile(backend, apply=True, include_ambiguous=True).pools[0]
    assert report.ambiguous == sorted(go_popped[1:])
    assert report.restored == sorted(go_popped[1:])
    assert status_of(backend.db, "titles")[go_popped[0]] == backend.settings.status.consumed


def test_ambiguous_settle_drops_late_consumed(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """An outside consumer's status update that lands during the settle wait keeps its item out of the restore."""
    filled(backend)
    keys = backend.store.keys("titles", 1)
    go_popped = [json.loads(backend.redis_client.rpop(keys.pool))["id"] for _ in range(2)]
    monkeypatch.setattr(reconcile_module, "AMBIGUOUS_SETTLE_S", 0.0)
    real_sleep = reconcile_module.time.sleep

    def late_update(seconds: float) -> None:
        backend.db.mark_consumed("titles", go_popped[:1])
        real_sleep(seconds)

    monkeypatch.setattr(reconcile_module.time, "sleep", late_update)
    report = run_reconcile(backend, apply=True, include_ambiguous=True).pools[0]
    assert report.restored == [go_popped[1]]
    assert status_of(backend.db, "titles")[go_popped[0]] == backend.settings.status.consumed


def test_pooled_and_acked_never_restored(backend: Backend) -> None:
    filled(backend)
    popped = backend.store.pop(backend.store.keys("titles", 1), 4)  # in acks, not yet flushed
    report = run_reconcile(backend, apply=True, include_ambiguous=False).pools[0]
    assert report.missing == 0
    assert report.in_pool == 26
    assert report.in_acks == 4
    assert set(popped.ids) <= queued(backend)
    assert len(queued(backend)) == 30


def test_lost_redis_state_restores_all(backend: Backend) -> None:
    filled(backend, count=60)
    keys = backend.store.keys("titles", 1)
    backend.store.pop(keys, 3)
    pooled_before = queued(backend)
    for key in (keys.pool, keys.acks, keys.claiming, keys.sentinel, keys.acks_since):
        backend.redis_client.delete(key)  # what a restart without persistence leaves
    report = run_reconcile(backend, apply=True).pools[0]
    assert report.sentinel_missing
    assert report.lost == sorted(pooled_before)
    assert report.restored == sorted(pooled_before)
    assert queued(backend) == set()
    assert backend.redis_client.get(keys.sentinel) is not None


def test_fill_after_data_loss_refills(backend: Backend) -> None:
    filler = filled(backend, count=60)
    keys = backend.store.keys("titles", 1)
    for key in (keys.pool, keys.sentinel):
        backend.redis_client.delete(key)
    result = filler.run_pass(filler.discover(["titles"]))
    assert [(fill.sentinel_missing, fill.restored, fill.pushed) for fill in result.fills] == [(True, 50, 50)]
    assert len(set(pool_ids(backend))) == 50
    assert queued(backend) == set(pool_ids(backend))


def test_fill_restores_crashed_claims(backend: Backend) -> None:
    filler = filled(backend, count=120)
    backend.store.pop(backend.store.keys("titles", 1), 45)  # 5 left: below threshold
    claimed = crash_after_commit(backend, 7)
    result = filler.run_pass(filler.discover(["titles"]))
    fill = result.fills[0]
    assert (fill.restored, fill.sentinel_missing, fill.outcome) == (7, False, "filled")
    pooled = pool_ids(backend)
    assert len(pooled) == len(set(pooled)) == 50
    assert set(claimed) <= set(pooled)  # restored, then claimed again in fill order
    assert backend.redis_client.exists(backend.store.keys("titles", 1).claiming) == 0


def test_locked_pool_skipped(backend: Backend) -> None:
    filled(backend, count=60)
    crash_after_commit(backend, 5)
    keys = backend.store.keys("titles", 1)
    backend.store.acquire_lock(keys, "live-filler", 30)
    result = run_reconcile(backend, apply=True, lock_wait_s=0.2)
    assert [pool.outcome for pool in result.pools] == ["locked"]
    assert result.skipped == result.pools
    assert len(queued(backend)) == 55
    assert backend.redis_client.get(keys.lock) == b"live-filler"


def test_lock_lost_stops_restore(backend: Backend) -> None:
    filled(backend, count=60)
    claimed = crash_after_commit(backend, 5)
    keys = backend.store.keys("titles", 1)
    real_extend = backend.store.extend_lock

    def taken_over(*args, **kwargs):  # type: ignore[no-untyped-def]
        backend.redis_client.set(keys.lock, "new-owner")  # the TTL passed and a fill took the lock
        return real_extend(*args, **kwargs)

    backend.store.extend_lock = taken_over  # type: ignore[method-assign]
    report = run_reconcile(backend, apply=True).pools[0]
    assert report.outcome == "lock_lost"
    assert report.restored == []
    assert set(claimed) <= queued(backend)
    assert backend.redis_client.scard(keys.claiming) == 5


def test_stale_claims_dropped(backend: Backend) -> None:
    """Claim records of rows that are available (a rolled-back claim) or consumed are removed."""
    filled(backend, count=60)
    keys = backend.store.keys("titles", 1)
    spare = sorted(available(backend))
    backend.db.mark_consumed("titles", spare[:2])
    backend.redis_client.sadd(keys.claiming, *spare[:4])  # two consumed, two available
    report = run_reconcile(backend, apply=True).pools[0]
    assert report.claims_dropped == 4
    assert report.restored == []
    assert backend.redis_client.exists(keys.claiming) == 0


def test_wrong_type_pool_reported(backend: Backend) -> None:
    filled(backend)
    keys = backend.store.keys("titles", 1)
    backend.redis_client.delete(keys.claiming)
    backend.redis_client.set(keys.claiming, "not a set")
    report = run_reconcile(backend, apply=True).pools[0]
    assert report.outcome == "wrong_type"
    assert keys.claiming in report.message
    assert backend.redis_client.exists(keys.lock) == 0


def test_in_flight_claim_keeps_record(mariadb_redis: Backend) -> None:
    """A claim record whose row is still locked by an open claim transaction survives a reconcile.

    That transaction belongs to a filler whose lock expired: if it commits
    after the reconcile, its rows are queued and never pushed, and the record
    is what lets the next reconcile restore them without doubt.
    """
    backend = mariadb_redis
    filled(backend, count=60)
    keys = backend.store.keys("titles", 1)
    other_db = type(backend.db)(backend.db.url, backend.settings.status, backend.settings.pools, 5.0)
    recorded = threading.Event()
    finish = threading.Event()
    claimed: list[int] = []

    def slow_claim() -> None:
        def record(ids: list[int]) -> bool:
            claimed.extend(ids)
            backend.redis_client.sadd(keys.claiming, *ids)
            recorded.set()
            finish.wait(10)
            return True

        other_db.claim("titles", 1, 3, before_commit=record)

    worker = threading.Thread(target=slow_claim)
    worker.start()
    try:
        assert recorded.wait(10)
        report = run_reconcile(backend, apply=True).pools[0]
        assert report.claims_dropped == 0
        assert {int(raw) for raw in backend.redis_client.smembers(keys.claiming)} == set(claimed)
    finally:
        finish.set()
        worker.join()
        other_db.close()
    second = run_reconcile(backend, apply=True).pools[0]
    assert second.recorded == sorted(claimed)
    assert second.restored == sorted(claimed)
