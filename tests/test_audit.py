"""The audit on both backends: each broken invariant it must find, and silence when all holds."""

from __future__ import annotations

import json
import time

import pytest

from poolctl import audit as audit_module
from poolctl.audit import AuditResult, audit
from poolctl.fill import Filler
from poolctl.items import encode_item

from conftest import Backend, load_rows


@pytest.fixture(autouse=True)
def quick_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_module, "AUDIT_RECHECK_S", 0.0)


def filled(backend: Backend, groups: tuple[int, ...] = (1,), count: int = 60) -> None:
    load_rows(backend.db, "titles", [(group, 1, f"g{group} #{n}") for group in groups for n in range(count)])
    filler = Filler(backend.settings, backend.store, backend.db)
    filler.run_pass(filler.discover(["titles"]))


def run_audit(backend: Backend, **options: float) -> AuditResult:
    return audit(backend.settings, backend.store, backend.db, ["titles"], **options)


def checks(result: AuditResult) -> list[tuple[str, str, int | None]]:
    return [(finding.severity, finding.check, finding.group) for finding in result.findings]


def test_clean_after_fill_and_pops(backend: Backend) -> None:
    filled(backend, groups=(1, 2))
    backend.store.pop(backend.store.keys("titles", 1), 5)
    result = run_audit(backend)
    assert result.findings == []
    assert result.ok
    assert result.pools_checked == 2


def test_duplicate_across_pools(backend: Backend) -> None:
    filled(backend, groups=(1, 2))
    keys_1, keys_2 = backend.store.keys("titles", 1), backend.store.keys("titles", 2)
    stolen = backend.redis_client.lindex(keys_1.pool, 0)
    backend.redis_client.lpush(keys_2.pool, stolen)
    result = run_audit(backend)
    duplicate = [finding for finding in result.findings if finding.check == "duplicate"]
    assert len(duplicate) == 1
    assert duplicate[0].ids == [json.loads(stolen)["id"]]
    assert "held more than once" in duplicate[0].text
    assert not result.ok


def test_duplicate_in_pool_and_acks(backend: Backend) -> None:
    filled(backend)
    keys = backend.store.keys("titles", 1)
    item = json.loads(backend.redis_client.lindex(keys.pool, 0))["id"]
    backend.redis_client.lpush(keys.acks, str(item))
    result = run_audit(backend)
    assert ("error", "duplicate", None) in checks(result)


def test_pooled_item_not_queued(backend: Backend) -> None:
    filled(backend)
    keys = backend.store.keys("titles", 1)
    items = [json.loads(raw)["id"] for raw in backend.redis_client.lrange(keys.pool, 0, 1)]
    backend.db.restore("titles", items[:1])
    backend.db.mark_consumed("titles", items[1:])
    result = run_audit(backend)
    found = {finding.row_state: finding.ids for finding in result.findings if finding.check == "not_queued"}
    assert found == {"available": items[:1], "consumed": items[1:]}


def test_pooled_item_of_other_group(backend: Backend) -> None:
    filled(backend, groups=(1, 2))
    keys_1, keys_2 = backend.store.keys("titles", 1), backend.store.keys("titles", 2)
    moved = backend.redis_client.rpop(keys_1.pool)
    backend.redis_client.lpush(keys_2.pool, moved)
    result = run_audit(backend)
    wrong = [finding for finding in result.findings if finding.check == "wrong_group"]
    assert [(finding.group, finding.ids) for finding in wrong] == [(2, [json.loads(moved)["id"]])]


def test_pool_over_size(backend: Backend) -> None:
    filled(backend)
    keys = backend.store.keys("titles", 1)
    backend.redis_client.lpush(keys.pool, b"not json")
    result = run_audit(backend)
    assert ("error", "over_size", 1) in checks(result)
    assert ("error", "malformed", 1) in checks(result)


def test_missing_items_found(backend: Backend) -> None:
    filled(backend)
    keys = backend.store.keys("titles", 1)
    gone = [json.loads(backend.redis_client.rpop(keys.pool))["id"] for _ in range(3)]
    result = run_audit(backend)
    missing = [finding for finding in result.findings if finding.check == "missing"]
    assert [(finding.severity, finding.ids) for finding in missing] == [("error", sorted(gone))]
    assert "poolctl reconcile" in missing[0].text


def test_audit_of_one_group(backend: Backend) -> None:
    """Narrowed to a group, the audit reads only that pool and reports only that group's findings."""
    filled(backend, groups=(1, 2))
    keys_2 = backend.store.keys("titles", 2)
    popped_ids = [json.loads(backend.redis_client.rpop(keys_2.pool))["id"] for _ in range(3)]
    clean = audit(backend.settings, backend.store, backend.db, ["titles"], group=1)
    assert (clean.findings, clean.pools_checked) == ([], 1)
    broken = audit(backend.settings, backend.store, backend.db, ["titles"], group=2)
    assert [(finding.check, finding.group, finding.ids) for finding in broken.findings] == [("missing", 2, sorted(popped_ids))]
    assert broken.pools_checked == 1


