"""Reconcile: find items that SQL has as queued but Redis no longer contains, and make them available again.

An item is queued in SQL from the moment a fill commits its claim until its
ack reaches SQL. All that time Redis normally contains it: in the pool, then
in the pool's acks list once a poolctl consumer popped it. A queued item that is
in neither is missing, and falls in one of three kinds:

  recorded   its id is in the pool's claiming set. A fill committed it and
             never pushed it (killed between its commit and its push, or its
             lock expired), because a push removes the ids it pushes from the
             claiming set in the same step. No consumer has seen it, so
             restoring it is safe.
  ambiguous  its id is in no claiming set, so it was pushed, and an outside
             consumer such as the Go service may have RPOPed it without an ack
             and not yet set status = 0. It may have been served, so it is
             restored only when the caller asks (include_ambiguous).
  lost       the pool's sentinel is missing: Redis lost the pool's state
             (restart without persistence, FLUSHALL) or poolctl never filled
             it. The claiming set is gone too, so recorded and ambiguous cannot
             be told apart, and every missing item is restored.

Each pool is reconciled under its fill lock, with the lock token mechanism of
a fill. A live filler holds the lock from before its claim commits until after
its push, so no item that a live fill is about to push can look missing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from poolctl.config import Settings
from poolctl.errors import LockLost, UnknownGroup, WrongKeyType
from poolctl.keys import PoolKeys, new_owner_token
from poolctl.sql import Database
from poolctl.store import RedisStore

log = logging.getLogger(__name__)

# How long reconcile tries to take a pool's fill lock before it reports the
# pool as locked. Fills hold a lock for one pool's top-up, normally well
# under a second.
LOCK_WAIT_S = 5.0
LOCK_POLL_S = 0.1

# How long include_ambiguous waits before it restores ambiguous items, so that
# an outside consumer that popped one just before has time to set it consumed.
# The Go service does that a few milliseconds after its RPOP.
AMBIGUOUS_SETTLE_S = 2.0


@dataclass(slots=True)
class PoolReconcile:
    """The missing items reconcile found in one pool, and the ones it restored."""

    pool_type: str
    group: int
    # checked: nothing restored, restored: some restored, locked: another
    # process held the lock, lock_lost: the lock expired midway,
    # wrong_type: a key of the pool has the wrong type
    outcome: str = "checked"
    sentinel_missing: bool = False
    queued: int = 0
    in_pool: int = 0
    in_acks: int = 0
    recorded: list[int] = field(default_factory=list)
    ambiguous: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    restored: list[int] = field(default_factory=list)
    claims_dropped: int = 0
    malformed: int = 0
    message: str = ""
    seconds: float = 0.0

    @property
    def missing(self) -> int:
        return len(self.recorded) + len(self.ambiguous) + len(self.lost)

    def to_dict(self) -> dict[str, object]:
        return {
            "pool_type": self.pool_type, "group": self.group, "outcome": self.outcome,
            "sentinel_missing": self.sentinel_missing, "queued": self.queued, "in_pool": self.in_pool,
            "in_acks": self.in_acks, "missing": self.missing, "recorded": len(self.recorded),
            "ambiguous": len(self.ambiguous), "lost": len(self.lost), "restored": len(self.restored),
            "claims_dropped": self.claims_dropped, "malformed": self.malformed, "message": self.message,
            "ids": {"recorded": self.recorded, "ambiguous": self.ambiguous, "lost": self.lost, "restored": self.restored},
            "seconds": round(self.seconds, 3),
        }


@dataclass(slots=True)
class ReconcileResult:
    """Reconcile over several pools."""

    pools: list[PoolReconcile] = field(default_factory=list)
    applied: bool = False

    @property
    def restored(self) -> int:
        return sum(len(pool.restored) for pool in self.pools)

    @property
    def skipped(self) -> list[PoolReconcile]:
        """Pools that could not be reconciled: locked, lock lost or a key of the wrong type."""
        return [pool for pool in self.pools if pool.outcome in ("locked", "lock_lost", "wrong_type")]


def reconcile(
    settings: Settings,
    store: RedisStore,
    db: Database,
    pool_types: Sequence[str] | None = None,
    group: int | None = None,
    apply: bool = False,
    include_ambiguous: bool = False,
    lock_wait_s: float = LOCK_WAIT_S,
) -> ReconcileResult:
    """Reconcile every pool that has queued rows in SQL, optionally narrowed to pool types and a group.

    Without apply, only report. With apply, restore recorded items, lost items
    and, with include_ambiguous, ambiguous items too.
    """
    token = new_owner_token()
    result = ReconcileResult(applied=apply)
    for keys in _targets(settings, store, db, pool_types, group):
        result.pools.append(
            reconcile_pool(settings, store, db, keys, token, apply, include_ambiguous, lock_wait_s)
        )
    return result


def _targets(
    settings: Settings, store: RedisStore, db: Database, pool_types: Sequence[str] | None, group: int | None
) -> list[PoolKeys]:
    # Only groups with queued rows can have missing items.
    targets = []
    for pool_type in pool_types or list(settings.pools):
        spec = settings.pool(pool_type)  # raises UnknownPoolType
        if group is not None:
            if not db.group_exists(pool_type, group):
                raise UnknownGroup(
                    f"group {group} has no rows in table {spec.table} (pool type {pool_type})", "Check the group id"
                )
            groups = [group]
        else:
            groups = db.groups(pool_type, settings.status.queued)
        targets.extend(store.keys(pool_type, g) for g in groups)
    return targets


def reconcile_pool(
    settings: Settings,
    store: RedisStore,
    db: Database,
    keys: PoolKeys,
    token: str,
    apply: bool,
    include_ambiguous: bool,
    lock_wait_s: float = LOCK_WAIT_S,
) -> PoolReconcile:
    """Take the pool's fill lock (waiting up to lock_wait_s), reconcile the pool, release the lock."""
    started = time.monotonic()
    report = PoolReconcile(keys.pool_type, keys.group)
    try:
        if not _acquire(store, keys, token, settings.fill.lock_ttl_s, lock_wait_s):
            report.outcome = "locked"
            report.message = f"fill lock {keys.lock} is held by another process"
            log.warning("pool %s group %d: skipped, its fill lock is held by another process", keys.pool_type, keys.group)
            return report
        try:
            reconcile_locked(settings, store, db, keys, token, apply, include_ambiguous, report)
        finally:
            store.release_lock(keys, token)
    except WrongKeyType as exc:
        report.outcome = "wrong_type"
        report.message = str(exc)
        log.error("pool %s group %d: %s", keys.pool_type, keys.group, exc)
    report.seconds = time.monotonic() - started
    return report


