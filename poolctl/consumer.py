"""The consumer library: pop items so that each one is used once and recorded as consumed.

    from poolctl import PoolConsumer

    with PoolConsumer() as consumer:
        item = consumer.pop_with_fallback("titles", 3)
        if item is not None:
            render(item.text)

A pop takes the item from the pool and records its id in the pool's acks list
in one atomic Redis step. Acks reach SQL in batches: every `acks.batch` pops
or `acks.interval_s` seconds, and on close. The flushes run in a thread the
consumer starts when the first one is due, with a SQL connection of its own,
so that a pop never waits for SQL (`acks.background = false` flushes in the
popping thread instead). A consumer that dies after a pop leaves the ack in
Redis, where the next flush by any consumer or by `poolctl fill --watch`
finds it.

One PoolConsumer may be shared by threads; its pops then take turns on one
Redis connection.

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
import os
import threading
import time
from operator import itemgetter
from types import TracebackType

from poolctl.acks import MAX_BATCHES_PER_FLUSH, flush_acks
from poolctl.config import Settings, load_settings
from poolctl.errors import PoolctlError, RedisUnavailable
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
# Popped ids remembered per pool until a flush confirms them. When a list
# exceeds UNCONFIRMED_MAX by UNCONFIRMED_SLACK, its oldest ids are forgotten
# down to UNCONFIRMED_MAX. Their acks are still in Redis unless Redis also
# loses its data.
UNCONFIRMED_MAX = 100_000
UNCONFIRMED_SLACK = 10_000

_item_id = itemgetter(0)  # Item.id, read in C


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
        self._keys: dict[tuple[str, int], PoolKeys] = {}  # pools popped so far, their type checked
        self._state = threading.Lock()  # guards _pending, _unconfirmed and _suspects
        self._flush_lock = threading.Lock()  # one flush at a time
        self._flusher: threading.Thread | None = None
        self._flusher_pid = 0
        self._pid = os.getpid()
        self._db_given = db is not None
        self._wake = threading.Event()
        self._stopping = False
        self._closed = False

    @property
    def redis_unreachable(self) -> bool:
        """Whether the last pop_with_fallback found Redis unreachable and went to SQL without reading the pool."""
        return self._redis_retry_at != 0.0

    @property
    def db(self) -> Database:
        """The SQL connection, opened on first use: a pop that never falls back or flushes needs none."""
        if self._db is None:
            self._db = connect_database(self.settings, create=False)
        return self._db

    # -- popping -----------------------------------------------------------

    def pop(self, pool_type: str, group: int) -> Item | None:
        """Pop one item from the pool, or return None when the pool is empty."""
        items = self.pop_many(pool_type, group, 1)
        return items[0] if items else None

    def pop_many(self, pool_type: str, group: int, count: int) -> list[Item]:
        """Pop up to count items in one round trip; fewer (or none) when the pool runs out."""
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        if self._closed:
            raise RuntimeError("this PoolConsumer is closed: its acks would wait in Redis for the next fill --watch")
        if self._pid != os.getpid():
            self._after_fork()
        keys = self._keys.get((pool_type, group))
        if keys is None:
            self.settings.pool(pool_type)  # raises UnknownPoolType
            keys = self._keys[(pool_type, group)] = self.store.keys(pool_type, group)
        try:
            result = self.store.pop(keys, count)
        except RedisUnavailable:
            self._confirm_in_sql()
            raise
        items = self._decode(keys, result)
        self._after_pop(keys, items, result.acks)
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
        items, rejected = decode_popped(result.joined, result.joined_ids)
        for item_id, raw, reason in rejected:
            # The Lua check passed but Python rejects it (invalid UTF-8,
            # say): keep it for the operator, and take back its ack so
            # that SQL does not get it as consumed.
            log.error("pool %s group %d: malformed item set aside in %s: %s", keys.pool_type, keys.group, keys.dead, reason)
            self.store.set_aside(keys, item_id, raw)
        return items

    # -- acks --------------------------------------------------------------

    def _after_pop(self, keys: PoolKeys, items: list[Item], acks: int) -> None:
        """Remember the popped ids until a flush confirms them, and wake or run a flush when one is due."""
        with self._state:
            self._pending[keys] = acks
            remembered = self._unconfirmed.get(keys)
            if remembered is None:
                remembered = self._unconfirmed[keys] = []
            remembered += map(_item_id, items)
            if len(remembered) > UNCONFIRMED_MAX + UNCONFIRMED_SLACK:
                # Cut back in one step per UNCONFIRMED_SLACK pops: cutting
                # one id off the front at every pop moves the whole list each time.
                del remembered[: len(remembered) - UNCONFIRMED_MAX]
        due = time.monotonic() - self._last_flush >= self.settings.acks.interval_s
        if acks >= self.settings.acks.batch or due:
            if self.settings.acks.background:
                self._wake_flusher()
            else:
                self.flush_acks()

    def flush_acks(self) -> int:
        """Mark every pending ack of the pools this consumer popped consumed in SQL; return how many.

        Runs in the calling thread, one flush at a time with the background
        flusher. When SQL is unreachable the acks stay in Redis and a warning
        is logged; they are flushed later by this consumer or by `poolctl fill --watch`.
        """
        if not self._has_work():
            return 0  # nothing to flush: no reason to open SQL
        try:
            db = self.db
        except PoolctlError as exc:  # SQL down, or no such database: the acks wait in Redis
            with self._state:
                waiting = [keys for keys, ids in self._unconfirmed.items() if ids] or list(self._pending)
            self._warn_flush_failed(waiting[0] if len(waiting) == 1 else None, exc)
            return 0
        return self._flush(db)

    def _flush(self, db: Database) -> int:
        with self._flush_lock:
            self._last_flush = time.monotonic()
            # Take the work out under the lock; pops that come in meanwhile
            # are the next flush's.
            with self._state:
                work = [
                    (keys, self._pending.get(keys, 0), self._unconfirmed.pop(keys, []), self._suspects.pop(keys, []))
                    for keys in self._pending.keys() | self._unconfirmed.keys() | self._suspects.keys()
                ]
                for keys, pending, _, _ in work:
                    if pending > 0:
                        self._pending[keys] = 0
            flushed = 0
            for keys, pending, unconfirmed, suspects in work:
                try:
                    done = flush_acks(self.store, db, keys, self.settings.acks.batch) if pending > 0 else []
                    flushed += len(done)
                    self._check_suspects(db, keys, suspects)
                except PoolctlError as exc:  # SQL down, or a schema that does not match: acks wait in Redis
                    with self._state:
                        if pending > 0:
                            self._pending[keys] = max(self._pending.get(keys, 0), pending)
                        self._unconfirmed[keys] = unconfirmed + self._unconfirmed.get(keys, [])
                        self._suspects[keys] = suspects + self._suspects.get(keys, [])
                    self._warn_flush_failed(keys, exc)
                    continue
                # Remembered ids this flush did not see were flushed by another
                # consumer, are still waiting in a long acks list, or lost
                # their acks with Redis data. The next flush checks which of them SQL
                # still has as queued.
                confirmed = set(done)
                # A flush that stopped at its batch limit left acks in Redis:
                # ids it did not read may still be among them, so they wait for
                # the next flush instead of becoming suspects checked in SQL.
                drained = len(done) < MAX_BATCHES_PER_FLUSH * self.settings.acks.batch
                with self._state:
                    missing = [item for item in unconfirmed if item not in confirmed]
                    if drained:
                        self._suspects.setdefault(keys, []).extend(missing)
                    else:
                        self._unconfirmed[keys] = missing + self._unconfirmed.get(keys, [])
                        self._pending[keys] = max(self._pending.get(keys, 0), 1)  # so that the next flush reads on
                    # Pops that came in during this flush, and whose acks it
                    # already read, are confirmed too. Otherwise the next flush
                    # would take them for suspects and look them up in SQL.
                    later = self._unconfirmed.get(keys)
                    if later and confirmed:
                        self._unconfirmed[keys] = [item for item in later if item not in confirmed]
            return flushed

    def _has_work(self) -> bool:
        """Return whether a flush has anything to do: pending acks, or popped ids to confirm."""
        with self._state:
            return any(self._pending.values()) or any(self._unconfirmed.values()) or any(self._suspects.values())

    def _after_fork(self) -> None:
        """Start afresh in a forked child: its own locks, flusher thread and SQL connection.

        Locks another thread held at the fork would stay held in the child,
        and a shared SQL socket would mix two processes' replies. The parent's
        connection is dropped without closing it, which would close it for the
        parent too. A database passed in by the caller is the caller's to replace.
        """
        self._pid = os.getpid()
        self._state = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._flusher = None
        self._stopping = False
        if not self._db_given:
            self._db = None

    def _wake_flusher(self) -> None:
        # A forked child inherits the flusher's Thread object but not the thread.
        if self._flusher is None or self._flusher_pid != os.getpid():
            self._flusher = threading.Thread(target=self._flush_in_background, name="poolctl-ack-flusher", daemon=True)
            self._flusher_pid = os.getpid()
            self._flusher.start()
        self._wake.set()

    def _flush_in_background(self) -> None:
        """Flush in the flusher thread: when a pop that fills a batch wakes it, else every acks.interval_s."""
        db: Database | None = None
        try:
            while True:
                self._wake.wait(self.settings.acks.interval_s)
                self._wake.clear()
                if self._stopping:
                    return
                if not self._has_work():
                    continue
                try:
                    if db is None:
                        db = connect_database(self.settings, create=False)
                    self._flush(db)
                except PoolctlError as exc:  # SQL down, or a schema that does not match: acks wait in Redis
                    self._warn_flush_failed(None, exc)
                except Exception:
                    log.exception("ack flusher: unexpected error; acks stay in Redis and the next flush retries")
        finally:
            if db is not None:
                db.close()

    def _stop_flusher(self) -> None:
        if self._flusher is not None:
            self._stopping = True
            self._wake.set()
            self._flusher.join()
            self._flusher = None
            self._stopping = False

    def _check_suspects(self, db: Database, keys: PoolKeys, suspects: list[int]) -> None:
        """Mark consumed the suspects that SQL still has as queued one flush later: their acks were lost."""
        if not suspects:
            return
        lost = self._mark_queued_consumed(db, keys, suspects)
        if lost:
            log.warning(
                "pool %s group %d: %d popped items lost their acks in Redis; marked consumed from this consumer's memory",
                keys.pool_type, keys.group, lost,
            )

    def _mark_queued_consumed(self, db: Database, keys: PoolKeys, ids: list[int]) -> int:
        statuses = db.statuses(keys.pool_type, ids)
        queued = [item for item in ids if statuses.get(item) == self.settings.status.queued]
        if queued:
            db.mark_consumed(keys.pool_type, queued)
        return len(queued)

    def _confirm_in_sql(self) -> None:
        """Mark every remembered id consumed in SQL now: Redis is down, and its acks may be gone with it."""
        with self._flush_lock:
            with self._state:
                work = [
                    (keys, self._unconfirmed.pop(keys, []) + self._suspects.pop(keys, []))
                    for keys in self._unconfirmed.keys() | self._suspects.keys()
                ]
            for index, (keys, ids) in enumerate(work):
                try:
                    marked = self._mark_queued_consumed(self.db, keys, ids) if ids else 0
                except PoolctlError as exc:  # SQL down, or a schema that does not match: acks wait in Redis
                    with self._state:
                        for later_keys, later_ids in work[index:]:
                            self._unconfirmed[later_keys] = later_ids + self._unconfirmed.get(later_keys, [])
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
        with self._state:
            work = list(self._suspects.items())
            self._suspects.clear()
        for keys, ids in work:
            try:
                if ids:
                    self._mark_queued_consumed(self.db, keys, ids)
            except PoolctlError as exc:  # SQL down, or a schema that does not match: acks wait in Redis
                self._warn_flush_failed(keys, exc)

    def _warn_flush_failed(self, keys: PoolKeys | None, exc: PoolctlError) -> None:
        now = time.monotonic()
        if now - self._last_flush_warning >= FLUSH_WARNING_INTERVAL_S:
            self._last_flush_warning = now
            where = f"pool {keys.pool_type} group {keys.group}: " if keys is not None else ""
            log.warning("%sack flush failed, acks stay in Redis: %s", where, exc.message)

    # -- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        """Stop the flusher thread, flush pending acks, confirm the remembered ids in SQL, close the connections."""
        self._closed = True
        try:
            self._stop_flusher()
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
