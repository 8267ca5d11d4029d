"""PoolConsumer on both backends: pops, acks reaching SQL, and the SQL fallback."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable

import pytest

from poolctl.consumer import PoolConsumer
from poolctl.errors import RedisUnavailable, UnknownPoolType
from poolctl.fill import Filler
from poolctl.items import Item, encode_item
from poolctl.store import RedisStore

from conftest import Backend, load_rows, make_settings, status_of


def filled(backend: Backend, count: int = 30) -> None:
    load_rows(backend.db, "titles", [(1, 1, f"item {n}") for n in range(count)])
    filler = Filler(backend.settings, backend.store, backend.db)
    filler.run_pass(filler.discover(["titles"]))


def consumer_for(backend: Backend, **acks: object) -> PoolConsumer:
    settings = make_settings(backend.settings, acks=acks) if acks else backend.settings
    return PoolConsumer(settings, store=backend.store, db=backend.db)


def test_pop_returns_items_in_fill_order(backend: Backend) -> None:
    filled(backend)
    consumer = consumer_for(backend)
    first, second = consumer.pop("titles", 1), consumer.pop("titles", 1)
    assert first is not None and second is not None
    assert (first.text, second.text) == ("item 0", "item 1")
    assert first.source == "pool"


def test_pop_empty_pool_returns_none(backend: Backend) -> None:
    assert consumer_for(backend).pop("titles", 1) is None


def test_pop_unknown_pool_type_raises(backend: Backend) -> None:
    with pytest.raises(UnknownPoolType):
        consumer_for(backend).pop("headlines", 1)


def test_acks_reach_sql_in_batches(backend: Backend) -> None:
    filled(backend)
    consumer = consumer_for(backend, batch=5, interval_s=3600, background=False)
    items = [consumer.pop("titles", 1) for _ in range(4)]
    statuses = status_of(backend.db, "titles")
    assert all(statuses[item.id] == backend.settings.status.queued for item in items)
    items.append(consumer.pop("titles", 1))  # the fifth ack fills the batch
    statuses = status_of(backend.db, "titles")
    assert all(statuses[item.id] == backend.settings.status.consumed for item in items)


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_background_flusher_marks_batch_consumed_without_blocking_pops(backend: Backend) -> None:
    filled(backend)
    consumer = consumer_for(backend, batch=5, interval_s=3600)
    items = [consumer.pop("titles", 1) for _ in range(5)]  # the fifth pop wakes the flusher
    assert consumer._flusher is not None and consumer._flusher.is_alive()
    consumed = backend.settings.status.consumed
    assert wait_for(lambda: all(status_of(backend.db, "titles")[item.id] == consumed for item in items))
    assert wait_for(lambda: backend.redis_client.llen(backend.store.keys("titles", 1).acks) == 0)
    consumer.close()
    assert consumer._flusher is None


def test_background_flusher_flushes_on_its_interval(backend: Backend) -> None:
    filled(backend)
    consumer = consumer_for(backend, batch=1000, interval_s=0.2)
    time.sleep(0.25)
    first = consumer.pop("titles", 1)  # due by time: wakes the flusher
    second = consumer.pop("titles", 1)  # not a batch, not due: left to the flusher's next interval
    consumed = backend.settings.status.consumed
    assert first is not None and second is not None
    assert wait_for(lambda: [status_of(backend.db, "titles")[item.id] for item in (first, second)] == [consumed] * 2)
    consumer.close()


def test_threads_sharing_a_consumer_pop_each_item_once(backend: Backend) -> None:
    filled(backend, count=50)  # the test pools hold 50
    consumer = consumer_for(backend, batch=7, interval_s=0.05)
    popped: list[int] = []

    def drain() -> None:
        while items := consumer.pop_many("titles", 1, 3):
            popped.extend(item.id for item in items)

    threads = [threading.Thread(target=drain) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    consumer.flush_acks()  # one at a time with the flusher thread, which may be flushing too
    assert len(popped) == len(set(popped)) == 50
    statuses = status_of(backend.db, "titles")
    assert {statuses[item] for item in popped} == {backend.settings.status.consumed}
    assert backend.redis_client.llen(backend.store.keys("titles", 1).acks) == 0
    consumer.close()


def test_pop_after_close_raises(backend: Backend) -> None:
    filled(backend)
    consumer = consumer_for(backend)
    consumer.close()
    with pytest.raises(RuntimeError, match="closed"):
        consumer.pop("titles", 1)
    assert backend.redis_client.llen(backend.store.keys("titles", 1).acks) == 0


def test_close_flushes_acks(backend: Backend) -> None:
    filled(backend)
    consumer = consumer_for(backend, batch=100, interval_s=3600)
    items = consumer.pop_many("titles", 1, 7)
    consumer.flush_acks()
    statuses = status_of(backend.db, "titles")
    assert [statuses[item.id] for item in items] == [backend.settings.status.consumed] * 7
    assert backend.redis_client.llen(backend.store.keys("titles", 1).acks) == 0


def test_fallback_when_pool_empty(backend: Backend) -> None:
    load_rows(backend.db, "titles", [(1, 1, "only in SQL")])
    item = consumer_for(backend).pop_with_fallback("titles", 1)
    assert item is not None
    assert (item.text, item.source) == ("only in SQL", "sql")
    assert status_of(backend.db, "titles")[item.id] == backend.settings.status.consumed


def test_fallback_never_takes_queued_item(backend: Backend) -> None:
    filled(backend, count=3)  # all three queued in the pool
    keys = backend.store.keys("titles", 1)
    backend.redis_client.delete(keys.pool)  # the pool is gone, the rows are still queued
    assert consumer_for(backend).pop_with_fallback("titles", 1) is None


def test_fallback_when_redis_down(backend: Backend) -> None:
    load_rows(backend.db, "titles", [(1, 1, "from SQL")])
    settings = make_settings(backend.settings, redis={"url": "redis://127.0.0.1:1/0", "connect_timeout_s": 0.5})
    consumer = PoolConsumer(settings, store=RedisStore.from_settings(settings), db=backend.db)
    with pytest.raises(RedisUnavailable):
        consumer.pop("titles", 1)
    item = consumer.pop_with_fallback("titles", 1)
    assert item is not None and item.source == "sql"


def test_malformed_item_never_handed_out(backend: Backend) -> None:
    keys = backend.store.keys("titles", 1)
    backend.redis_client.lpush(keys.pool, encode_item(5, "good"))
    backend.redis_client.rpush(keys.pool, b'{"id": "five"}')
    item = consumer_for(backend).pop("titles", 1)
    assert item is not None and item.id == 5
    assert backend.redis_client.lrange(keys.dead, 0, -1) == [b'{"id": "five"}']


def test_go_style_rpop_reads_pool(backend: Backend) -> None:
    """A consumer that knows only the key, RPOP and the JSON reads a poolctl pool."""
    filled(backend, count=3)
    raw = backend.redis_client.rpop(backend.settings.redis.key_prefix + "titles:pool:1")
    item = json.loads(raw)
    assert set(item) == {"id", "text"}
    assert isinstance(item["id"], int)
    assert item["text"] == "item 0"


@pytest.mark.parametrize(
    "bad",
    [
        b'{"id":7,"text":"a"b"}',  # the form poolctl writes, but not JSON
        b'{"id":7,"text":"x","id":8,"text":"y"}',  # JSON whose id (the last one) is not the id acked
        b'{"id":7,"text":"\xff"}',  # not UTF-8
        b'{"id":7,"text":"x"},{"id":8,"text":"y"}',  # two items in one entry
    ],
)
def test_pop_many_sets_aside_what_python_rejects(backend: Backend, bad: bytes) -> None:
    keys = backend.store.keys("titles", 1)
    client = backend.redis_client
    client.rpush(keys.pool, encode_item(9, 'comma, newline\n and "quotes"}'), bad, encode_item(5, "plain"))
    items = consumer_for(backend, batch=100, interval_s=3600).pop_many("titles", 1, 3)
    assert [(item.id, item.text) for item in items] == [(5, "plain"), (9, 'comma, newline\n and "quotes"}')]
    assert client.lrange(keys.dead, 0, -1) == [bad]
    assert sorted(client.lrange(keys.acks, 0, -1)) == [b"5", b"9"]


@pytest.mark.parametrize("count", [1, 3])
def test_pop_falls_back_to_json_module(backend: Backend, count: int) -> None:
    """orjson refuses a lone surrogate escape; the entry-by-entry parse with the json module still hands it out."""
    keys = backend.store.keys("titles", 1)
    client = backend.redis_client
    client.lpush(keys.pool, b'{"id":21,"text":"half \\ud800 pair"}', encode_item(22, "plain"), encode_item(23, "end"))
    consumer = consumer_for(backend, batch=100, interval_s=3600)
    items = consumer.pop_many("titles", 1, count)
    assert [(item.id, item.text) for item in items] == [(21, "half \ud800 pair"), (22, "plain"), (23, "end")][:count]
    assert all(type(item) is Item and item.source == "pool" for item in items)
    assert client.llen(keys.dead) == 0


def test_pop_many_reads_items_other_writers_format(backend: Backend) -> None:
    keys = backend.store.keys("titles", 1)
    backend.redis_client.rpush(keys.pool, b'{ "text": "spaced", "id": 12 }', encode_item(11, "compact"))
    items = consumer_for(backend, batch=100, interval_s=3600).pop_many("titles", 1, 5)
    assert [(item.id, item.text) for item in items] == [(11, "compact"), (12, "spaced")]


def test_flush_at_batch_limit_leaves_no_suspects(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Ids a flush could not read for its batch limit wait for the next flush, not for a check in SQL."""
    import poolctl.acks
    import poolctl.consumer

    monkeypatch.setattr(poolctl.acks, "MAX_BATCHES_PER_FLUSH", 1)
    monkeypatch.setattr(poolctl.consumer, "MAX_BATCHES_PER_FLUSH", 1)
    filled(backend)
    consumer = consumer_for(backend, batch=5, interval_s=3600, background=False)
    with caplog.at_level("WARNING", logger="poolctl"):
        items = consumer.pop_many("titles", 1, 12)  # 12 acks: the flush it triggers reads 5
        consumer.flush_acks()  # 5 more
        consumer.flush_acks()  # the last 2
        consumer.flush_acks()
    assert len(items) == 12
    assert backend.redis_client.llen(backend.store.keys("titles", 1).acks) == 0
    statuses = status_of(backend.db, "titles")
    assert [statuses[item.id] for item in items] == [backend.settings.status.consumed] * 12
    assert not [record for record in caplog.records if "lost their acks" in record.getMessage()]


