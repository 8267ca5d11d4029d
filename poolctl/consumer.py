"""The consumer library: pop items so that each one is used once and recorded as consumed.

    from poolctl import PoolConsumer

    with PoolConsumer() as consumer:
        item = consumer.pop_with_fallback("titles", 3)
        if item is not None:
            render(item.text)

A pop takes the item from the pool and records its id in the pool's acks list
in one atomic Redis step. Acks reach SQL in batches: every `acks.batch` pops
or `acks.interval_s` seconds, and on close. A consumer that dies after a pop
leaves the ack in Redis, where the next flush by any consumer or by
`poolctl fill --watch` finds it.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType

from poolctl.acks import flush_acks
from poolctl.config import Settings, load_settings
from poolctl.errors import PoolctlError, RedisUnavailable, ServiceUnavailable
from poolctl.items import Item, MalformedItem, decode_item
from poolctl.keys import PoolKeys
from poolctl.sql import Database, connect_database
from poolctl.store import PopResult, RedisStore

log = logging.getLogger(__name__)

# A consumer that cannot reach SQL logs the failed flush at most this often.
FLUSH_WARNING_INTERVAL_S = 30.0


class PoolConsumer:
    """Pops items from pools, records their acks and flushes them to SQL in batches."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: RedisStore | None = None,
        db: Database | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self.store = store or RedisStore.from_settings(self.settings)
        self._db = db
        self._pending: dict[PoolKeys, int] = {}
        self._last_flush = time.monotonic()
        self._last_flush_warning = 0.0

    @property
    def db(self) -> Database:
        """The SQL connection, opened on first use: a pop that never falls back or flushes needs none."""
        if self._db is None:
            self._db = connect_database(self.settings)
        return self._db

    # -- popping -----------------------------------------------------------

    def pop(self, pool_type: str, group: int) -> Item | None:
        """Pop one item from the pool, or return None when the pool is empty."""
        items = self.pop_many(pool_type, group, 1)
        return items[0] if items else None

    def pop_many(self, pool_type: str, group: int, count: int) -> list[Item]:
        """Pop up to count items in one round trip; fewer (or none) when the pool runs out."""
        self.settings.pool(pool_type)  # raises UnknownPoolType
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        keys = self.store.keys(pool_type, group)
        result = self.store.pop(keys, count)
        items = self._decode(keys, result)
        self._after_pop(keys, result.acks)
        return items

    def pop_with_fallback(self, pool_type: str, group: int) -> Item | None:
        """Pop from the pool; when it is empty or Redis is unreachable, take an available row from SQL.

        A row taken from SQL is marked consumed in the same transaction that
        selects it, and never one that is queued for a pool. Returns None only
        when both the pool and SQL have nothing.
        """
        try:
            item = self.pop(pool_type, group)
        except RedisUnavailable as exc:
            log.warning("pool %s group %d: Redis unreachable, popping from SQL (%s)", pool_type, group, exc.message)
            item = None
        if item is not None:
            return item
        row = self.db.claim_for_consumer(pool_type, group)
        return Item(row.id, row.text, source="sql") if row else None

    def _decode(self, keys: PoolKeys, result: PopResult) -> list[Item]:
        if result.dead:
            log.error("pool %s group %d: %d malformed items moved to %s", keys.pool_type, keys.group, result.dead, keys.dead)
        items = []
        for raw in result.raw:
            try:
                items.append(decode_item(raw))
            except MalformedItem as exc:
                # The Lua check passed but Python rejects it (invalid UTF-8, say):
                # keep it for the operator rather than lose it.
                log.error("pool %s group %d: malformed item set aside in %s: %s", keys.pool_type, keys.group, keys.dead, exc)
                self.store.dead_letter(keys, [raw])
        return items

    # -- acks --------------------------------------------------------------

    def _after_pop(self, keys: PoolKeys, acks: int) -> None:
        self._pending[keys] = acks
        due = time.monotonic() - self._last_flush >= self.settings.acks.interval_s
        if acks >= self.settings.acks.batch or due:
            self.flush_acks()

    def flush_acks(self) -> int:
        """Mark every pending ack of the pools this consumer popped consumed in SQL; return how many.

        When SQL is unreachable the acks stay in Redis and a warning is logged;
        they are flushed later by this consumer or by `poolctl fill --watch`.
        """
        self._last_flush = time.monotonic()
        flushed = 0
        for keys, pending in list(self._pending.items()):
            if pending <= 0:
                continue
            try:
                flushed += flush_acks(self.store, self.db, keys, self.settings.acks.batch)
            except ServiceUnavailable as exc:
                self._warn_flush_failed(keys, exc)
                continue
            self._pending[keys] = 0
        return flushed

    def _warn_flush_failed(self, keys: PoolKeys, exc: PoolctlError) -> None:
        now = time.monotonic()
        if now - self._last_flush_warning >= FLUSH_WARNING_INTERVAL_S:
            self._last_flush_warning = now
            log.warning("pool %s group %d: ack flush failed, acks stay in Redis: %s", keys.pool_type, keys.group, exc.message)

    # -- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        """Flush pending acks and close the connections."""
        try:
            self.flush_acks()
        finally:
            if self._db is not None:
                self._db.close()
            self.store.client.close()

    def __enter__(self) -> PoolConsumer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
