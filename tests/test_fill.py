"""Fill passes on both backends: top-up to size, locks, ordering and lost locks."""

from __future__ import annotations

import json

import pytest

from poolctl.errors import UnknownGroup, UnknownPoolType
from poolctl.fill import Filler

from conftest import Backend, load_rows, make_settings, status_of


def rows_in_groups(groups: dict[int, int]) -> list[tuple[int, int, str]]:
    return [(group, 1, f"group {group} item {n}") for group, count in groups.items() for n in range(count)]


def pool_ids(backend: Backend, pool_type: str, group: int) -> list[int]:
    keys = backend.store.keys(pool_type, group)
    return [json.loads(raw)["id"] for raw in backend.redis_client.lrange(keys.pool, 0, -1)]


def test_fill_tops_pool_up_to_size(backend: Backend) -> None:
    load_rows(backend.db, "titles", rows_in_groups({1: 120}))
    filler = Filler(backend.settings, backend.store, backend.db)
    result = filler.run_pass(filler.discover(["titles"]))
    # size 50 in batches of 20: three claims in one pass, not one batch
    assert pool_ids(backend, "titles", 1).__len__() == 50
    assert result.pushed == 50
    assert [fill.outcome for fill in result.fills] == ["filled"]


def test_fill_queues_exactly_pooled_rows(backend: Backend) -> None:
    load_rows(backend.db, "titles", rows_in_groups({1: 120, 2: 30}))
    filler = Filler(backend.settings, backend.store, backend.db)
    filler.run_pass(filler.discover(["titles"]))
    statuses = status_of(backend.db, "titles")
    queued = {i for i, s in statuses.items() if s == backend.settings.status.queued}
    pooled = pool_ids(backend, "titles", 1) + pool_ids(backend, "titles", 2)
    assert len(pooled) == len(set(pooled)) == 80
    assert queued == set(pooled)


def test_fill_skips_pool_above_threshold(backend: Backend) -> None:
    load_rows(backend.db, "titles", rows_in_groups({1: 200}))
    filler = Filler(backend.settings, backend.store, backend.db)
    targets = filler.discover(["titles"])
    filler.run_pass(targets)
    backend.store.pop(backend.store.keys("titles", 1), 39)  # 11 left, threshold 10
    assert filler.run_pass(targets).fills == []
    backend.store.pop(backend.store.keys("titles", 1), 1)  # 10 left: at threshold
    assert filler.run_pass(targets).pushed == 40


def test_second_pass_never_requeues(backend: Backend) -> None:
    load_rows(backend.db, "titles", rows_in_groups({1: 200}))
    filler = Filler(backend.settings, backend.store, backend.db)
    targets = filler.discover(["titles"])
    for _ in range(3):
        filler.run_pass(targets)
        backend.store.pop(backend.store.keys("titles", 1), 45)
    filler.run_pass(targets)
    seen = pool_ids(backend, "titles", 1)
    acked = [int(raw) for raw in backend.redis_client.lrange(backend.store.keys("titles", 1).acks, 0, -1)]
    assert len(seen) == len(set(seen))
    assert set(seen).isdisjoint(acked)


def test_fill_skips_locked_pool(backend: Backend) -> None:
    load_rows(backend.db, "titles", rows_in_groups({1: 30}))
    keys = backend.store.keys("titles", 1)
    backend.store.acquire_lock(keys, "other-filler", 30)
    filler = Filler(backend.settings, backend.store, backend.db)
    result = filler.run_pass(filler.discover(["titles"]))
    assert [fill.outcome for fill in result.fills] == ["locked"]
    assert backend.redis_client.llen(keys.pool) == 0
    assert backend.redis_client.get(keys.lock) == b"other-filler"


def test_fill_releases_its_lock(backend: Backend) -> None:
    load_rows(backend.db, "titles", rows_in_groups({1: 30}))
    filler = Filler(backend.settings, backend.store, backend.db)
    filler.run_pass(filler.discover(["titles"]))
    assert backend.redis_client.exists(backend.store.keys("titles", 1).lock) == 0


def test_fill_reports_drained_group(backend: Backend) -> None:
    load_rows(backend.db, "titles", rows_in_groups({1: 5}))
    filler = Filler(backend.settings, backend.store, backend.db)
    targets = filler.discover(["titles"])
    assert filler.run_pass(targets).pushed == 5
    backend.store.pop(backend.store.keys("titles", 1), 5)
    assert [fill.outcome for fill in filler.run_pass(targets).fills] == ["drained"]


def test_lost_lock_leaves_claim_recorded(backend: Backend) -> None:
    """A filler whose lock is taken over mid-fill pushes nothing and leaves its claim for reconcile."""
    load_rows(backend.db, "titles", rows_in_groups({1: 30}))
    keys = backend.store.keys("titles", 1)
    filler = Filler(backend.settings, backend.store, backend.db)
    original_claim = backend.db.claim

    def claim_then_lose_lock(*args, **kwargs):  # type: ignore[no-untyped-def]
        rows = original_claim(*args, **kwargs)
        backend.redis_client.set(keys.lock, "new-owner")  # the TTL passed and another filler took over
        return rows

    backend.db.claim = claim_then_lose_lock  # type: ignore[method-assign]
    result = filler.run_pass(filler.discover(["titles"]))
    backend.db.claim = original_claim  # type: ignore[method-assign]
    assert [fill.outcome for fill in result.fills] == ["lock_lost"]
    assert backend.redis_client.llen(keys.pool) == 0
    claimed = {int(raw) for raw in backend.redis_client.smembers(keys.claiming)}
    queued = {i for i, s in status_of(backend.db, "titles").items() if s == backend.settings.status.queued}
    assert len(claimed) == 20
    assert claimed == queued
    assert backend.redis_client.get(keys.lock) == b"new-owner"


def test_fill_flushes_pending_acks(backend: Backend) -> None:
    load_rows(backend.db, "titles", rows_in_groups({1: 30}))
    filler = Filler(backend.settings, backend.store, backend.db)
    targets = filler.discover(["titles"])
    filler.run_pass(targets)
    popped = backend.store.pop(backend.store.keys("titles", 1), 4)
    result = filler.run_pass(targets)
    ids = {json.loads(raw)["id"] for raw in popped.raw}
    statuses = status_of(backend.db, "titles")
    assert result.acks_flushed == 4
    assert {i for i in ids if statuses[i] == backend.settings.status.consumed} == ids
    assert backend.redis_client.llen(backend.store.keys("titles", 1).acks) == 0


def test_discover_rejects_unknown_names(backend: Backend) -> None:
    load_rows(backend.db, "titles", rows_in_groups({1: 3}))
    filler = Filler(backend.settings, backend.store, backend.db)
    with pytest.raises(UnknownPoolType):
        filler.discover(["headlines"])
    with pytest.raises(UnknownGroup):
        filler.discover(["titles"], group=77)


def test_big_batch_fill(backend: Backend) -> None:
    settings = make_settings(backend.settings, pools={"titles": {"size": 5000, "threshold": 100, "batch": 2500}})
    load_rows(backend.db, "titles", rows_in_groups({1: 6000}))
    filler = Filler(settings, backend.store, backend.db)
    assert filler.run_pass(filler.discover(["titles"])).pushed == 5000
    assert len(set(pool_ids(backend, "titles", 1))) == 5000
