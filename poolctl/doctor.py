"""Doctor: check a deployment before it goes live and name what to fix, one finding per check.

Each check has a status: ok, warn (works, but risky), fail (will not work or
can lose or repeat items) or skip (a check it depends on failed). The checks:
the configuration, Redis (reachable, version, eviction policy, persistence),
the SQL server (reachable, version and its features) and, per pool type, the
table and columns, the fill index and the text column's character set.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from poolctl.config import Settings, mask_url
from poolctl.errors import ConfigError, DatabaseUnavailable, PoolctlError
from poolctl.sql import Database, connect_database
from poolctl.store import RedisStore

log = logging.getLogger(__name__)

Status = Literal["ok", "warn", "fail", "skip"]

# RPOP with a count argument, which the pop script uses: Redis 6.2.
MIN_REDIS_VERSION = (6, 2, 0)
# Character sets that hold every Unicode character, 4-byte ones included.
FULL_UNICODE_CHARSETS = {"utf8mb4", "utf16", "utf16le", "utf32"}


@dataclass(frozen=True, slots=True)
class Check:
    """One finding: what was checked, its status, what was found and what to do about it."""

    name: str
    status: Status
    message: str
    hint: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "message": self.message, "hint": self.hint}


@dataclass(frozen=True, slots=True)
class DoctorReport:
    """Every check doctor ran, in order."""

    checks: list[Check]

    @property
    def failed(self) -> int:
        return sum(1 for check in self.checks if check.status == "fail")

    @property
    def warnings(self) -> int:
        return sum(1 for check in self.checks if check.status == "warn")

    @property
    def ok(self) -> bool:
        return self.failed == 0


def doctor(load: Callable[[], Settings], store: Callable[[Settings], RedisStore] | None = None) -> DoctorReport:
    """Run every check; load builds the settings, so that an invalid configuration is a finding, not a crash."""
    try:
        settings = load()
    except ConfigError as exc:
        return DoctorReport([Check("config", "fail", exc.message, exc.hint),
                             Check("redis", "skip", "not checked: the configuration is invalid"),
                             Check("sql", "skip", "not checked: the configuration is invalid")])
    checks = list(config_checks(settings))
    try:
        redis_store = (store or RedisStore.from_settings)(settings)
    except PoolctlError as exc:  # an invalid Redis URL fails before any connection
        checks.append(Check("redis", "fail", exc.message, exc.hint))
    else:
        checks.extend(redis_checks(settings, redis_store))
    checks.extend(sql_checks(settings))
    return DoctorReport(checks)


# -- configuration ------------------------------------------------------------


def config_checks(settings: Settings) -> Iterator[Check]:
    """Check values that are valid one by one but inconsistent together.

    Settings already rejects a threshold at or above size and a batch above
    size, so a configuration that loads has those right.
    """
    problems = []
    if settings.fill.min_interval_s > settings.fill.interval_s:
        problems.append(Check(
            "config", "fail",
            f"fill.min_interval_s ({settings.fill.min_interval_s}) is above fill.interval_s ({settings.fill.interval_s})",
            "Set fill.min_interval_s at most fill.interval_s",
        ))
    tables: dict[str, str] = {}
    for pool_type, spec in settings.pools.items():
        if spec.table in tables:
            problems.append(Check(
                "config", "warn",
                f"pool types {tables[spec.table]} and {pool_type} share table {spec.table}: a row goes to whichever fills first",
                "Give each pool type its own table under [pools.*]",
            ))
        tables.setdefault(spec.table, pool_type)
    if not problems:
        sizes = ", ".join(f"{name} {spec.threshold}/{spec.size}/{spec.batch}" for name, spec in settings.pools.items())
        problems.append(Check("config", "ok", f"settings consistent (threshold/size/batch: {sizes})"))
    yield from problems


# -- Redis --------------------------------------------------------------------


def redis_checks(settings: Settings, store: RedisStore) -> Iterator[Check]:
    """Check that Redis is reachable, new enough, does not evict pools and keeps them across a restart."""
    url = mask_url(settings.redis.url)
    try:
        store.ping()
        with store.errors():
            info = store.client.info()
    except PoolctlError as exc:
        yield Check("redis", "fail", exc.message, exc.hint)
        yield Check("redis eviction", "skip", "not checked: Redis is unreachable")
        yield Check("redis persistence", "skip", "not checked: Redis is unreachable")
        return
    yield redis_version_check(str(info.get("redis_version", "0")), url)
    yield eviction_check(str(info.get("maxmemory_policy", "")), int(info.get("maxmemory", 0) or 0))
    yield persistence_check(_persistence_config(store, info))


def redis_version_check(version: str, url: str) -> Check:
    if _version_tuple(version) < MIN_REDIS_VERSION:
        return Check("redis", "fail", f"Redis {version} at {url} has no RPOP with a count, which every pop uses",
                     "Upgrade Redis to 6.2 or later")
    return Check("redis", "ok", f"Redis {version} at {url} (RPOP with count: yes)")


def eviction_check(policy: str, maxmemory: int) -> Check:
    limit = f"maxmemory {maxmemory} bytes" if maxmemory else "no maxmemory set"
    if policy.startswith("allkeys-"):
        return Check(
            "redis eviction", "fail",
            f"maxmemory-policy is {policy} ({limit}): Redis can evict whole pools when memory runs short, "
            "and their items stay queued in SQL until reconcile",
            "Set maxmemory-policy noeviction (CONFIG SET maxmemory-policy noeviction, and in redis.conf)",
        )
    if policy.startswith("volatile-"):
        return Check(
            "redis eviction", "warn",
            f"maxmemory-policy is {policy} ({limit}): Redis can evict fill locks and rate counters, "
            "which have a TTL, so fills lose their lock and rates read low",
            "Set maxmemory-policy noeviction",
        )
    return Check("redis eviction", "ok", f"maxmemory-policy is {policy or 'unknown'} ({limit})")


def persistence_check(config: dict[str, str] | str) -> Check:
    """Judge Redis persistence from CONFIG GET appendonly and save, or from the reason they could not be read."""
    if isinstance(config, str):
        return Check("redis persistence", "warn", f"persistence settings could not be read: {config}",
                     "Check that appendonly is yes on the Redis server")
    if config.get("appendonly") == "yes":
        return Check("redis persistence", "ok", f"AOF on (appendfsync {config.get('appendfsync', '?')})")
    if config.get("save", "").strip():
        return Check(
            "redis persistence", "warn",
            f"RDB snapshots only (save {config['save']}): a restart brings pools back as of the last snapshot, "
            "so items popped since then are handed out again",
            "Turn on AOF: appendonly yes (appendfsync everysec)",
        )
    return Check(
        "redis persistence", "warn",
        "no persistence (no AOF, no RDB snapshots): a restart empties every pool, "
        "and the queued items come back only through reconcile",
        "Turn on AOF (appendonly yes), or plan to run reconcile after every Redis restart",
    )


def _persistence_config(store: RedisStore, info: dict[str, Any]) -> dict[str, str] | str:
    try:
        with store.errors():
            found = store.client.config_get("appendonly")
            found.update(store.client.config_get("appendfsync"))
            found.update(store.client.config_get("save"))
    except Exception as exc:  # managed Redis often disables CONFIG; fall back to INFO
        if info.get("aof_enabled") in (1, "1"):
            return {"appendonly": "yes"}
        return f"CONFIG GET failed ({exc}) and INFO shows no AOF"
    return {_text(key): _text(value) for key, value in found.items()}


# -- SQL ----------------------------------------------------------------------


def sql_checks(settings: Settings) -> Iterator[Check]:
    """Check the SQL server, then each pool type's table, columns, fill index and character set."""
    url = mask_url(settings.database.url)
    try:
        _require_sqlite_file(settings.database.url)
        db = connect_database(settings, create=False)  # doctor only reads: it creates no database
    except PoolctlError as exc:
        yield Check("sql", "fail", exc.message, exc.hint)
        yield Check("tables", "skip", "not checked: the SQL database is unreachable")
        return
    try:
        yield from server_checks(db, url)
        for pool_type in settings.pools:
            yield from table_checks(db, pool_type)
    finally:
        db.close()


