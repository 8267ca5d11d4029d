"""Stats: one row per pool with its Redis state and its SQL counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from poolctl.config import Settings
from poolctl.sql import Database, StateCounts
from poolctl.store import RedisStore


@dataclass(frozen=True, slots=True)
class PoolStats:
    """The state of one pool (pool type and group) across Redis and SQL."""

    pool_type: str
    group: int
    length: int | None  # None when the pool key is not a list
    size: int
    threshold: int
    acks: int | None
    dead: int | None
    lock_owner: str | None
    lock_ttl_s: float | None
    available: int
    queued: int
    consumed: int

    @property
    def fill_percent(self) -> float | None:
        return None if self.length is None else round(100.0 * self.length / self.size, 1)

    @property
    def low(self) -> bool:
        return self.length is not None and self.length <= self.threshold

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fill_percent"] = self.fill_percent
        return data


def collect_stats(
    settings: Settings, store: RedisStore, db: Database, pool_types: Sequence[str] | None = None, group: int | None = None
) -> list[PoolStats]:
    """Return stats for every group that has rows in SQL, optionally narrowed to pool types and a group."""
    types = list(pool_types) if pool_types else list(settings.pools)
    wanted: list[tuple[str, int, StateCounts]] = []
    for pool_type in types:
        settings.pool(pool_type)
        counts = db.state_counts(pool_type)
        for found_group in sorted(counts):
            if group is None or found_group == group:
                wanted.append((pool_type, found_group, counts[found_group]))
    replies = _redis_state(store, [(pool_type, g) for pool_type, g, _ in wanted])
    rows = []
    for (pool_type, found_group, counts), (length, acks, dead, owner, ttl_ms) in zip(wanted, replies, strict=True):
        spec = settings.pools[pool_type]
        rows.append(
            PoolStats(
                pool_type=pool_type, group=found_group, length=_int(length), size=spec.size, threshold=spec.threshold,
                acks=_int(acks), dead=_int(dead),
                lock_owner=owner.decode(errors="replace") if isinstance(owner, bytes) else None,
                lock_ttl_s=ttl_ms / 1000 if isinstance(ttl_ms, int) and ttl_ms >= 0 else None,
                available=counts.available, queued=counts.queued, consumed=counts.consumed,
            )
        )
    return rows


def _redis_state(store: RedisStore, pools: list[tuple[str, int]]) -> list[tuple[Any, ...]]:
    """Read length, acks, dead letters and lock of every pool in one pipelined round trip."""
    with store.errors():
        pipe = store.client.pipeline(transaction=False)
        for pool_type, group in pools:
            keys = store.keys(pool_type, group)
            pipe.llen(keys.pool)
            pipe.llen(keys.acks)
            pipe.llen(keys.dead)
            pipe.get(keys.lock)
            pipe.pttl(keys.lock)
        replies = pipe.execute(raise_on_error=False)
    return [tuple(replies[i : i + 5]) for i in range(0, len(replies), 5)]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) else None
