"""Stats on both backends: rate counters kept by the pop and push scripts, rates, time until empty, attention."""

from __future__ import annotations

import time

import pytest

from poolctl.fill import Filler
from poolctl.keys import RATE_BUCKET_S, RATE_COUNTER_TTL_S, RATE_WINDOW_S, rate_bucket
from poolctl.stats import collect_stats

from conftest import Backend, load_rows, make_settings


def rows_for(groups: dict[int, int]) -> list[tuple[int, int, str]]:
    return [(group, 1, f"标题 {group}-{n}") for group, count in groups.items() for n in range(count)]


def fill_titles(backend: Backend, groups: dict[int, int]) -> Filler:
    load_rows(backend.db, "titles", rows_for(groups))
    filler = Filler(backend.settings, backend.store, backend.db)
    filler.run_pass(filler.discover(["titles"]))
    return filler


def row_for(backend: Backend, group: int, now: float | None = None):  # type: ignore[no-untyped-def]
    rows = collect_stats(backend.settings, backend.store, backend.db, ["titles"], group, now=now)
    assert len(rows) == 1, rows
    return rows[0]


def test_pop_and_fill_leave_exact_keys(backend: Backend) -> None:
    fill_titles(backend, {1: 100})
    keys = backend.store.keys("titles", 1)
    backend.store.pop(keys, 3)
    bucket = rate_bucket(time.time())
    found = {key.decode() for key in backend.redis_client.scan_iter(match=keys.pool + "*")}
    # The pop and the fill may straddle a bucket boundary.
    allowed = {keys.pool, keys.acks, keys.sentinel, keys.acks_since}
    for candidate in (bucket - 1, bucket):
        allowed |= {keys.popped(candidate), keys.filled(candidate)}
    assert found <= allowed, found
    assert {keys.pool, keys.acks, keys.sentinel, keys.acks_since} <= found
    assert any(":popped:" in key for key in found) and any(":filled:" in key for key in found)


def test_rate_counters_have_ttl(backend: Backend) -> None:
    fill_titles(backend, {1: 100})
    keys = backend.store.keys("titles", 1)
    backend.store.pop(keys, 2)
    counters = [key for key in backend.redis_client.scan_iter(match=keys.pool + ":*ed:*")]
    assert counters
    for key in counters:
        ttl = backend.redis_client.ttl(key)
        assert 0 < ttl <= RATE_COUNTER_TTL_S, (key, ttl)


def test_rates_count_items_in_window(backend: Backend) -> None:
    fill_titles(backend, {1: 100})
    keys = backend.store.keys("titles", 1)
    backend.store.pop(keys, 4)
    backend.store.pop(keys, 2)
    backend.store.pop(keys, 1)
    row = row_for(backend, 1)
    assert row.pop_rate == round(7 / RATE_WINDOW_S, 3)
    assert row.fill_rate == round(50 / RATE_WINDOW_S, 3)


def test_rates_ignore_buckets_outside_window(backend: Backend) -> None:
    fill_titles(backend, {1: 100})
    keys = backend.store.keys("titles", 1)
    backend.store.pop(keys, 5)
    later = time.time() + RATE_WINDOW_S + RATE_BUCKET_S
    row = row_for(backend, 1, now=later)
    assert (row.pop_rate, row.fill_rate) == (0.0, 0.0)
    assert row.empty_in_s is None and row.exhausted_in_s is None


def test_empty_in_uses_net_rate(backend: Backend) -> None:
    load_rows(backend.db, "titles", rows_for({1: 100}))
    keys = backend.store.keys("titles", 1)
    now = time.time()
    client = backend.redis_client
    client.lpush(keys.pool, *[f'{{"id": {n}, "text": "t"}}' for n in range(1000, 1030)])
    client.set(keys.popped(rate_bucket(now)), 120)  # 2 items/s
    client.set(keys.filled(rate_bucket(now)), 60)  # 1 item/s
    row = row_for(backend, 1, now=now)
    assert (row.pop_rate, row.fill_rate) == (2.0, 1.0)
    assert row.empty_in_s == 30.0  # 30 items at a net 1 item/s
    assert row.exhausted_in_s == (30 + 100) / 2.0
    assert "running_dry" in row.attention


@pytest.mark.parametrize(
    ("setup", "reasons"),
    [
        ("full", ()),
        ("empty", ("empty",)),
        ("low", ("low",)),
        ("not_a_list", ("not_a_list",)),
        ("dead", ("dead_letters",)),
        ("acks", ("acks_backlog",)),
        ("lock_without_ttl", ("lock_without_ttl",)),
        ("no_rows_low", ("low", "no_available_rows")),
    ],
)
def test_attention_reasons(backend: Backend, setup: str, reasons: tuple[str, ...]) -> None:
    client = backend.redis_client
    keys = backend.store.keys("titles", 1)
    available = 0 if setup == "no_rows_low" else 100
    load_rows(backend.db, "titles", rows_for({1: available or 1}))
    if setup == "no_rows_low":
        backend.db.mark_consumed("titles", [row[0] for row in backend.db.query("SELECT id FROM titles")])
    settings = make_settings(backend.settings, acks={"batch": 10})
    items = {"full": 50, "low": 5, "no_rows_low": 5}.get(setup, 30)
    if setup == "not_a_list":
        client.set(keys.pool, "oops")
    elif setup != "empty":
        client.lpush(keys.pool, *[f'{{"id": {n}, "text": "t"}}' for n in range(items)])
    if setup == "dead":
        client.lpush(keys.dead, b"junk")
    if setup == "acks":
        client.lpush(keys.acks, *range(21))
    if setup == "lock_without_ttl":
        client.set(keys.lock, "someone:1:abc")
    rows = collect_stats(settings, backend.store, backend.db, ["titles"], 1)
    assert rows[0].attention == reasons, rows[0]


def test_stats_dict_has_documented_keys(backend: Backend) -> None:
    fill_titles(backend, {1: 10})
    data = row_for(backend, 1).to_dict()
    assert set(data) == {
        "pool_type", "group", "length", "size", "threshold", "fill_percent", "acks", "dead", "lock_owner",
        "lock_ttl_s", "available", "queued", "consumed", "pop_rate", "fill_rate", "empty_in_s", "exhausted_in_s",
        "attention",
    }
    assert data["attention"] == ["low", "no_available_rows"]  # 10 rows, all in the pool, threshold 10