def _acquire(store: RedisStore, keys: PoolKeys, token: str, ttl_s: float, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while store.acquire_lock(keys, token, ttl_s) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(LOCK_POLL_S)
    return True


def reconcile_locked(
    settings: Settings,
    store: RedisStore,
    db: Database,
    keys: PoolKeys,
    token: str,
    apply: bool,
    include_ambiguous: bool,
    report: PoolReconcile | None = None,
) -> PoolReconcile:
    """Reconcile one pool whose fill lock the caller holds with token; fill the report and return it.

    A LockLost while reading the pool or restoring ends the reconcile with
    outcome lock_lost: whatever was restored until then was restored under
    the lock.
    """
    report = report or PoolReconcile(keys.pool_type, keys.group)
    ttl_s = settings.fill.lock_ttl_s
    try:
        missing, claiming, present = _find_missing(settings, store, db, keys, token, report)
        if apply:
            _restore(settings, store, db, keys, token, include_ambiguous, report, claiming - missing, present)
    except LockLost as exc:
        report.outcome = "lock_lost"
        report.message = str(exc)
        log.warning("pool %s group %d: reconcile stopped, its fill lock expired (%s)", keys.pool_type, keys.group, exc)
        return report
    _log_outcome(keys, report, apply, include_ambiguous)
    return report


def _find_missing(
    settings: Settings, store: RedisStore, db: Database, keys: PoolKeys, token: str, report: PoolReconcile
) -> tuple[set[int], set[int], set[int]]:
    """Classify the pool's queued items; return the missing ids, the claiming set and the ids in pool or acks."""
    queued_value = settings.status.queued
    # SQL before Redis. An item that is queued now and gone from Redis by the
    # snapshot was popped in between. If a poolctl consumer popped it, its ack
    # flush may have set it consumed, and the status check below drops it. If
    # an outside consumer popped it, it is ambiguous, as it should be. Read the
    # other way round, a fill that took the lock from a reconcile whose lock
    # expired could commit rows after the snapshot, and they would look missing.
    queued = db.queued_ids(keys.pool_type, keys.group)
    snapshot = store.read_pool(keys, token, settings.fill.lock_ttl_s)
    pool_ids = set(snapshot.pool_ids)
    acks = _int_members(snapshot.acks)
    claiming = _int_members(snapshot.claiming)

    missing = queued - pool_ids - acks
    if missing:
        current = db.statuses(keys.pool_type, sorted(missing))
        missing = {item for item in missing if current.get(item) == queued_value}

    report.queued = len(queued)
    report.in_pool = len(pool_ids & queued)
    report.in_acks = len(acks & queued)
    report.malformed = snapshot.malformed
    report.sentinel_missing = not snapshot.has_sentinel
    if report.sentinel_missing:
        report.lost = sorted(missing)
    else:
        report.recorded = sorted(missing & claiming)
        report.ambiguous = sorted(missing - claiming)
    return missing, claiming, pool_ids | acks


def _restore(
    settings: Settings,
    store: RedisStore,
    db: Database,
    keys: PoolKeys,
    token: str,
    include_ambiguous: bool,
    report: PoolReconcile,
    other_claims: set[int],
    present: set[int],
) -> None:
    ttl_s = settings.fill.lock_ttl_s
    wanted = set(report.lost) | set(report.recorded)
    if include_ambiguous and report.ambiguous:
        wanted |= _settled_ambiguous(settings, store, db, keys, token, report.ambiguous)

    def still_owner(ids: list[int]) -> bool:
        # Called while restore holds the rows locked. Owning the lock now means
        # owning it since the snapshot: no fill has pushed anything since, and
        # none can claim these rows until the restore commits.
        return store.extend_lock(keys, token, ttl_s)

    if wanted:
        report.restored = sorted(db.restore(keys.pool_type, sorted(wanted), before_commit=still_owner))
        if len(report.restored) < len(wanted) and not store.extend_lock(keys, token, ttl_s):
            raise LockLost(f"fill lock {keys.lock} was lost during the restore", "Run reconcile again")
    if report.restored:
        report.outcome = "restored"

    dropped = _stale_claims(settings, db, keys, other_claims, present) | set(report.restored)
    if dropped and not store.forget_claims(keys, token, ttl_s, sorted(dropped)):
        raise LockLost(f"fill lock {keys.lock} was lost before the claiming set was cleaned", "Run reconcile again")
    report.claims_dropped = len(dropped - set(report.restored))
    if report.sentinel_missing and not store.set_sentinel(keys, token):
        raise LockLost(f"fill lock {keys.lock} was lost before the sentinel was set", "Run reconcile again")


def _settled_ambiguous(
    settings: Settings, store: RedisStore, db: Database, keys: PoolKeys, token: str, ambiguous: list[int]
) -> set[int]:
    """Wait AMBIGUOUS_SETTLE_S, then return the ambiguous ids that are still queued."""
    # Missing items cannot be popped any more, so the only change to expect is
    # an outside consumer's late status = 0 for one it popped just before.
    time.sleep(AMBIGUOUS_SETTLE_S)
    if not store.extend_lock(keys, token, settings.fill.lock_ttl_s):
        raise LockLost(f"fill lock {keys.lock} was lost while ambiguous items settled", "Run reconcile again")
    current = db.statuses(keys.pool_type, ambiguous)
    return {item for item in ambiguous if current.get(item) == settings.status.queued}


def _stale_claims(settings: Settings, db: Database, keys: PoolKeys, candidates: set[int], present: set[int]) -> set[int]:
    """Return the claiming ids that no fill can still need.

    Those are rows that are neither queued nor locked, rows that were pushed
    (in present: the pool or acks), and deleted rows. A fill records its ids
    while it holds their rows locked, from its SELECT until its commit or
    rollback, so an unlocked row that is not queued is no fill's uncommitted
    claim. Any later claim of it records it again, which needs the fill lock
    that the caller holds. A queued row that is in no list stays recorded: a
    fill whose lock expired may have committed it after the SQL read, and the
    next reconcile restores it.
    """
    if not candidates:
        return set()
    ordered = sorted(candidates)
    unlocked = db.unlocked_statuses(keys.pool_type, ordered)
    stale = {item for item, status in unlocked.items() if status != settings.status.queued or item in present}
    unseen = [item for item in ordered if item not in unlocked]
    if unseen:
        existing = db.statuses(keys.pool_type, unseen)
        stale |= {item for item in unseen if item not in existing}
    return stale


def _int_members(values: Sequence[bytes]) -> set[int]:
    members = set()
    for value in values:
        try:
            members.add(int(value))
        except ValueError:
            continue  # not an id: the audit reports malformed entries
    return members


def _log_outcome(keys: PoolKeys, report: PoolReconcile, apply: bool, include_ambiguous: bool) -> None:
    if report.restored:
        restored = set(report.restored)
        lost = len(restored & set(report.lost))
        # A WARNING, so that `fill -q` shows it: restoring items "lost with
        # Redis data" is also what a second Redis keyspace over the same
        # tables does to the first one's pooled items.
        log.log(
            logging.WARNING if lost else logging.INFO,
            "pool %s group %d: %d missing items restored: %d recorded, %d ambiguous, %d lost with Redis data%s",
            keys.pool_type, keys.group, len(restored), len(restored & set(report.recorded)),
            len(restored & set(report.ambiguous)), lost,
            " (the pool had no sentinel; if another Redis or key prefix serves this table too, its items "
            "are now handed out twice)" if lost else "",
        )
    if report.ambiguous and not (apply and include_ambiguous):
        log.warning(
            "pool %s group %d: %d queued items are missing from Redis and were never recorded as claimed; "
            "an outside consumer may have served them, so they stay queued",
            keys.pool_type, keys.group, len(report.ambiguous),
        )
