"""Health: whether every pool that fills serve is above its threshold, for cron jobs and probes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from poolctl.config import Settings
from poolctl.sql import Database
from poolctl.stats import PoolStats, collect_stats, require_group
from poolctl.store import RedisStore


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The pools checked; a pool is low when its length is at or below its threshold, or its key is not a list."""

    pools: list[PoolStats]

    @property
    def low(self) -> list[PoolStats]:
        return [row for row in self.pools if row.length is None or row.low]

    @property
    def ok(self) -> bool:
        return not self.low


def check(
    settings: Settings, store: RedisStore, db: Database, pool_types: Sequence[str] | None = None, group: int | None = None
) -> HealthReport:
    """Return the health of every pool whose group has available or queued rows, the pools that fills serve.

    A group whose rows are all consumed has nothing left to serve, so its
    empty pool is not counted as low. Raises ServiceUnavailable when Redis or
    SQL is down, UnknownGroup for a group with no rows.
    """
    if group is not None:
        require_group(settings, db, pool_types, group)
    rows = collect_stats(settings, store, db, pool_types, group)
    return HealthReport([row for row in rows if (row.available or 0) + (row.queued or 0) > 0])
