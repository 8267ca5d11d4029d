"""Fill locks for the operator: list them, and flush stuck ones safely.

A flush removes a lock only while it still carries the token that was listed:
a lock that expired and was taken by a new filler in between is left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from poolctl.store import LockInfo, RedisStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class FlushResult:
    """The outcome of a flush: locks removed, and locks skipped because their owner changed or they expired."""

    removed: list[LockInfo] = field(default_factory=list)
    skipped: list[LockInfo] = field(default_factory=list)


def list_locks(store: RedisStore, pool_types: Sequence[str] | None = None, group: int | None = None) -> list[LockInfo]:
    """Return the fill locks, optionally narrowed to pool types and a group."""
    return [
        lock
        for lock in store.locks()
        if (not pool_types or lock.pool_type in pool_types) and (group is None or lock.group == group)
    ]


def flush_locks(store: RedisStore, locks: Sequence[LockInfo]) -> FlushResult:
    """Delete each listed lock if its token is unchanged."""
    result = FlushResult()
    for lock in locks:
        if store.delete_lock(lock.key, lock.owner):
            result.removed.append(lock)
            log.warning("pool %s group %d: lock of %s flushed", lock.pool_type, lock.group, lock.owner)
        else:
            result.skipped.append(lock)
    return result
