"""Every Redis key name poolctl reads or writes, and how lock owner tokens look.

The pool key, the lock key and the item JSON are shared with consumers written
in other languages, so their default spelling is fixed:

    {type}:pool:{group}            LIST of JSON items, LPUSH by fills, RPOP by consumers
    {type}:pool:{group}:filling    STRING fill lock, value = owner token, always with a TTL
    {type}:pool:{group}:acks       LIST of ids popped by poolctl consumers, not yet consumed in SQL
    {type}:pool:{group}:claiming   SET of ids a fill committed as queued but has not pushed yet
    {type}:pool:{group}:dead       LIST of malformed items taken out of the pool
    {type}:pool:{group}:sentinel   STRING, no TTL: the owner token of the filler that last reconciled the pool
    {type}:pool:{group}:acks_since STRING, ms since the epoch when the pending acks were last flushed
    {type}:pool:{group}:popped:{bucket}  STRING items popped by poolctl consumers in one time bucket, with a TTL
    {type}:pool:{group}:filled:{bucket}  STRING items pushed by fills in one time bucket, with a TTL

The sentinel shows a filler whether Redis still contains the pool's state. Redis
deletes it together with every other key when it restarts without persistence
or is flushed. A missing sentinel therefore means that the pool, its acks and
its claiming set may be gone, so every queued item missing from Redis is safe
to restore. Deleting a sentinel by hand makes the next fill treat the pool that
way too.

The two counters are what `poolctl stats` and the metrics compute rates from:
`{bucket}` is the Unix time divided by RATE_BUCKET_S, rounded down, taken from
the clock of the process that pops or fills. Hosts are assumed to keep their
clocks in sync (NTP). A host whose clock is off by more than a bucket counts
its items in a neighbouring bucket. That shifts them within the rate window,
and loses them only when the offset approaches the window itself.

A key prefix is put in front of every name. With hash tags on, the pool part is
wrapped in braces (`{titles:pool:3}:acks`) so that all keys of one pool land in
the same Redis Cluster slot, as the Lua scripts that touch several of them need.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from dataclasses import dataclass

POOL_INFIX = ":pool:"
LOCK_SUFFIX = ":filling"
ACKS_SUFFIX = ":acks"
CLAIMING_SUFFIX = ":claiming"
DEAD_SUFFIX = ":dead"
SENTINEL_SUFFIX = ":sentinel"
ACKS_SINCE_SUFFIX = ":acks_since"
# Every key of a pool other than the pool LIST itself and its rate counters
# ends with one of these.
COMPANION_SUFFIXES = (LOCK_SUFFIX, ACKS_SUFFIX, CLAIMING_SUFFIX, DEAD_SUFFIX, SENTINEL_SUFFIX, ACKS_SINCE_SUFFIX)
POPPED_INFIX = ":popped:"
FILLED_INFIX = ":filled:"
RATE_COUNTER_END = re.compile(f"(?:{POPPED_INFIX}|{FILLED_INFIX})[0-9]+$")

# Rate counters: one key per pool and bucket, kept until it has left the rate
# window. The extra two buckets of TTL cover a bucket created late in its
# span and small clock differences between hosts.
RATE_BUCKET_S = 5
RATE_WINDOW_S = 60
RATE_COUNTER_TTL_S = RATE_WINDOW_S + 2 * RATE_BUCKET_S


@dataclass(frozen=True, slots=True)
class PoolKeys:
    """The Redis keys of one pool: one pool type and one group."""

    pool_type: str
    group: int
    pool: str
    lock: str
    acks: str
    claiming: str
    dead: str
    sentinel: str
    acks_since: str

    def __hash__(self) -> int:
        # The pool key names the pool. Hashing one string instead of nine
        # matters on the pop path, which looks a pool up several times per pop.
        return hash(self.pool)

    def popped(self, bucket: int) -> str:
        """Return the key counting items popped from this pool in one rate bucket."""
        return f"{self.pool}{POPPED_INFIX}{bucket}"

    def filled(self, bucket: int) -> str:
        """Return the key counting items pushed into this pool in one rate bucket."""
        return f"{self.pool}{FILLED_INFIX}{bucket}"


@dataclass(frozen=True, slots=True)
class KeyScheme:
    """Builds key names from the configured prefix and hash-tag choice."""

    prefix: str = ""
    hash_tags: bool = False

    def pool_keys(self, pool_type: str, group: int) -> PoolKeys:
        base = f"{pool_type}{POOL_INFIX}{group}"
        if self.hash_tags:
            base = "{" + base + "}"
        pool = self.prefix + base
        return PoolKeys(
            pool_type=pool_type,
            group=group,
            pool=pool,
            lock=pool + LOCK_SUFFIX,
            acks=pool + ACKS_SUFFIX,
            claiming=pool + CLAIMING_SUFFIX,
            dead=pool + DEAD_SUFFIX,
            sentinel=pool + SENTINEL_SUFFIX,
            acks_since=pool + ACKS_SINCE_SUFFIX,
        )

    def lock_pattern(self) -> str:
        """Return a SCAN MATCH pattern for every fill lock under this scheme."""
        return self.prefix + "*" + POOL_INFIX + "*" + LOCK_SUFFIX

    def pool_pattern(self) -> str:
        """Return a SCAN MATCH pattern for every key of every pool under this scheme."""
        return self.prefix + "*" + POOL_INFIX + "*"

    def parse_lock_key(self, key: str) -> tuple[str, int] | None:
        """Return (pool type, group) of a lock key, or None when the key is not one."""
        if not key.startswith(self.prefix) or not key.endswith(LOCK_SUFFIX):
            return None
        return self._parse_base(key[len(self.prefix) : -len(LOCK_SUFFIX)])

    def parse_key(self, key: str) -> tuple[str, int] | None:
        """Return (pool type, group) of a pool key or any of its companion keys, or None for other keys."""
        if not key.startswith(self.prefix):
            return None
        base = RATE_COUNTER_END.sub("", key[len(self.prefix) :])
        for suffix in COMPANION_SUFFIXES:
            if base.endswith(suffix):
                base = base[: -len(suffix)]
                break
        return self._parse_base(base)

    def _parse_base(self, base: str) -> tuple[str, int] | None:
        if self.hash_tags:
            if not (base.startswith("{") and base.endswith("}")):
                return None
            base = base[1:-1]
        pool_type, sep, group = base.rpartition(POOL_INFIX)
        if not sep or not pool_type or not group.lstrip("-").isdigit():
            return None
        return pool_type, int(group)


def rate_bucket(unix_time_s: float) -> int:
    """Return the rate bucket that a Unix time falls in."""
    return int(unix_time_s // RATE_BUCKET_S)


def rate_window(unix_time_s: float) -> range:
    """Return the buckets of the rate window that ends at a Unix time, the current (partial) bucket last."""
    current = rate_bucket(unix_time_s)
    return range(current - RATE_WINDOW_S // RATE_BUCKET_S + 1, current + 1)


def new_owner_token() -> str:
    """Return a lock owner token: host and pid for the operator, random part for uniqueness."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"
