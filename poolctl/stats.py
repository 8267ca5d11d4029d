"""Stats: one row per pool with its Redis state, its rates and its SQL counts.

Rates come from the time-bucketed counters that the pop and push scripts keep
in Redis (see poolctl.keys), so they cover every poolctl process on every host.
A rate is the number of items counted in the buckets of the last
RATE_WINDOW_S seconds, divided by RATE_WINDOW_S. The current bucket is still
filling, so a rate that has just started reads up to one bucket's share low.

NOTE: a consumer that pops with plain RPOP (the Go service) bypasses the pop
script, so its pops are not counted: the pop rate and the time until empty
cover poolctl consumers only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from poolctl.config import Settings
from poolctl.errors import UnknownGroup
from poolctl.keys import RATE_WINDOW_S, PoolKeys, rate_window
from poolctl.sql import Database, StateCounts
from poolctl.store import RedisStore

# A pool that will be empty within this many seconds at its current net rate
# is marked running_dry: long enough to act on, short enough not to cry wolf.
RUNNING_DRY_HORIZON_S = 300.0

# Pending acks beyond this many batches mean acks are not reaching SQL: every
# consumer flushes once the acks list reaches one batch.
ACKS_BACKLOG_BATCHES = 2

# Attention reasons, worst first. The first three make a row red in the table.
ATTENTION_REASONS = (
    "not_a_list", "empty", "running_dry",
    "low", "no_available_rows", "lock_without_ttl", "acks_backlog", "dead_letters",
)
SEVERE_REASONS = frozenset(ATTENTION_REASONS[:3])


@dataclass(frozen=True, slots=True)
class PoolStats:
    """The state of one pool (pool type and group) across Redis and SQL.

    The SQL counts are None when they were not read (the metrics endpoint reads
    Redis only). Rates are in items per second.
    """

    pool_type: str
    group: int
    length: int | None  # None when the pool key is not a list
    size: int
    threshold: int
    acks: int | None
    dead: int | None
    lock_owner: str | None
    lock_ttl_s: float | None
    available: int | None
    queued: int | None
    consumed: int | None
    pop_rate: float
    fill_rate: float
    attention: tuple[str, ...] = ()

    @property
    def fill_percent(self) -> float | None:
        return None if self.length is None else round(100.0 * self.length / self.size, 1)

    @property
    def low(self) -> bool:
        return self.length is not None and self.length <= self.threshold

    @property
    def empty_in_s(self) -> float | None:
        """Seconds until the pool is empty at the current pop rate minus fill rate; None when it is not draining."""
        drain = self.pop_rate - self.fill_rate
        if self.length is None or drain <= 0:
            return None
        return round(self.length / drain, 1)

    @property
    def exhausted_in_s(self) -> float | None:
        """Seconds until the pool and the group's available rows are both used up at the current pop rate."""
        if self.length is None or self.available is None or self.pop_rate <= 0:
            return None
        return round((self.length + self.available) / self.pop_rate, 1)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["attention"] = list(self.attention)
        data["fill_percent"] = self.fill_percent
        data["empty_in_s"] = self.empty_in_s
        data["exhausted_in_s"] = self.exhausted_in_s
        return data


def require_group(settings: Settings, db: Database, pool_types: Sequence[str] | None, group: int) -> None:
    """Raise UnknownGroup when no table of the pool types has a row in the group.

    A report or probe narrowed to a mistyped group must fail, not show an
    empty table or pass as healthy.
    """
    types = list(pool_types or settings.pools)
    if not any(db.group_exists(pool_type, group) for pool_type in types):
        raise UnknownGroup(f"group {group} has no rows for pool types {', '.join(types)}", "Check the group id")


