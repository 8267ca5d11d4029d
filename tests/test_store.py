"""The Redis step contracts, on fakeredis and on the real Redis."""

from __future__ import annotations

import json
import random

import pytest

from poolctl.errors import LockLost, WrongKeyType
from poolctl.items import encode_item
from poolctl.store import LockedPool, PoolOverflow

from conftest import Backend


@pytest.fixture(params=["sqlite_fake", "mariadb_redis"])
def redis_backend(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(request.param)


def push_items(backend: Backend, ids: list[int], token: str = "me", size: int = 100) -> int:
    keys = backend.store.keys("titles", 1)
    return backend.store.push(keys, token, 10, size, ids, [encode_item(i, f"text {i}") for i in ids])


def test_lock_only_owner_releases(redis_backend: Backend) -> None:
    store = redis_backend.store
    keys = store.keys("titles", 1)
    assert store.acquire_lock(keys, "owner-a", 10) == LockedPool(0, 0, False)
    assert store.acquire_lock(keys, "owner-b", 10) is None
    assert not store.release_lock(keys, "owner-b")
    assert not store.extend_lock(keys, "owner-b", 10)
    assert store.extend_lock(keys, "owner-a", 10)
    assert store.release_lock(keys, "owner-a")
    assert store.acquire_lock(keys, "owner-b", 10) == LockedPool(0, 0, False)


def test_lock_returns_pool_state_under_lock(redis_backend: Backend) -> None:
    store = redis_backend.store
    client = redis_backend.redis_client
    keys = store.keys("titles", 1)
    client.lpush(keys.pool, b"a", b"b")
    client.sadd(keys.claiming, b"7", b"8", b"9")
    client.set(keys.sentinel, b"someone")
    assert store.acquire_lock(keys, "owner-a", 10) == LockedPool(length=2, claims=3, has_sentinel=True)


def test_lock_not_left_on_wrong_type_pool(redis_backend: Backend) -> None:
    store = redis_backend.store
    keys = store.keys("titles", 1)
    redis_backend.redis_client.set(keys.pool, b"a string")
    with pytest.raises(WrongKeyType) as caught:
        store.acquire_lock(keys, "owner-a", 10)
    assert caught.value.key == keys.pool
    assert redis_backend.redis_client.exists(keys.lock) == 0


def test_lock_always_has_ttl(redis_backend: Backend) -> None:
    store = redis_backend.store
    keys = store.keys("titles", 1)
    store.acquire_lock(keys, "owner-a", 7)
    ttl_ms = redis_backend.redis_client.pttl(keys.lock)
    assert 0 < ttl_ms <= 7000


def test_push_requires_lock_owner(redis_backend: Backend) -> None:
    store = redis_backend.store
    keys = store.keys("titles", 1)
    store.acquire_lock(keys, "someone-else", 10)
    with pytest.raises(LockLost):
        push_items(redis_backend, [1, 2, 3], token="me")
    assert redis_backend.redis_client.llen(keys.pool) == 0


def test_push_never_exceeds_size(redis_backend: Backend) -> None:
    store = redis_backend.store
    keys = store.keys("titles", 1)
    store.acquire_lock(keys, "me", 10)
    assert push_items(redis_backend, [1, 2, 3], size=4) == 3
    with pytest.raises(PoolOverflow):
        push_items(redis_backend, [4, 5], size=4)
    assert redis_backend.redis_client.llen(keys.pool) == 3


def test_push_keeps_fill_order_for_rpop(redis_backend: Backend) -> None:
    store = redis_backend.store
    keys = store.keys("titles", 1)
    store.acquire_lock(keys, "me", 10)
    ids = list(range(1, 2501))  # more than one Lua chunk of 1000
    push_items(redis_backend, ids, size=5000)
    popped = [json.loads(raw)["id"] for raw in redis_backend.redis_client.rpop(keys.pool, 2500)]
    assert popped == ids


def test_push_clears_claim_record(redis_backend: Backend) -> None:
    store = redis_backend.store
    keys = store.keys("titles", 1)
    store.acquire_lock(keys, "me", 10)
    assert store.record_claim(keys, "me", 10, [1, 2, 3])
    assert redis_backend.redis_client.smembers(keys.claiming) == {b"1", b"2", b"3"}
    push_items(redis_backend, [1, 2, 3])
    assert redis_backend.redis_client.exists(keys.claiming) == 0


def test_record_claim_requires_lock_owner(redis_backend: Backend) -> None:
    store = redis_backend.store
    keys = store.keys("titles", 1)
    store.acquire_lock(keys, "other", 10)
    assert not store.record_claim(keys, "me", 10, [1, 2])
    assert redis_backend.redis_client.exists(keys.claiming) == 0


def test_pop_records_ack_atomically(redis_backend: Backend) -> None:
    store = redis_backend.store
    keys = store.keys("titles", 1)
    store.acquire_lock(keys, "me", 10)
    push_items(redis_backend, [10, 11, 12])
    result = store.pop(keys, 2)
    assert [json.loads(raw)["id"] for raw in result.raw] == [10, 11]
    assert result.ids == [10, 11]
    assert result.acks == 2
    assert redis_backend.redis_client.llen(keys.pool) == 1
    assert redis_backend.redis_client.lrange(keys.acks, 0, -1) == [b"11", b"10"]


def test_pop_empty_pool_returns_nothing(redis_backend: Backend) -> None:
    result = redis_backend.store.pop(redis_backend.store.keys("titles", 1), 5)
    assert result.raw == []
    assert result.acks == 0


@pytest.mark.parametrize(
    "bad",
    [b"not json", b"[1, 2]", b'{"text": "no id"}', b'{"id": "7", "text": "string id"}', b'{"id": 7}',
     b'{"id": -1, "text": "negative"}', b'{"id": 1.5, "text": "fraction"}', b'{"id": 7, "text": 5}',
     b'{"id": 1e3, "text": "exponent"}', b'{"id": 7.0, "text": "float"}', b'{"id": true, "text": "bool"}',
     b'{"id": 7, "text": null}', b'"just a string"', b"", b'{"id":7,"text":"raw\nnewline"}'],
)
def test_pop_moves_malformed_item_to_dead(redis_backend: Backend, bad: bytes) -> None:
    client = redis_backend.redis_client
    keys = redis_backend.store.keys("titles", 1)
    client.lpush(keys.pool, encode_item(1, "good"))
    client.rpush(keys.pool, bad)  # at the tail, so popped first
    result = redis_backend.store.pop(keys, 1)
    assert [json.loads(raw)["id"] for raw in result.raw] == [1]
    assert result.dead == 1
    assert client.lrange(keys.dead, 0, -1) == [bad]
    assert client.lrange(keys.acks, 0, -1) == [b"1"]


def test_trim_acks_removes_only_flushed(redis_backend: Backend) -> None:
    client = redis_backend.redis_client
    store = redis_backend.store
    keys = store.keys("titles", 1)
    client.lpush(keys.acks, b"1", b"2", b"3")  # list: 3 2 1, oldest (1) at the tail
    read = store.read_acks(keys, 2)
    assert read == [b"2", b"1"]
    client.lpush(keys.acks, b"4")  # a new ack arrives meanwhile
    assert store.trim_acks(keys, read) == 2
    assert client.lrange(keys.acks, 0, -1) == [b"4", b"3"]


def test_trim_acks_after_other_flusher(redis_backend: Backend) -> None:
    client = redis_backend.redis_client
    store = redis_backend.store
    keys = store.keys("titles", 1)
    client.lpush(keys.acks, b"1", b"2", b"3")
    first = store.read_acks(keys, 2)
    second = store.read_acks(keys, 2)
    assert store.trim_acks(keys, first) == 2
    assert store.trim_acks(keys, second) == 0  # already gone: nothing else is removed
    assert client.lrange(keys.acks, 0, -1) == [b"3"]


def _remove_nearest_tail(entries: list[bytes], ids: list[bytes]) -> int:
    """The model of an ack trim: each id loses its occurrence nearest the tail, as LREM with a count of -1."""
    removed = 0
    for value in ids:
        for index in range(len(entries) - 1, -1, -1):
            if entries[index] == value:
                del entries[index]
                removed += 1
                break
    return removed


@pytest.mark.parametrize("seed", range(6))
def test_trim_acks_races_match_lrem_model(redis_backend: Backend, seed: int) -> None:
    """Flushers whose reads overlap, new acks and set-aside entries: every trim removes what LREM would, in order."""
    rng = random.Random(seed)
    client = redis_backend.redis_client
    store = redis_backend.store
    keys = store.keys("titles", 1)
    model: list[bytes] = []  # head first, as LRANGE 0 -1
    next_id = 1

    def push(count: int) -> None:
        nonlocal next_id
        if count == 0:
            return
        values = [str(next_id + i).encode() for i in range(count)]
        next_id += count
        client.lpush(keys.acks, *values)
        model[:0] = values[::-1]

    push(rng.randint(5, 40))
    for _ in range(25):
        reads = [store.read_acks(keys, rng.randint(1, 30)) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.5:
            push(rng.randint(1, 10))
        if model and rng.random() < 0.3:  # a consumer sets aside one popped entry: its ack goes
            victim = rng.choice(model)
            store.set_aside(keys, int(victim), b"{bad")
            model.remove(victim)
        rng.shuffle(reads)
        for read in reads:
            expected = _remove_nearest_tail(model, read)
            assert store.trim_acks(keys, read) == expected
            assert client.lrange(keys.acks, 0, -1) == model
        if any(reads):  # a trim stamps acks_since, or drops it with the last ack
            assert (client.get(keys.acks_since) is None) == (not model)
        push(rng.randint(0, 10))


def test_trim_acks_keeps_malformed_entries_in_order(redis_backend: Backend) -> None:
    """The per-argument trim (an entry that is not an id was read) removes only the ids, around newer acks."""
    client = redis_backend.redis_client
    store = redis_backend.store
    keys = store.keys("titles", 1)
    client.lpush(keys.acks, b"1", b"x", b"2", b"3")  # list: 3 2 x 1
    read = store.read_acks(keys, 3)
    assert read == [b"2", b"x", b"1"]
    other = store.read_acks(keys, 1)
    assert store.trim_acks(keys, other) == 1
    client.lpush(keys.acks, b"4")
    assert store.trim_acks(keys, read) == 2  # 1 went with the other flush
    assert client.lrange(keys.acks, 0, -1) == [b"4", b"3"]


def test_trim_acks_behind_long_backlog(mariadb_redis: Backend) -> None:
    """Two flushers over 100,000 waiting acks: the late trim removes only what is left of its read."""
    client = mariadb_redis.redis_client
    store = mariadb_redis.store
    keys = store.keys("titles", 1)
    total = 100_000
    for first in range(1, total + 1, 10_000):
        client.lpush(keys.acks, *[str(i).encode() for i in range(first, first + 10_000)])
    late = store.read_acks(keys, 5000)
    early = store.read_acks(keys, 3000)
    assert store.trim_acks(keys, early) == 3000
    assert store.trim_acks(keys, late) == 2000
    assert client.llen(keys.acks) == total - 5000
    assert client.lindex(keys.acks, -1) == b"5001"
    assert client.lindex(keys.acks, 0) == str(total).encode()


def test_lengths_marks_wrong_type(redis_backend: Backend) -> None:
    client = redis_backend.redis_client
    store = redis_backend.store
    good, bad = store.keys("titles", 1), store.keys("titles", 2)
    client.lpush(good.pool, b"x", b"y")
    client.lpush(good.acks, b"1")
    client.set(bad.pool, "a string")
    lengths = store.lengths([good, bad])
    assert [(length.pool, length.acks) for length in lengths] == [(2, 1), (-1, 0)]


def test_pop_from_wrong_type_names_key(redis_backend: Backend) -> None:
    keys = redis_backend.store.keys("titles", 1)
    redis_backend.redis_client.hset(keys.pool, "field", "value")
    with pytest.raises(WrongKeyType) as caught:
        redis_backend.store.pop(keys, 1)
    assert keys.pool in caught.value.message
    assert "hash" in caught.value.message


def test_locks_listing_shows_owner_and_ttl(redis_backend: Backend) -> None:
    store = redis_backend.store
    store.acquire_lock(store.keys("titles", 3), "host:1:abc", 30)
    store.acquire_lock(store.keys("contents", 12), "host:2:def", 30)
    found = [(lock.pool_type, lock.group, lock.owner) for lock in store.locks()]
    assert found == [("contents", 12, "host:2:def"), ("titles", 3, "host:1:abc")]
    assert all(0 < lock.ttl_s <= 30 for lock in store.locks())


@pytest.mark.parametrize("text", ["plain", "标题", 'quote " backslash \\ slash /', "control \n\t\x00\x1f", "\u2028\u2029 😀", ""])
def test_encode_item_is_compact_json(text: str) -> None:
    """The pool format the Go consumer reads: json.dumps with compact separators and no ASCII escaping."""
    assert encode_item(42, text) == json.dumps({"id": 42, "text": text}, ensure_ascii=False, separators=(",", ":"))
