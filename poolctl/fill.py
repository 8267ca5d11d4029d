"""Fill: top pools up from SQL under a fill lock, one batch at a time.

One batch, for one pool:
  1. SELECT available rows in fill order, locking them (SKIP LOCKED on MariaDB);
  2. record their ids in the pool's claiming set (only while we own the lock);
  3. UPDATE them to queued and COMMIT;
  4. push them in one LPUSH, only while we own the lock and the pool has room.

Step 2 before 3 means a filler killed between its commit and its push leaves
ids that reconcile can restore without doubt. Step 3 before 4 means no crash
can leave an item both in a pool and available in SQL, which is how a filler
would hand out an item twice.

Before its first batch, a fill that finds ids in the pool's claiming set, or
no sentinel (Redis lost the pool's state), reconciles the pool under the lock
it holds: see poolctl.reconcile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from poolctl.acks import flush_acks
from poolctl.config import Settings
from poolctl.errors import LockLost, PoolctlError, RedisUnavailable, UnknownGroup, WrongKeyType
from poolctl.items import encode_item
from poolctl.keys import PoolKeys, new_owner_token
from poolctl.reconcile import reconcile_locked
from poolctl.sql import Database, Row
from poolctl.store import LockedPool, PoolOverflow, RedisStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PoolFill:
    """The outcome of filling one pool in one pass."""

    pool_type: str
    group: int
    length_before: int
    length_after: int
    pushed: int = 0
    # filled, full (nothing needed), locked (another filler holds it),
    # drained (SQL has no more available rows), lock_lost, overflow
    outcome: str = "full"
    restored: int = 0  # missing items that the reconcile before the fill made available again
    sentinel_missing: bool = False  # Redis had lost the pool's state
    seconds: float = 0.0


@dataclass(slots=True)
class PassResult:
    """The outcome of one fill pass over all its pools."""

    fills: list[PoolFill] = field(default_factory=list)
    lengths: dict[PoolKeys, int] = field(default_factory=dict)  # pool lengths read at the start
    acks_flushed: int = 0
    wrong_type: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def pushed(self) -> int:
        return sum(fill.pushed for fill in self.fills)

    @property
    def restored(self) -> int:
        return sum(fill.restored for fill in self.fills)


class Filler:
    """A filler: fill passes over the configured pool types, under one lock owner token."""

    def __init__(
        self,
        settings: Settings,
        store: RedisStore,
        db: Database,
        token: str | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.db = db
        self.token = token or new_owner_token()
        self.stop = stop or threading.Event()

    def discover(self, pool_types: Iterable[str] | None = None, group: int | None = None) -> list[PoolKeys]:
        """Return the pools a pass visits: every group with available or queued rows.

        Queued rows mean a pool that may hold items and acks to flush even when
        SQL has nothing left to add.
        """
        types = list(pool_types) if pool_types is not None else list(self.settings.pools)
        targets = []
        for pool_type in types:
            self.settings.pool(pool_type)  # raises UnknownPoolType
            if group is not None:
                if not self.db.group_exists(pool_type, group):
                    raise UnknownGroup(
                        f"group {group} has no rows in table {self.settings.pool(pool_type).table} (pool type {pool_type})",
                        "Check the group id, or load rows for it",
                    )
                groups: Sequence[int] = [group]
            else:
                groups = sorted(set(self.db.groups(pool_type, self.settings.status.available))
                                | set(self.db.groups(pool_type, self.settings.status.queued)))
            targets.extend(self.store.keys(pool_type, g) for g in groups)
        return targets

    def run_pass(
        self,
        targets: Sequence[PoolKeys],
        flush: bool = True,
        thresholds: Mapping[PoolKeys, int] | None = None,
        flush_min_acks: int = 1,
    ) -> PassResult:
        """Read all lengths in one round trip, fill the pools at or below threshold, flush pending acks.

        thresholds raises the threshold of single pools for this pass, as the
        watch loop does for pools that drain fast. flush_min_acks skips the ack
        flush of pools with fewer pending acks.
        """
        started = time.monotonic()
        result = PassResult()
        lengths = self.store.lengths(targets)
        for keys, length in zip(targets, lengths, strict=True):
            if self.stop.is_set():
                break
            spec = self.settings.pools[keys.pool_type]
            if length.pool < 0 or length.acks < 0:
                result.wrong_type.append(keys.pool if length.pool < 0 else keys.acks)
                continue
            result.lengths[keys] = length.pool
            threshold = max(spec.threshold, thresholds.get(keys, 0)) if thresholds else spec.threshold
            try:
                if length.pool <= threshold:
                    result.fills.append(self.fill_pool(keys, length.pool, threshold))
                if flush and length.acks >= max(flush_min_acks, 1):
                    result.acks_flushed += len(flush_acks(self.store, self.db, keys, self.settings.acks.batch))
            except WrongKeyType as exc:
                # One damaged pool must not stop the others from being filled.
                result.wrong_type.append(exc.key or keys.pool)
        result.seconds = time.monotonic() - started
        return result

    def fill_pool(self, keys: PoolKeys, length: int, threshold: int | None = None) -> PoolFill:
        """Top one pool up to its size under its fill lock, reconciling it first when it needs that.

        The pool is filled when, read under the lock, it is at or below
        threshold (default: the pool type's).
        """
        if threshold is None:
            threshold = self.settings.pools[keys.pool_type].threshold
        started = time.monotonic()
        fill = PoolFill(keys.pool_type, keys.group, length, length)
        locked = self.store.acquire_lock(keys, self.token, self.settings.fill.lock_ttl_s)
        if locked is None:
            fill.outcome = "locked"
            log.debug("pool %s group %d: lock held by another filler, skipped", keys.pool_type, keys.group)
            return fill
        fill.length_before = fill.length_after = locked.length
        try:
            if self._reconcile_first(keys, locked, fill) and locked.length <= threshold:
                self._fill_locked(keys, fill)
        finally:
            self._release(keys)
        fill.seconds = time.monotonic() - started
        if fill.pushed:
            log.info(
                "pool %s group %d: %d items pushed, length %d -> %d in %.2fs",
                keys.pool_type, keys.group, fill.pushed, fill.length_before, fill.length_after, fill.seconds,
            )
        return fill

    def _reconcile_first(self, keys: PoolKeys, locked: LockedPool, fill: PoolFill) -> bool:
        """Restore what crashed fills or a Redis data loss left behind; return False when the lock was lost.

        Only recorded items, and every missing item when the sentinel is gone,
        are restored: both are safe without asking anyone (see poolctl.reconcile).
        """
        if locked.has_sentinel and locked.claims == 0:
            return True
        report = reconcile_locked(self.settings, self.store, self.db, keys, self.token, apply=True, include_ambiguous=False)
        fill.restored = len(report.restored)
        fill.sentinel_missing = report.sentinel_missing
        if report.outcome == "lock_lost":
            fill.outcome = "lock_lost"
            return False
        return True

    def _fill_locked(self, keys: PoolKeys, fill: PoolFill) -> None:
        spec = self.settings.pools[keys.pool_type]
        ttl_s = self.settings.fill.lock_ttl_s
        length = fill.length_before

        lost_at_record = False

        def record(ids: list[int]) -> bool:
            nonlocal lost_at_record
            lost_at_record = not self.store.record_claim(keys, self.token, ttl_s, ids)
            return not lost_at_record

        while length < spec.size and not self.stop.is_set():
            want = min(spec.size - length, spec.batch)
            rows = self.db.claim(keys.pool_type, keys.group, want, before_commit=record)
            if lost_at_record:
                # The claim was rolled back: its rows are still available.
                fill.outcome = "lock_lost"
                log.warning(
                    "pool %s group %d: fill lock expired before the claim was committed; nothing was claimed",
                    keys.pool_type, keys.group,
                )
                return
            if not rows:
                fill.outcome = "drained" if fill.pushed == 0 else "filled"
                break
            claimed = len(rows)
            ids, items = _encode_batch(rows)
            del rows
            try:
                length = self.store.push(keys, self.token, ttl_s, spec.size, ids, items)
                del items  # before the next claim reads a batch of texts again
            except LockLost:
                # The claimed rows stay queued and recorded in the claiming set,
                # where reconcile finds them and makes them available again.
                fill.outcome = "lock_lost"
                log.warning(
                    "pool %s group %d: fill lock expired mid-fill, %d claimed items left for reconcile",
                    keys.pool_type, keys.group, len(ids),
                )
                return
            except PoolOverflow:
                fill.outcome = "overflow"
                log.error(
                    "pool %s group %d: pool grew past its size during a locked fill, %d claimed items left "
                    "for reconcile; is another program pushing to it?",
                    keys.pool_type, keys.group, len(ids),
                )
                return
            fill.pushed += claimed
            fill.length_after = length
            fill.outcome = "filled"
            if claimed < want:
                break

    def _release(self, keys: PoolKeys) -> None:
        try:
            self.store.release_lock(keys, self.token)
        except RedisUnavailable as exc:
            # The caller reports the outage; the lock expires by its TTL.
            log.debug("pool %s group %d: lock release failed (%s), it expires by TTL", keys.pool_type, keys.group, exc)
        except PoolctlError as exc:
            log.warning("pool %s group %d: lock release failed (%s), it expires by TTL", keys.pool_type, keys.group, exc)


def _encode_batch(rows: list[Row]) -> tuple[list[int], list[str]]:
    """Return the ids and pool JSON of claimed rows, dropping each row from the list once it is encoded.

    A batch of large texts is then held about once as str while it is
    encoded, rather than once as rows and once as items.
    """
    ids = []
    items = []
    for index, row in enumerate(rows):
        rows[index] = None  # type: ignore[call-overload]
        ids.append(row.id)
        items.append(encode_item(row.id, row.text))
        del row
    return ids, items
