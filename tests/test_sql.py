"""The SQL contract, on SQLite and on MariaDB."""

from __future__ import annotations

import threading

import pytest

from poolctl.errors import SchemaError
from poolctl.sql import connect_database

from conftest import Backend, load_rows, make_settings, status_of


def rows_for(group: int, batches: dict[int, int]) -> list[tuple[int, int, str]]:
    """Rows of one group: {batch: count}, inserted batch by batch in the given order."""
    return [(group, batch, f"g{group} b{batch} #{n}") for batch, count in batches.items() for n in range(count)]


def test_claim_follows_fill_order(backend: Backend) -> None:
    db = backend.db
    load_rows(db, "titles", rows_for(1, {1: 3, 3: 2, 2: 2}) + rows_for(2, {9: 5}))
    claimed = db.claim("titles", 1, 5)
    # newest batch first, then oldest id
    assert [row.text for row in claimed] == ["g1 b3 #0", "g1 b3 #1", "g1 b2 #0", "g1 b2 #1", "g1 b1 #0"]


def test_claim_marks_rows_queued(backend: Backend) -> None:
    db = backend.db
    load_rows(db, "titles", rows_for(1, {1: 4}))
    claimed = {row.id for row in db.claim("titles", 1, 3)}
    statuses = status_of(db, "titles")
    assert {i for i, s in statuses.items() if s == backend.settings.status.queued} == claimed
    assert sum(1 for s in statuses.values() if s == backend.settings.status.available) == 1


def test_claim_rolls_back_when_told(backend: Backend) -> None:
    db = backend.db
    load_rows(db, "titles", rows_for(1, {1: 4}))
    seen: list[list[int]] = []
    assert db.claim("titles", 1, 3, before_commit=lambda ids: seen.append(ids) or False) == []
    assert len(seen[0]) == 3
    assert set(status_of(db, "titles").values()) == {backend.settings.status.available}


def test_claim_rolls_back_on_error(backend: Backend) -> None:
    db = backend.db
    load_rows(db, "titles", rows_for(1, {1: 4}))

    def fail(ids: list[int]) -> bool:
        raise RuntimeError("Redis went away")

    with pytest.raises(RuntimeError):
        db.claim("titles", 1, 3, before_commit=fail)
    assert set(status_of(db, "titles").values()) == {backend.settings.status.available}


def test_claim_never_takes_queued_or_consumed(backend: Backend) -> None:
    db = backend.db
    load_rows(db, "titles", rows_for(1, {1: 6}))
    first = db.claim("titles", 1, 2)
    db.mark_consumed("titles", [first[0].id])
    second = db.claim("titles", 1, 10)
    assert {row.id for row in first}.isdisjoint(row.id for row in second)
    assert len(second) == 4


def test_fallback_takes_available_to_consumed(backend: Backend) -> None:
    db = backend.db
    load_rows(db, "titles", rows_for(1, {1: 2}))
    queued = db.claim("titles", 1, 1)[0]
    row = db.claim_for_consumer("titles", 1)
    assert row is not None and row.id != queued.id
    assert status_of(db, "titles")[row.id] == backend.settings.status.consumed
    assert db.claim_for_consumer("titles", 1) is None


def test_restore_only_touches_queued(backend: Backend) -> None:
    db = backend.db
    load_rows(db, "titles", rows_for(1, {1: 3}))
    ids = [row.id for row in db.claim("titles", 1, 3)]
    db.mark_consumed("titles", ids[:1])
    assert db.restore("titles", ids) == ids[1:]
    statuses = status_of(db, "titles")
    assert statuses[ids[0]] == backend.settings.status.consumed
    assert statuses[ids[1]] == statuses[ids[2]] == backend.settings.status.available


def test_state_counts_and_groups(backend: Backend) -> None:
    db = backend.db
    load_rows(db, "titles", rows_for(1, {1: 3}) + rows_for(4, {1: 2}))
    db.claim("titles", 1, 3)
    counts = db.state_counts("titles")
    assert (counts[1].available, counts[1].queued, counts[4].available) == (0, 3, 2)
    assert db.groups("titles") == [1, 4]
    assert db.groups("titles", backend.settings.status.available) == [4]
    assert db.groups("titles", backend.settings.status.queued) == [1]
    assert db.groups("titles", backend.settings.status.consumed) == []
    load_rows(db, "titles", rows_for(2, {1: 1}) + rows_for(9, {1: 1}))
    assert db.groups("titles") == [1, 2, 4, 9]
    assert db.groups("titles", backend.settings.status.available) == [2, 4, 9]
    assert db.group_exists("titles", 4)
    assert not db.group_exists("titles", 5)


def test_fill_query_uses_index_without_sort(backend: Backend) -> None:
    db = backend.db
    # Several groups, so that the index is selective enough for the optimizer to prefer it.
    load_rows(db, "titles", [row for group in range(1, 21) for row in rows_for(group, {1: 50, 2: 50})])
    plan = db.explain_claim("titles")
    assert plan.uses_index, plan.detail
    assert not plan.filesort, plan.detail


def test_missing_table_names_fix(backend: Backend) -> None:
    with pytest.raises(SchemaError) as caught:
        backend.db.check_table("titles")
    assert "titles" in caught.value.message
    assert "poolctl db init" in caught.value.hint


def test_missing_column_names_column(backend: Backend) -> None:
    backend.db.create_table("titles")
    settings = make_settings(backend.settings, pools={"titles": {"text_column": "headline"}})
    db = connect_database(settings)
    try:
        with pytest.raises(SchemaError) as caught:
            db.check_table("titles")
    finally:
        db.close()
    assert "headline" in caught.value.message


def test_status_values_are_configurable(backend: Backend) -> None:
    settings = make_settings(backend.settings, status={"available": 5, "queued": 6, "consumed": 7})
    db = connect_database(settings)
    try:
        load_rows(db, "titles", rows_for(1, {1: 3}))
        claimed = db.claim("titles", 1, 2)
        db.mark_consumed("titles", [claimed[0].id])
        assert sorted(status_of(db, "titles").values()) == [5, 6, 7]
    finally:
        db.close()


def test_concurrent_claims_never_overlap(backend: Backend) -> None:
    """Four connections claim from one group at once; every row goes to exactly one."""
    load_rows(backend.db, "titles", rows_for(1, {1: 400}))
    results: list[list[int]] = []
    lock = threading.Lock()

    def worker() -> None:
        db = connect_database(backend.settings)
        try:
            while rows := db.claim("titles", 1, 7):
                with lock:
                    results.append([row.id for row in rows])
        finally:
            db.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = [row_id for batch in results for row_id in batch]
    assert len(claimed) == 400
    assert len(set(claimed)) == 400


def test_groups_walk_then_group_by(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """With more groups than the walk takes, the rest comes from a GROUP BY, with the same result."""
    import poolctl.sql.base as base

    db = backend.db
    load_rows(db, "titles", rows_for(1, {1: 2}) + rows_for(3, {1: 1}) + rows_for(7, {1: 2}) + rows_for(8, {1: 1}))
    db.claim("titles", 7, 2)
    expected = (db.groups("titles"), db.groups("titles", backend.settings.status.available),
                db.groups("titles", backend.settings.status.queued))
    assert expected == ([1, 3, 7, 8], [1, 3, 8], [7])
    monkeypatch.setattr(base, "WALK_MIN_STEPS", 1)
    monkeypatch.setattr(base, "WALK_STEP_ROWS", 10**9)
    assert (db.groups("titles"), db.groups("titles", backend.settings.status.available),
            db.groups("titles", backend.settings.status.queued)) == expected