def test_missing_under_lock_is_in_flight(backend: Backend) -> None:
    filled(backend)
    keys = backend.store.keys("titles", 1)
    backend.redis_client.rpop(keys.pool)
    backend.store.acquire_lock(keys, "busy-filler", 30)
    result = run_audit(backend)
    assert checks(result) == [("warning", "in_flight", 1)]
    assert result.ok


def test_acks_invalid_and_orphaned(backend: Backend) -> None:
    filled(backend, count=60)
    keys = backend.store.keys("titles", 1)
    pooled = {json.loads(raw)["id"] for raw in backend.redis_client.lrange(keys.pool, 0, -1)}
    spare = min(i for i in range(1, 61) if i not in pooled)
    backend.redis_client.lpush(keys.acks, b"abc", str(spare).encode())
    result = run_audit(backend)
    assert ("error", "acks_invalid", 1) in checks(result)
    orphaned = [finding for finding in result.findings if finding.check == "acks_orphaned"]
    assert [finding.ids for finding in orphaned] == [[spare]]


def test_acks_already_consumed_warned(backend: Backend) -> None:
    filled(backend)
    keys = backend.store.keys("titles", 1)
    popped = backend.store.pop(keys, 2)
    backend.db.mark_consumed("titles", popped.ids)  # a flush that died before its trim
    result = run_audit(backend)
    assert checks(result) == [("warning", "acks_flushed", 1)]


def test_acks_stuck_without_flush(backend: Backend) -> None:
    filled(backend)
    keys = backend.store.keys("titles", 1)
    backend.store.pop(keys, 2)
    assert run_audit(backend).ok
    backend.redis_client.set(keys.acks_since, int((time.time() - 400) * 1000))
    result = run_audit(backend, acks_stuck_after_s=300)
    stuck = [finding for finding in result.findings if finding.check == "acks_stuck"]
    assert len(stuck) == 1
    assert "holds 2 acks and had no flush for 400s" in stuck[0].text


def test_lock_without_ttl(backend: Backend) -> None:
    filled(backend)
    keys = backend.store.keys("titles", 1)
    backend.redis_client.set(keys.lock, "forgotten-filler")
    result = run_audit(backend)
    assert ("error", "lock_without_ttl", 1) in checks(result)


def test_wrong_type_key(backend: Backend) -> None:
    filled(backend)
    keys = backend.store.keys("titles", 1)
    backend.redis_client.delete(keys.acks)
    backend.redis_client.hset(keys.acks, "field", "value")
    result = run_audit(backend)
    assert checks(result) == [("error", "wrong_type", 1)]
    assert f"Redis key {keys.acks} holds a hash" in result.findings[0].text


def test_dead_letters_and_sentinel_warned(backend: Backend) -> None:
    filled(backend)
    keys = backend.store.keys("titles", 1)
    backend.redis_client.lpush(keys.dead, b"broken entry")
    backend.redis_client.delete(keys.sentinel)
    result = run_audit(backend)
    assert sorted(checks(result)) == [("warning", "dead_letters", 1), ("warning", "no_sentinel", 1)]
    assert result.ok


def test_pool_without_sql_rows_checked(backend: Backend) -> None:
    """A pool that exists only in Redis (its group has no rows in SQL) is still audited."""
    filled(backend)
    stray = backend.store.keys("titles", 9)
    backend.redis_client.lpush(stray.pool, encode_item(999_999, "no such row"))
    result = run_audit(backend)
    assert result.pools_checked == 2
    assert [(finding.check, finding.group, finding.ids) for finding in result.findings] == [
        ("not_queued", 9, [999_999])
    ]


def test_transient_finding_not_reported(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """An item seen in no list by the first read but back by the second (a fill in between) is no finding."""
    filled(backend)
    keys = backend.store.keys("titles", 1)
    raw = backend.redis_client.rpop(keys.pool)
    real_sleep = audit_module.time.sleep

    def fill_in_between(seconds: float) -> None:
        backend.redis_client.rpush(keys.pool, raw)
        real_sleep(seconds)

    monkeypatch.setattr(audit_module.time, "sleep", fill_in_between)
    assert run_audit(backend).findings == []


def test_utf8mb3_column_warned(mariadb_redis: Backend) -> None:
    backend = mariadb_redis
    filled(backend)
    backend.db.execute("ALTER TABLE titles MODIFY title VARCHAR(255) CHARACTER SET utf8mb3 NOT NULL")
    result = run_audit(backend)
    assert checks(result) == [("warning", "charset", None)]
    assert "uses utf8mb3, which cannot store 4-byte characters" in result.findings[0].text
    assert "CONVERT TO CHARACTER SET utf8mb4" in result.findings[0].text
