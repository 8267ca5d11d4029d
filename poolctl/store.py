"""The Redis side: pool lengths, fill locks, pushes, pops with acks, and ack trimming.

Every method is one round trip. Steps that touch several keys run as Lua
scripts (poolctl.lua) so that they are atomic.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from poolctl import lua
from poolctl.config import Settings, mask_url
from poolctl.errors import ConfigError, LockLost, PoolctlError, RedisUnavailable, WrongKeyType
from poolctl.keys import RATE_COUNTER_TTL_S, KeyScheme, PoolKeys, rate_bucket

log = logging.getLogger(__name__)

URL_HINT = "Check redis.url (--redis-url, POOLCTL_REDIS_URL) and that the server is running"
EXPECTED_TYPES = {
    "pool": "list", "acks": "list", "dead": "list", "claiming": "set", "lock": "string", "sentinel": "string",
    "acks_since": "string",
}
SCAN_COUNT = 1000
# Replies of a Redis that is up but cannot serve writes for now: loading its
# data after a restart, a read-only replica after a failover, a failed
# background save with stop-writes-on-bgsave-error, a script that runs too
# long. Callers treat them like an unreachable server and retry later.
UNAVAILABLE_REPLIES = ("READONLY", "LOADING", "MISCONF", "BUSY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN")


class PoolOverflow(PoolctlError):
    """A push would take a pool past its size; nothing was pushed."""

    code = "pool_overflow"


@dataclass(frozen=True, slots=True)
class PoolLengths:
    """Lengths of one pool and its acks list; -1 marks a key that is not a list."""

    pool: int
    acks: int


@dataclass(frozen=True, slots=True)
class LockedPool:
    """A pool as its new lock owner found it: read in the same step that took the lock."""

    length: int
    claims: int  # ids in the claiming set: a fill committed them and never pushed them
    has_sentinel: bool


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """The ids in a pool, its acks and its claiming set, read in one atomic step."""

    pool_ids: list[int]  # in list order, duplicates kept
    acks: list[bytes]  # raw entries, normally decimal ids
    claiming: list[bytes]  # raw members, normally decimal ids
    malformed: int  # pool entries that are not valid items
    has_sentinel: bool


class PopResult(NamedTuple):
    """The result of one pop step: the popped entries joined by newlines, their ids joined by commas, and counts.

    The ids stay as the script returned them: the consumer parses them
    together with the entries, in one JSON parse. A named tuple, made in a
    third of a frozen dataclass's time, because a consumer makes one per pop.
    """

    joined: bytes  # the entries, joined by b"\n" (valid entries never hold a raw newline)
    joined_ids: bytes  # their ids in the same order, b"1,2,3", as POP recorded them in acks
    acks: int  # length of the acks list after the pop
    dead: int  # entries moved to the dead-letter list

    @property
    def ids(self) -> list[int]:
        return [int(value) for value in self.joined_ids.split(b",")] if self.joined_ids else []

    @property
    def count(self) -> int:
        return self.joined_ids.count(b",") + 1 if self.joined_ids else 0

    @property
    def raw(self) -> list[bytes]:
        """The popped entries, one by one."""
        return self.joined.split(b"\n") if self.joined_ids else []


@dataclass(frozen=True, slots=True)
class PoolDetails:
    """A pool's lock, dead letters and acks, as the audit reads them."""

    lock_owner: str | None
    lock_ttl_ms: int | None  # -1: the lock has no TTL
    dead: int
    acks: int
    acks_since_ms: int | None  # Unix ms when pending acks were last flushed, or when the first one arrived


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
        raise ConfigError(
            f"invalid Redis URL {mask_url(settings.redis.url)}: {exc}", "Fix redis.url (--redis-url, POOLCTL_REDIS_URL)"
        ) from None


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
        self._read_acks = client.register_script(lua.READ_ACKS)
        self._trim_joined_acks = client.register_script(lua.TRIM_JOINED_ACKS)
        self._lengths = client.register_script(lua.LENGTHS)
        self._read_pool = client.register_script(lua.READ_POOL)
        self._forget_claims = client.register_script(lua.FORGET_CLAIMS)
        self._set_sentinel = client.register_script(lua.SET_SENTINEL)
        self._set_aside = client.register_script(lua.SET_ASIDE)
        self._pop_lock = threading.Lock()
        self._pop_connection: Any = None  # taken from the client's pool on the first pop
        self._pop_connection_pid = 0  # the process that took it
        self._pop_commands: dict[PoolKeys, tuple[int, bytes]] = {}  # packed start of each pool's POP, by rate bucket

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
            if isinstance(exc, redis.exceptions.ReadOnlyError) or str(exc).startswith(UNAVAILABLE_REPLIES):
                raise RedisUnavailable(f"Redis at {self.masked_url} cannot serve writes now: {exc}", URL_HINT) from None
            if "DB index is out of range" in str(exc):
                raise ConfigError(
                    f"Redis at {self.masked_url} has no such database number: {exc}",
                    "Use a database number the server has in redis.url (0 to 15 unless its config says more)",
                ) from None
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
                    key,
                )
        return WrongKeyType(f"a key of pool {keys.pool} has the wrong type", "Check its keys with redis-cli TYPE", keys.pool)

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

    def acquire_lock(self, keys: PoolKeys, token: str, ttl_s: float) -> LockedPool | None:
        """Take the pool's fill lock; return the pool as read under it, or None when the lock is held."""
        with self.errors(keys):
            reply = self._acquire(keys=[keys.lock, keys.pool, keys.claiming, keys.sentinel], args=[token, _ms(ttl_s)])
        if not isinstance(reply, list):
            return None
        length, claims, sentinel = (int(value) for value in reply)
        return LockedPool(length, claims, bool(sentinel))

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

    def pools_in_redis(self) -> set[tuple[str, int]]:
        """Return (pool type, group) of every pool that has any key in Redis under this key scheme."""
        with self.errors():
            return {
                parsed
                for raw_key in self.client.scan_iter(match=self.scheme.pool_pattern(), count=SCAN_COUNT)
                if (parsed := self.scheme.parse_key(raw_key.decode(errors="replace"))) is not None
            }

    def wrong_types(self, pools: Sequence[PoolKeys]) -> list[tuple[PoolKeys, str, str]]:
        """Return (pool, key, type found) for every key of these pools whose type is not the one poolctl keeps there."""
        roles = list(EXPECTED_TYPES)
        with self.errors():
            pipe = self.client.pipeline(transaction=False)
            for keys in pools:
                for role in roles:
                    pipe.type(getattr(keys, role))
            replies = pipe.execute()
        wrong = []
        for index, keys in enumerate(pools):
            for offset, role in enumerate(roles):
                found = replies[index * len(roles) + offset]
                found = found.decode() if isinstance(found, bytes) else str(found)
                if found not in ("none", EXPECTED_TYPES[role]):
                    wrong.append((keys, getattr(keys, role), found))
        return wrong

    def pool_details(self, pools: Sequence[PoolKeys]) -> list[PoolDetails]:
        """Return the lock, dead-letter count and acks age of each pool, in one round trip."""
        with self.errors():
            pipe = self.client.pipeline(transaction=False)
            for keys in pools:
                pipe.get(keys.lock)
                pipe.pttl(keys.lock)
                pipe.llen(keys.dead)
                pipe.llen(keys.acks)
                pipe.get(keys.acks_since)
            replies = pipe.execute(raise_on_error=False)
        details = []
        for index in range(len(pools)):
            owner, ttl_ms, dead, acks, since = replies[5 * index : 5 * index + 5]
            details.append(
                PoolDetails(
                    lock_owner=owner.decode(errors="replace") if isinstance(owner, bytes) else None,
                    lock_ttl_ms=ttl_ms if isinstance(ttl_ms, int) else None,
                    dead=dead if isinstance(dead, int) else 0,
                    acks=acks if isinstance(acks, int) else 0,
                    acks_since_ms=int(since) if isinstance(since, bytes) and since.isdigit() else None,
                )
            )
        return details

    # -- fill --------------------------------------------------------------

    def record_claim(self, keys: PoolKeys, token: str, ttl_s: float, ids: Sequence[int]) -> bool:
        """Record ids about to be committed as queued; False when the lock is no longer the caller's."""
        with self.errors(keys):
            return bool(self._record_claim(keys=[keys.lock, keys.claiming], args=[token, _ms(ttl_s), _joined_ids(ids)]))

    def push(self, keys: PoolKeys, token: str, ttl_s: float, size: int, ids: Sequence[int], items: Sequence[str]) -> int:
        """Push encoded items if the caller owns the lock and the pool has room; return the new length."""
        filled = keys.filled(rate_bucket(time.time()))
        head = [
            b"EVALSHA", self._push.sha.encode(), b"4", keys.pool.encode(), keys.lock.encode(), keys.claiming.encode(),
            filled.encode(), token.encode(), b"%d" % _ms(ttl_s), b"%d" % size, b"%d" % len(items),
            b"%d" % RATE_COUNTER_TTL_S, _joined_ids(ids).encode(),
        ]
        # poolctl packs the command itself, each item its own argument, because
        # redis-py's packing costs per argument, which a batch of short titles
        # feels. One growing buffer keeps a single bytes copy of the batch.
        command = bytearray(b"*%d\r\n%b" % (len(head) + len(items), _pack_parts(*head)))
        for item in items:
            data = item.encode()
            command += b"$%d\r\n" % len(data)
            command += data
            command += b"\r\n"
            del data
        try:
            result = self._run_packed(command, lua.PUSH)
        except redis.RedisError:
            with self.errors(keys):
                raise
        if result == -1:
            raise LockLost(f"fill lock {keys.lock} was lost before the push", "Raise fill.lock_ttl_s if fills are slow")
        if result == -2:
            raise PoolOverflow(f"pushing {len(ids)} items would take {keys.pool} past its size {size}", "")
        return int(result)

    def _run_packed(self, command: bytes | bytearray, source: str) -> Any:
        """Send a packed EVALSHA on a pooled connection and return the reply, loading the script on NOSCRIPT."""
        connection = self.client.connection_pool.get_connection()
        try:
            return _send_script(connection, command, source)
        except redis.ResponseError:
            raise
        except BaseException:
            connection.disconnect()  # a timeout or a broken socket leaves the reply unread
            raise
        finally:
            self.client.connection_pool.release(connection)

    # -- reconcile ---------------------------------------------------------

    def read_pool(self, keys: PoolKeys, token: str | None = None, ttl_s: float = 0.0) -> PoolSnapshot:
        """Read the pool's ids, acks and claiming set in one atomic step.

        With a token, read only while the caller owns the lock (extending it to
        ttl_s) and raise LockLost otherwise; without one, read regardless.
        """
        with self.errors(keys):
            reply = self._read_pool(
                keys=[keys.lock, keys.pool, keys.acks, keys.claiming, keys.sentinel], args=[token or "", _ms(ttl_s)]
            )
        if not isinstance(reply, list):
            raise LockLost(f"fill lock {keys.lock} was lost before the pool could be read", "Run reconcile again")
        pool_ids, acks, claiming, malformed, sentinel = reply
        return PoolSnapshot([int(value) for value in pool_ids], list(acks), list(claiming), int(malformed), bool(sentinel))

    def forget_claims(self, keys: PoolKeys, token: str, ttl_s: float, ids: Sequence[int]) -> bool:
        """Remove ids from the claiming set and extend the lock; False when the lock is no longer the caller's."""
        with self.errors(keys):
            return bool(self._forget_claims(keys=[keys.lock, keys.claiming], args=[token, _ms(ttl_s), *ids]))

    def set_sentinel(self, keys: PoolKeys, token: str) -> bool:
        """Mark the pool reconciled since Redis last lost its data; False when the lock is not the caller's."""
        with self.errors(keys):
            return bool(self._set_sentinel(keys=[keys.lock, keys.sentinel], args=[token]))

    # -- consume -----------------------------------------------------------

    def pop(self, keys: PoolKeys, count: int) -> PopResult:
        """Pop up to count items, record their ids in acks and count them for the pop rate, atomically."""
        now = time.time()
        bucket = rate_bucket(now)
        cached = self._pop_commands.get(keys)
        if cached is None or cached[0] != bucket:
            head = _pack_parts(
                b"EVALSHA", self._pop.sha.encode(), b"5", keys.pool.encode(), keys.acks.encode(), keys.dead.encode(),
                keys.acks_since.encode(), keys.popped(bucket).encode(),
            )
            cached = self._pop_commands[keys] = (bucket, b"*11\r\n" + head)
        count_arg, now_arg = b"%d" % count, b"%d" % (now * 1000)
        tail = b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(count_arg), count_arg, len(now_arg), now_arg)
        command = cached[1] + tail + _COUNTER_TTL_ARG
        try:
            reply = self._pop_on_own_connection(command)
        except redis.RedisError:
            with self.errors(keys):  # translated here: entering errors() on every pop costs a microsecond
                raise
        acks, dead, ids, joined = reply.split(b"|", 3)
        return PopResult(joined, ids, int(acks), int(dead))

    def _pop_on_own_connection(self, command: bytes) -> bytes:
        """Send a packed EVALSHA of POP on a connection this store keeps for pops, and return the reply.

        A pop is the call a consumer makes in a tight loop. Taking a
        connection from the pool, packing the arguments and wrapping the call
        for retries cost redis-py as much as the round trip itself. Nothing
        is retried: a pop whose reply was lost may have run.
        """
        if self._pop_connection_pid and self._pop_connection_pid != os.getpid():
            self._pop_lock = threading.Lock()  # a forked child: another thread may have held it at the fork
        with self._pop_lock:
            connection = self._pop_connection
            if connection is None or self._pop_connection_pid != os.getpid():
                # After a fork the child must not share the parent's socket,
                # because replies would reach the wrong process. The pool
                # checks the process id and hands out a new connection.
                connection = self._pop_connection = self.client.connection_pool.get_connection()
                self._pop_connection_pid = os.getpid()
            try:
                return _send_script(connection, command, lua.POP)  # type: ignore[no-any-return]
            except redis.ResponseError:
                raise
            except BaseException:
                # A timeout or a broken socket leaves the reply unread: start afresh next time.
                self._pop_connection = None
                connection.disconnect()
                self.client.connection_pool.release(connection)
                raise

    def close(self) -> None:
        """Give back the pop connection and close the client's connections."""
        with self._pop_lock:
            if self._pop_connection is not None and self._pop_connection_pid == os.getpid():
                self.client.connection_pool.release(self._pop_connection)
            self._pop_connection = None
        self.client.close()

    def set_aside(self, keys: PoolKeys, item_id: int, raw: bytes) -> None:
        """Move a popped entry that cannot be decoded to the dead-letter list and drop its ack."""
        with self.errors(keys):
            self._set_aside(keys=[keys.acks, keys.dead], args=[item_id, raw])

    def read_acks(self, keys: PoolKeys, limit: int) -> list[bytes]:
        """Return up to limit of the oldest acks (the tail of the list), oldest last."""
        with self.errors(keys):
            reply = self._read_acks(keys=[keys.acks], args=[limit])
        if isinstance(reply, bytes):  # joined by commas: one bulk reply instead of one per id
            return reply.split(b",") if reply else []
        return list(reply)

    def trim_acks(self, keys: PoolKeys, raw_ids: Sequence[bytes]) -> int:
        """Remove acks that SQL now has as consumed; return how many were removed."""
        if not raw_ids:
            return 0
        with self.errors(keys):
            if all(value.isdigit() for value in raw_ids):
                joined = b",".join(raw_ids)
                return int(self._trim_joined_acks(keys=[keys.acks, keys.acks_since], args=[_now_ms(), len(raw_ids), joined]))
            return int(self._trim_acks(keys=[keys.acks, keys.acks_since], args=[_now_ms(), *raw_ids]))

    def dead_letter(self, keys: PoolKeys, values: Sequence[bytes]) -> None:
        with self.errors(keys):
            self.client.lpush(keys.dead, *values)


_COUNTER_TTL_ARG = b"$%d\r\n%d\r\n" % (len(str(RATE_COUNTER_TTL_S)), RATE_COUNTER_TTL_S)


def _send_script(connection: Any, command: bytes | bytearray, source: str) -> Any:
    """Send a packed EVALSHA and return its reply, loading the script first when Redis does not know it.

    On NOSCRIPT (the first call, or after a restart or SCRIPT FLUSH) the
    script did not run, so sending the command once more is safe.
    """
    try:
        connection.send_packed_command([command])
        return connection.read_response()
    except redis.exceptions.NoScriptError:
        connection.send_command("SCRIPT", "LOAD", source)
        connection.read_response()
        connection.send_packed_command([command])
        return connection.read_response()


def _joined_ids(ids: Sequence[int]) -> str:
    """Ids as one argument, "1,2,3": one packed argument instead of one per id."""
    return ",".join(["%d" % item for item in ids])


def _pack_parts(*parts: bytes) -> bytes:
    """Encode parts as the bulk strings of a Redis command (RESP), without the leading count."""
    return b"".join(b"$%d\r\n%b\r\n" % (len(part), part) for part in parts)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _now_ms() -> int:
    return int(time.time() * 1000)