def _require_sqlite_file(url: str) -> None:
    """Raise DatabaseUnavailable for a missing SQLite file, which connecting would create empty."""
    from poolctl.sql.sqlite import sqlite_path

    if urlsplit(url).scheme != "sqlite":
        return
    path = sqlite_path(url)
    if path and path != ":memory:" and not Path(path).exists():
        raise DatabaseUnavailable(f"SQLite database {path} not found", "Run `poolctl db init` or fix database.url")


def server_checks(db: Database, url: str) -> Iterator[Check]:
    version = db.server_version()
    if db.dialect != "mysql":
        yield Check("sql", "ok", f"SQLite {version} at {url}")
        return
    yield from mysql_version_checks(version, url)


def mysql_version_checks(version: str, url: str) -> Iterator[Check]:
    """Judge a MariaDB or MySQL version by the features poolctl uses."""
    from poolctl.sql.mysql import server_features

    features = server_features(version)
    name = "MariaDB" if features.is_mariadb else "MySQL"
    yield Check("sql", "ok", f"{name} {version} at {url}")
    if not features.skip_locked:
        yield Check("sql features", "warn",
                    f"{name} {version} has no FOR UPDATE SKIP LOCKED: concurrent fillers wait for each other",
                    "Upgrade to MariaDB 10.6+ or MySQL 8.0.1+")
    if not features.descending_indexes:
        yield Check("sql features", "fail",
                    f"{name} {version} ignores DESC in indexes: every fill sorts the group's available rows",
                    "Upgrade to MariaDB 10.8+ or MySQL 8.0+")
    if features.skip_locked and features.descending_indexes:
        yield Check("sql features", "ok", "SKIP LOCKED: yes, descending indexes: yes")