def collect_stats(
    settings: Settings,
    store: RedisStore,
    db: Database,
    pool_types: Sequence[str] | None = None,
    group: int | None = None,
    now: float | None = None,
) -> list[PoolStats]:
    """Return stats for every group that has rows in SQL, optionally narrowed to pool types and a group."""
    types = list(pool_types) if pool_types else list(settings.pools)
    counts: dict[PoolKeys, StateCounts] = {}
    for pool_type in types:
        settings.pool(pool_type)  # raises UnknownPoolType
        for found_group, group_counts in sorted(db.state_counts(pool_type).items()):
            if group is None or found_group == group:
                counts[store.keys(pool_type, found_group)] = group_counts
    return read_pool_stats(settings, store, list(counts), counts, now)


def read_pool_stats(
    settings: Settings,
    store: RedisStore,
    pools: Sequence[PoolKeys],
    counts: dict[PoolKeys, StateCounts] | None = None,
    now: float | None = None,
) -> list[PoolStats]:
    """Return stats of the given pools from Redis, with their SQL counts where given."""
    buckets = rate_window(time.time() if now is None else now)
    replies = _redis_state(store, pools, buckets)
    rows = []
    for keys, (length, acks, dead, owner, ttl_ms, popped, filled) in zip(pools, replies, strict=True):
        spec = settings.pools[keys.pool_type]
        sql = (counts or {}).get(keys)
        row = PoolStats(
            pool_type=keys.pool_type, group=keys.group, length=_int(length), size=spec.size, threshold=spec.threshold,
            acks=_int(acks), dead=_int(dead),
            lock_owner=owner.decode(errors="replace") if isinstance(owner, bytes) else None,
            lock_ttl_s=ttl_ms / 1000 if isinstance(ttl_ms, int) and ttl_ms >= 0 else None,
            available=sql.available if sql else None, queued=sql.queued if sql else None,
            consumed=sql.consumed if sql else None,
            pop_rate=_rate(popped), fill_rate=_rate(filled),
        )
        rows.append(_with_attention(row, settings.acks.batch))
    return rows


def _redis_state(store: RedisStore, pools: Sequence[PoolKeys], buckets: range) -> list[tuple[Any, ...]]:
    """Read length, acks, dead letters, lock and rate counters of every pool in one pipelined round trip."""
    with store.errors():
        pipe = store.client.pipeline(transaction=False)
        for keys in pools:
            pipe.llen(keys.pool)
            pipe.llen(keys.acks)
            pipe.llen(keys.dead)
            pipe.get(keys.lock)
            pipe.pttl(keys.lock)
            pipe.mget([keys.popped(bucket) for bucket in buckets])
            pipe.mget([keys.filled(bucket) for bucket in buckets])
        replies = pipe.execute(raise_on_error=False)
    return [tuple(replies[i : i + 7]) for i in range(0, len(replies), 7)]


def _with_attention(row: PoolStats, acks_batch: int) -> PoolStats:
    reasons = set()
    if row.length is None:
        reasons.add("not_a_list")
    elif row.length == 0:
        reasons.add("empty")
    elif row.low:
        reasons.add("low")
    if row.empty_in_s is not None and row.empty_in_s < RUNNING_DRY_HORIZON_S:
        reasons.add("running_dry")
    if row.available == 0 and (row.low or row.pop_rate > 0):
        reasons.add("no_available_rows")
    if row.acks is not None and row.acks > ACKS_BACKLOG_BATCHES * acks_batch:
        reasons.add("acks_backlog")
    if row.dead:
        reasons.add("dead_letters")
    if row.lock_owner is not None and row.lock_ttl_s is None:
        reasons.add("lock_without_ttl")
    ordered = tuple(reason for reason in ATTENTION_REASONS if reason in reasons)
    return replace(row, attention=ordered)


def _rate(counters: Any) -> float:
    """Return items per second from one pool's MGET of bucket counters (None for an empty bucket)."""
    if not isinstance(counters, list):
        return 0.0
    total = sum(int(value) for value in counters if value is not None)
    return round(total / RATE_WINDOW_S, 3)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) else None
