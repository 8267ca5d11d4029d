"""Ack flushing: ids that poolctl consumers popped become consumed in SQL, in batches.

A pop records its ids in the pool's acks list in the same Redis step. A flush
reads the oldest ids, marks them consumed in SQL, and only then removes them
from the list: a crash anywhere leaves them in acks, and marking an id consumed
twice is harmless. Acks are never dropped; while SQL is unreachable they wait
in Redis.
"""

from __future__ import annotations

import logging

from poolctl.keys import PoolKeys
from poolctl.sql import Database
from poolctl.store import RedisStore

log = logging.getLogger(__name__)

# One flush call stops after this many batches, so that a flusher facing a
# constant stream of pops returns to its other work. The rest waits for the next call.
MAX_BATCHES_PER_FLUSH = 50


def flush_acks(store: RedisStore, db: Database, keys: PoolKeys, batch: int) -> list[int]:
    """Mark the pool's pending acks consumed in SQL and remove them from Redis; return the ids flushed."""
    flushed: list[int] = []
    for _ in range(MAX_BATCHES_PER_FLUSH):
        raw = store.read_acks(keys, batch)
        if not raw:
            break
        ids, malformed = _parse_ids(raw)
        if malformed:
            log.error("acks %s: %d entries are not ids, moved to %s", keys.acks, len(malformed), keys.dead)
            store.dead_letter(keys, malformed)
        if ids:
            db.mark_consumed(keys.pool_type, ids)
        store.trim_acks(keys, raw)
        flushed.extend(ids)
        if len(raw) < batch:
            break
    if flushed:
        log.debug("pool %s group %d: %d acks flushed", keys.pool_type, keys.group, len(flushed))
    return flushed


def _parse_ids(raw: list[bytes]) -> tuple[list[int], list[bytes]]:
    ids: list[int] = []
    malformed: list[bytes] = []
    for value in raw:
        try:
            ids.append(int(value))
        except ValueError:
            malformed.append(value)
    return ids, malformed
