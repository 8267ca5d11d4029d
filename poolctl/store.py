"""The Redis side: pool lengths, fill locks, pushes, pops with acks, and ack trimming.

Every method is one round trip. Steps that touch several keys run as Lua
scripts (poolctl.lua) so that they are atomic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from poolctl import lua
from poolctl.config import Settings, mask_url
from poolctl.errors import LockLost, PoolctlError, RedisUnavailable, WrongKeyType
from poolctl.keys import RATE_COUNTER_TTL_S, KeyScheme, PoolKeys, rate_bucket

log = logging.getLogger(__name__)

URL_HINT = "Check redis.url (--redis-url, POOLCTL_REDIS_URL) and that the server is running"
EXPECTED_TYPES = {"pool": "list", "acks": "list", "dead": "list", "claiming": "set", "lock": "string"}
SCAN_COUNT = 1000


class PoolOverflow(PoolctlError):
    """A push would take a pool past its size; nothing was pushed."""

    code = "pool_overflow"


@dataclass(frozen=True, slots=True)
class PoolLengths:
    """Lengths of one pool and its acks list; -1 marks a key that is not a list."""

    pool: int
    acks: int


@dataclass(frozen=True, slots=True)
class PopResult:
    """The result of one pop step: raw JSON items and the lengths after it."""

    raw: list[bytes]
    acks: int
    dead: int
    remaining: int


@dataclass(frozen=True, slots=True)
class LockInfo:
    """A fill lock as listed for the operator."""

    pool_type: str
    group: int
    key: str
    owner: str
    ttl_s: float | None


def connect_redis(settings: Settings) -> redis.Redis:
    """Open a client for settings.redis.url (connections are made lazily, on first use)."""
    try:
        return redis.Redis.from_url(
            settings.redis.url,
            socket_timeout=settings.redis.socket_timeout_s,
            socket_connect_timeout=settings.redis.connect_timeout_s,
            # No automatic retries: a retried pop script whose reply was lost
            # would pop a second time. Callers retry where that is safe.
            retry=Retry(NoBackoff(), 0),
            protocol=2,
        )
    except ValueError as exc:
        raise RedisUnavailable(f"invalid Redis URL {mask_url(settings.redis.url)}: {exc}", URL_HINT) from None


class RedisStore:
    """Pool operations on one Redis client, with keys named by one KeyScheme."""

    def __init__(self, client: redis.Redis, scheme: KeyScheme, masked_url: str = "redis") -> None:
        self.client = client
        self.scheme = scheme
        self.masked_url = masked_url
        self._acquire = client.register_script(lua.ACQUIRE_LOCK)
        self._release = client.register_script(lua.RELEASE_LOCK)
        self._extend = client.register_script(lua.EXTEND_LOCK)
        self._record_claim = client.register_script(lua.RECORD_CLAIM)
        self._push = client.register_script(lua.PUSH)
        self._pop = client.register_script(lua.POP)
        self._trim_acks = client.register_script(lua.TRIM_ACKS)
        self._lengths = client.register_script(lua.LENGTHS)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisStore:
        scheme = KeyScheme(prefix=settings.redis.key_prefix, hash_tags=settings.redis.hash_tags)
        return cls(connect_redis(settings), scheme, mask_url(settings.redis.url))

    def keys(self, pool_type: str, group: int) -> PoolKeys:
        return self.scheme.pool_keys(pool_type, group)

    @contextmanager
    def errors(self, keys: PoolKeys | None = None) -> Iterator[None]:
        """Translate redis-py errors into RedisUnavailable and WrongKeyType."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise RedisUnavailable(f"Redis at {self.masked_url} is unreachable: {exc}", URL_HINT) from None
        except redis.ResponseError as exc:
            if "WRONGTYPE" in str(exc) and keys is not None:
                raise self._wrong_type(keys) from None
            if str(exc).startswith(("NOAUTH", "WRONGPASS", "invalid password")):
                raise RedisUnavailable(f"Redis at {self.masked_url} rejected the login: {exc}", URL_HINT) from None
            raise

    def _wrong_type(self, keys: PoolKeys) -> WrongKeyType:
        names = {role: getattr(keys, role) for role in EXPECTED_TYPES}
        pipe = self.client.pipeline(transaction=False)
        for key in names.values():
            pipe.type(key)
        for (role, key), found in zip(names.items(), pipe.execute(), strict=True):
            found = found.decode() if isinstance(found, bytes) else found
            if found not in ("none", EXPECTED_TYPES[role]):
                return WrongKeyType(
                    f"Redis key {key} holds a {found}, but poolctl keeps a {EXPECTED_TYPES[role]} there",
                    f"Inspect it (redis-cli TYPE {key}), then rename or delete it; poolctl does not touch it",
                )
        return WrongKeyType(f"a key of pool {keys.pool} has the wrong type", "Check its keys with redis-cli TYPE")

    def ping(self) -> None:
        with self.errors():
            self.client.ping()

    # -- reads -------------------------------------------------------------

    def lengths(self, pools: Sequence[PoolKeys]) -> list[PoolLengths]:
        """Return pool and acks lengths of every pool in one round trip."""
        if not pools:
            return []
        names = [name for keys in pools for name in (keys.pool, keys.acks)]
        with self.errors():
            if self.scheme.hash_tags:
                # Keys of different pools live in different cluster slots, so no single script may touch them all.
                pipe = self.client.pipeline(transaction=False)
                for name in names:
                    pipe.llen(name)
                values = [value if isinstance(value, int) else -1 for value in pipe.execute(raise_on_error=False)]
            else:
                values = self._lengths(keys=names)
        return [PoolLengths(int(values[i]), int(values[i + 1])) for i in range(0, len(values), 2)]

    # -- fill locks --------------------------------------------------------

    def acquire_lock(self, keys: PoolKeys, token: str, ttl_s: float) -> int | None:
        """Take the pool's fill lock; return the pool length read under it, or None when it is held."""
        with self.errors(keys):
            length = int(self._acquire(keys=[keys.lock, keys.pool], args=[token, _ms(ttl_s)]))
        return None if length < 0 else length

    def extend_lock(self, keys: PoolKeys, token: str, ttl_s: float) -> bool:
        with self.errors(keys):
            return bool(self._extend(keys=[keys.lock], args=[token, _ms(ttl_s)]))

    def release_lock(self, keys: PoolKeys, token: str) -> bool:
        with self.errors(keys):
            return bool(self._release(keys=[keys.lock], args=[token]))

    def delete_lock(self, key: str, token: str) -> bool:
        """Delete a lock by its key only while it still carries the given token."""
        with self.errors():
            return bool(self._release(keys=[key], args=[token]))

    def locks(self) -> list[LockInfo]:
        """List every fill lock under this key scheme, with owner and remaining TTL."""
        with self.errors():
            found = []
            for raw_key in self.client.scan_iter(match=self.scheme.lock_pattern(), count=SCAN_COUNT):
                key = raw_key.decode()
                parsed = self.scheme.parse_lock_key(key)
                if parsed is not None:
                    found.append((key, parsed))
            pipe = self.client.pipeline(transaction=False)
            for key, _ in found:
                pipe.get(key)
                pipe.pttl(key)
            replies = pipe.execute(raise_on_error=False)
        result = []
        for index, (key, (pool_type, group)) in enumerate(found):
            owner, ttl_ms = replies[2 * index], replies[2 * index + 1]
            if not isinstance(owner, bytes):
                continue  # expired between SCAN and GET, or not a string
            ttl_s = ttl_ms / 1000 if isinstance(ttl_ms, int) and ttl_ms >= 0 else None
            result.append(LockInfo(pool_type, group, key, owner.decode(errors="replace"), ttl_s))
        return sorted(result, key=lambda lock: (lock.pool_type, lock.group))

    # -- fill --------------------------------------------------------------

    def record_claim(self, keys: PoolKeys, token: str, ttl_s: float, ids: Sequence[int]) -> bool:
        """Record ids about to be committed as queued; False when the lock is no longer the caller's."""
        with self.errors(keys):
            return bool(self._record_claim(keys=[keys.lock, keys.claiming], args=[token, _ms(ttl_s), *ids]))

    def push(self, keys: PoolKeys, token: str, ttl_s: float, size: int, ids: Sequence[int], items: Sequence[str]) -> int:
        """Push encoded items if the caller owns the lock and the pool has room; return the new length."""
        with self.errors(keys):
            filled = keys.filled(rate_bucket(time.time()))
            args = [token, _ms(ttl_s), size, len(ids), RATE_COUNTER_TTL_S, *ids, *items]
            result = int(self._push(keys=[keys.pool, keys.lock, keys.claiming, filled], args=args))
        if result == -1:
            raise LockLost(f"fill lock {keys.lock} was lost before the push", "Raise fill.lock_ttl_s if fills are slow")
        if result == -2:
            raise PoolOverflow(f"pushing {len(ids)} items would take {keys.pool} past its size {size}", "")
        return result

    # -- consume -----------------------------------------------------------

    def pop(self, keys: PoolKeys, count: int) -> PopResult:
        """Pop up to count items, record their ids in acks and count them for the pop rate, atomically."""
        popped = keys.popped(rate_bucket(time.time()))
        with self.errors(keys):
            raw, acks, dead, remaining = self._pop(keys=[keys.pool, keys.acks, keys.dead, popped], args=[count, RATE_COUNTER_TTL_S])
        return PopResult(list(raw), int(acks), int(dead), int(remaining))

    def read_acks(self, keys: PoolKeys, limit: int) -> list[bytes]:
        """Return up to limit of the oldest acks (the tail of the list), oldest last."""
        with self.errors(keys):
            return list(self.client.lrange(keys.acks, -limit, -1))

    def trim_acks(self, keys: PoolKeys, raw_ids: Sequence[bytes]) -> int:
        """Remove acks that SQL now has as consumed; return how many were removed."""
        if not raw_ids:
            return 0
        with self.errors(keys):
            return int(self._trim_acks(keys=[keys.acks], args=list(raw_ids)))

    def dead_letter(self, keys: PoolKeys, values: Sequence[bytes]) -> None:
        with self.errors(keys):
            self.client.lpush(keys.dead, *values)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