def table_checks(db: Database, pool_type: str) -> Iterator[Check]:
    """Check one pool type's table and columns, its fill index and its text column's character set."""
    table = db.table(pool_type).spec.table
    try:
        db.check_table(pool_type)
    except PoolctlError as exc:
        yield Check(f"table {pool_type}", "fail", exc.message, exc.hint)
        return
    yield Check(f"table {pool_type}", "ok", f"table {table} has every configured column")
    yield index_check(db, pool_type)
    if db.dialect == "mysql":
        yield charset_check(db, pool_type)


def index_check(db: Database, pool_type: str) -> Check:
    spec = db.table(pool_type).spec
    plan = db.explain_claim(pool_type)
    if plan.uses_index and not plan.filesort:
        return Check(f"fill index {pool_type}", "ok", f"the fill query on {spec.table} uses index {plan.index}")
    problem = "sorts its rows (filesort)" if plan.uses_index else "uses no index"
    return Check(
        f"fill index {pool_type}", "fail",
        f"the fill query on {spec.table} {problem}: {plan.detail}",
        f"Add an index on ({spec.group_column}, {spec.status_column}, {spec.batch_column} DESC, {spec.id_column})",
    )


def charset_check(db: Database, pool_type: str) -> Check:
    spec = db.table(pool_type).spec
    column = db.text_column(pool_type)
    where = f"column {spec.table}.{spec.text_column}"
    if column.charset is None or column.charset.lower() in FULL_UNICODE_CHARSETS:
        return Check(f"charset {pool_type}", "ok", f"{where} is {column.charset or 'binary'}")
    return Check(
        f"charset {pool_type}", "fail",
        f"{where} is {column.charset}: it cannot hold 4-byte characters (emoji, rarer CJK ideographs), "
        "so rows with them fail to load",
        f"ALTER TABLE {spec.table} CONVERT TO CHARACTER SET utf8mb4",
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _version_tuple(version: str) -> tuple[int, int, int]:
    numbers = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if not numbers:
        return (0, 0, 0)
    major, minor, patch = numbers.groups()
    return (int(major), int(minor), int(patch or 0))
