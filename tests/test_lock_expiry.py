"""Fill locks that expire by their TTL mid-fill: nothing is corrupted, the fill logs it, reconcile cleans up."""

from __future__ import annotations

import json
import logging
import time

import pytest

from poolctl.audit import audit
from poolctl.fill import Filler
from poolctl.reconcile import reconcile

from conftest import Backend, load_rows, make_settings, status_of

TTL_S = 0.3


def short_lock(backend: Backend):  # type: ignore[no-untyped-def]
    return make_settings(backend.settings, fill={"lock_ttl_s": TTL_S})


def pooled(backend: Backend) -> list[int]:
    keys = backend.store.keys("titles", 1)
    return [json.loads(raw)["id"] for raw in backend.redis_client.lrange(keys.pool, 0, -1)]


def test_slow_claim_loses_lock(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    """The SQL claim outlives the lock; a second filler fills the pool meanwhile; the first pushes nothing."""
    settings = short_lock(backend)
    load_rows(backend.db, "titles", [(1, 1, f"item {n}") for n in range(200)])
    slow = Filler(settings, backend.store, backend.db)
    other = Filler(settings, backend.store, backend.db)
    targets = slow.discover(["titles"])
    slow.run_pass(targets)  # sets the sentinel, so the next fills go straight to claiming
    backend.store.pop(backend.store.keys("titles", 1), 45)
    real_claim = backend.db.claim
    taken_over = []

    def claim_slowly(*args, **kwargs):  # type: ignore[no-untyped-def]
        rows = real_claim(*args, **kwargs)
        time.sleep(TTL_S * 2)  # a slow query or a paused process: the lock expires
        if not taken_over:
            backend.db.claim = real_claim  # type: ignore[method-assign]
            taken_over.append(other.run_pass(targets))
            backend.db.claim = claim_slowly  # type: ignore[method-assign]
        return rows

    backend.db.claim = claim_slowly  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="poolctl.fill"):
        result = slow.run_pass(targets)
    backend.db.claim = real_claim  # type: ignore[method-assign]

    assert [fill.outcome for fill in result.fills] == ["lock_lost"]
    assert "pool titles group 1: fill lock expired mid-fill, 20 claimed items left for reconcile" in caplog.text
    # The filler that took the expired lock found the slow claim's 20 ids in
    # the claiming set, restored them, then filled the pool.
    assert [(fill.outcome, fill.restored) for fill in taken_over[0].fills] == [("filled", 20)]
    items = pooled(backend)
    assert len(items) == len(set(items)) == 50
    report = reconcile(settings, backend.store, backend.db, ["titles"], apply=True).pools[0]
    assert report.missing == 0
    assert audit(settings, backend.store, backend.db, ["titles"]).ok


def test_lock_lost_before_record(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    settings = short_lock(backend)
    load_rows(backend.db, "titles", [(1, 1, f"item {n}") for n in range(30)])
    filler = Filler(settings, backend.store, backend.db)
    targets = filler.discover(["titles"])
    real_record = backend.store.record_claim

    def record_late(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(TTL_S * 2)
        return real_record(*args, **kwargs)

    backend.store.record_claim = record_late  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="poolctl.fill"):
        result = filler.run_pass(targets)
    backend.store.record_claim = real_record  # type: ignore[method-assign]
    assert [fill.outcome for fill in result.fills] == ["lock_lost"]
    assert "fill lock expired before the claim was committed; nothing was claimed" in caplog.text
    assert set(status_of(backend.db, "titles").values()) == {backend.settings.status.available}
    assert backend.redis_client.exists(backend.store.keys("titles", 1).claiming) == 0


def test_paused_reconcile_restores_nothing(backend: Backend) -> None:
    """A reconcile paused past its lock TTL while a fill takes over restores nothing from its stale read."""
    settings = short_lock(backend)
    load_rows(backend.db, "titles", [(1, 1, f"item {n}") for n in range(80)])
    filler = Filler(settings, backend.store, backend.db)
    filler.run_pass(filler.discover(["titles"]))
    keys = backend.store.keys("titles", 1)
    backend.store.acquire_lock(keys, "dead-filler", 30)
    claimed = backend.db.claim("titles", 1, 5, before_commit=lambda ids: backend.store.record_claim(keys, "dead-filler", 30, ids))
    backend.redis_client.delete(keys.lock)
    real_statuses = backend.db.statuses

    def paused_statuses(*args, **kwargs):  # type: ignore[no-untyped-def]
        found = real_statuses(*args, **kwargs)
        time.sleep(TTL_S * 2)
        backend.store.acquire_lock(keys, "new-filler", 30)  # a fill takes the expired lock
        return found

    backend.db.statuses = paused_statuses  # type: ignore[method-assign]
    report = reconcile(settings, backend.store, backend.db, ["titles"], apply=True).pools[0]
    backend.db.statuses = real_statuses  # type: ignore[method-assign]
    assert report.outcome == "lock_lost"
    assert report.restored == []
    assert {status_of(backend.db, "titles")[row.id] for row in claimed} == {backend.settings.status.queued}
    assert backend.redis_client.get(keys.lock) == b"new-filler"