def test_forked_child_pops_on_its_own_connection(mariadb_redis: Backend) -> None:
    """A consumer used before a fork keeps working in parent and child at once, and no item reaches both."""
    backend = mariadb_redis
    keys = backend.store.keys("titles", 1)
    backend.redis_client.rpush(keys.pool, *[encode_item(n, f"item {n}") for n in range(1, 2001)])
    settings = make_settings(backend.settings, acks={"batch": 100_000, "interval_s": 3600})
    consumer = PoolConsumer(settings)  # its own connections, as an application would have
    first = consumer.pop("titles", 1)  # opens the pop connection before the fork
    assert first is not None

    def drain() -> list[int]:
        ids = []
        while (item := consumer.pop("titles", 1)) is not None:
            ids.append(item.id)
        return ids

    go_read, go_write = os.pipe()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: pop once the parent writes to the pipe, report the ids, exit at once
        code = 1
        try:
            os.close(read_end)
            os.read(go_read, 1)
            os.write(write_end, json.dumps(drain()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    os.write(go_write, b"x")
    parent_ids = drain()
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end) as pipe:
        child_ids = json.loads(pipe.read() or "null")
    backend.redis_client.delete(keys.acks)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_ids and parent_ids
    popped = [first.id, *child_ids, *parent_ids]
    assert sorted(popped) == list(range(1, 2001))
