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

The consumer also remembers the ids it popped until a flush confirms them. If
Redis loses the acks (a restart without persistence), the consumer marks those
ids consumed in SQL itself: at once when a pop finds Redis down, or else at
the flush after next. A consumer that dies while Redis loses its data takes
that memory with it: its popped items stay queued and reconcile restores
them, so they can be handed out again.

NOTE: a Redis that restarts between two pops of a consumer, so that the
consumer never sees it down, leaves a window of up to two flush intervals in
which a fill that reconciles the lost pool can restore and hand out again an
item this consumer already has.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType

from poolctl.acks import flush_acks
from poolctl.config import Settings, load_settings
from poolctl.errors import PoolctlError, RedisUnavailable, ServiceUnavailable
from poolctl.items import Item, decode_popped
from poolctl.keys import PoolKeys
from poolctl.sql import Database, connect_database
from poolctl.store import PopResult, RedisStore

log = logging.getLogger(__name__)

# A consumer that cannot reach SQL logs the failed flush at most this often.
FLUSH_WARNING_INTERVAL_S = 30.0
# After Redis failed, pop_with_fallback goes straight to SQL for this long
# before it tries Redis again, so that a batch of pops does not wait for one
# connect timeout each.
REDIS_RETRY_S = 1.0
# Popped ids remembered per pool until a flush confirms them. Beyond this the
# oldest are forgotten; their acks are still in Redis unless Redis also loses
# its data.
UNCONFIRMED_MAX = 100_000


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
        self._unconfirmed: dict[PoolKeys, list[int]] = {}  # popped since the last flush
        self._suspects: dict[PoolKeys, list[int]] = {}  # popped before it, and not seen by it
        self._last_flush = time.monotonic()
        self._last_flush_warning = 0.0
        self._redis_retry_at = 0.0  # while in the future, pop_with_fallback skips Redis

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
        try:
            result = self.store.pop(keys, count)
        except RedisUnavailable:
            self._confirm_in_sql()
            raise
        items = self._decode(keys, result)
        self._remember(keys, [item.id for item in items])
        self._after_pop(keys, result.acks)
        return items

    def pop_with_fallback(self, pool_type: str, group: int) -> Item | None:
        """Pop from the pool; when it is empty or Redis is unreachable, take an available row from SQL.

        A row taken from SQL is marked consumed in the same transaction that
        selects it, and never one that is queued for a pool. Returns None only
        when both the pool and SQL have nothing.
        """
        item = None
        if time.monotonic() >= self._redis_retry_at:
            try:
                item = self.pop(pool_type, group)
            except RedisUnavailable as exc:
                if self._redis_retry_at == 0.0:
                    log.warning("Redis unreachable, popping from SQL until it is back (%s)", exc.message)
                self._redis_retry_at = time.monotonic() + REDIS_RETRY_S
            else:
                if self._redis_retry_at:
                    log.info("Redis is back, popping from pools again")
                self._redis_retry_at = 0.0
        if item is not None:
            return item
        row = self.db.claim_for_consumer(pool_type, group)
        return Item(row.id, row.text, source="sql") if row else None

    def _decode(self, keys: PoolKeys, result: PopResult) -> list[Item]:
        if result.dead:
            log.error("pool %s group %d: %d malformed items moved to %s", keys.pool_type, keys.group, result.dead, keys.dead)
        items, rejected = decode_popped(result.joined, result.ids, result.lengths)
        for item_id, raw, reason in rejected:
            # The Lua check passed but Python rejects it (invalid UTF-8,
            # say): keep it for the operator, and take back its ack so
            # that SQL does not get it as consumed.
            log.error("pool %s group %d: malformed item set aside in %s: %s", keys.pool_type, keys.group, keys.dead, reason)
            self.store.set_aside(keys, item_id, raw)
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
        for keys in list(self._pending.keys() | self._unconfirmed.keys() | self._suspects.keys()):
            try:
                if self._pending.get(keys, 0) > 0:
                    done = flush_acks(self.store, self.db, keys, self.settings.acks.batch)
                    flushed += len(done)
                    self._pending[keys] = 0
                else:
                    done = []
                self._check_suspects(keys)
                # Remembered ids this flush did not see were flushed by another
                # consumer, are still waiting in a long acks list, or lost
                # their acks with Redis data. The next flush checks which of them SQL
                # still has as queued.
                confirmed = set(done)
                self._suspects[keys] = [item for item in self._unconfirmed.pop(keys, []) if item not in confirmed]
            except ServiceUnavailable as exc:
                self._warn_flush_failed(keys, exc)
        return flushed

    def _remember(self, keys: PoolKeys, ids: list[int]) -> None:
        remembered = self._unconfirmed.setdefault(keys, [])
        remembered.extend(ids)
        if len(remembered) > UNCONFIRMED_MAX:
            del remembered[: len(remembered) - UNCONFIRMED_MAX]

    def _check_suspects(self, keys: PoolKeys) -> None:
        """Mark consumed the suspects that SQL still has as queued one flush later: their acks were lost."""
        suspects = self._suspects.get(keys)
        if not suspects:
            return
        lost = self._mark_queued_consumed(keys, suspects)
        if lost:
            log.warning(
                "pool %s group %d: %d popped items lost their acks in Redis; marked consumed from this consumer's memory",
                keys.pool_type, keys.group, lost,
            )
        self._suspects[keys] = []

    def _mark_queued_consumed(self, keys: PoolKeys, ids: list[int]) -> int:
        statuses = self.db.statuses(keys.pool_type, ids)
        queued = [item for item in ids if statuses.get(item) == self.settings.status.queued]
        if queued:
            self.db.mark_consumed(keys.pool_type, queued)
        return len(queued)

    def _confirm_in_sql(self) -> None:
        """Mark every remembered id consumed in SQL now: Redis is down, and its acks may be gone with it."""
        for keys in list(self._unconfirmed.keys() | self._suspects.keys()):
            ids = self._unconfirmed.pop(keys, []) + self._suspects.pop(keys, [])
            try:
                marked = self._mark_queued_consumed(keys, ids) if ids else 0
            except ServiceUnavailable as exc:
                self._unconfirmed.setdefault(keys, []).extend(ids)
                self._warn_flush_failed(keys, exc)
                return
            if marked:
                log.info(
                    "pool %s group %d: Redis unreachable, %d popped items marked consumed in SQL directly",
                    keys.pool_type, keys.group, marked,
                )

    def _confirm_remaining(self) -> None:
        # No later flush will check them, so check them now. Those still queued
        # are mostly in another consumer's flush at this moment, and marking
        # them consumed twice is harmless.
        for keys in list(self._suspects.keys()):
            try:
                self._mark_queued_consumed(keys, self._suspects.pop(keys))
            except ServiceUnavailable as exc:
                self._warn_flush_failed(keys, exc)

    def _warn_flush_failed(self, keys: PoolKeys, exc: PoolctlError) -> None:
        now = time.monotonic()
        if now - self._last_flush_warning >= FLUSH_WARNING_INTERVAL_S:
            self._last_flush_warning = now
            log.warning("pool %s group %d: ack flush failed, acks stay in Redis: %s", keys.pool_type, keys.group, exc.message)

    # -- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        """Flush pending acks, confirm the remembered ids in SQL, and close the connections."""
        try:
            self.flush_acks()
            self._confirm_remaining()
        finally:
            if self._db is not None:
                self._db.close()
            self.store.close()

    def __enter__(self) -> PoolConsumer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
