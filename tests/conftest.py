"""Shared fixtures: settings, the two Redis backends and the two SQL backends.

Every test gets its own Redis key prefix and its own SQL tables (a fresh SQLite
file, or a fresh MariaDB database per test session with tables dropped per
test), so tests never see each other's data or real data. MariaDB and Redis
must be running: a missing server fails the suite, it is never skipped.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fakeredis
import pymysql
import pytest
import redis

from poolctl.config import Settings, load_settings
from poolctl.keys import KeyScheme
from poolctl.sql import Database, connect_database
from poolctl.store import RedisStore

MARIADB_ROOT = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
REDIS_URL = "redis://127.0.0.1:6379/0"


def pytest_configure(config: pytest.Config) -> None:
    # A developer's POOLCTL_* variables must not leak into tests.
    for name in [name for name in os.environ if name.startswith("POOLCTL_")]:
        del os.environ[name]


@pytest.fixture(scope="session")
def mariadb_database() -> Iterator[str]:
    """A MariaDB database for this test session, dropped at the end."""
    name = f"poolctl_test_{secrets.token_hex(4)}"
    try:
        conn = pymysql.connect(**MARIADB_ROOT, autocommit=True)
    except pymysql.err.OperationalError as exc:
        pytest.fail(f"MariaDB at 127.0.0.1:3306 is not reachable ({exc}); start it, see scripts/test.sh", pytrace=False)
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    yield name
    with conn.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


@pytest.fixture(scope="session")
def real_redis() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis at {REDIS_URL} is not reachable ({exc}); start it, see scripts/test.sh", pytrace=False)
    return client


@pytest.fixture
def key_prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A Redis key prefix unique to this test; its keys are deleted afterwards on the real Redis."""
    prefix = f"poolctl-test:{secrets.token_hex(4)}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.ConnectionError:
        pass


@dataclass
class Backend:
    """One combination of SQL and Redis backends, with settings that point at both."""

    name: str
    settings: Settings
    store: RedisStore
    db: Database
    redis_client: Any

    def settings_with(self, **sections: dict[str, Any]) -> Settings:
        return make_settings(self.settings, **sections)


def make_settings(base: Settings, **sections: dict[str, Any]) -> Settings:
    """Return a copy of base with some sections' values replaced."""
    data = base.model_dump()
    for section, values in sections.items():
        if section == "pools":
            for pool_type, pool_values in values.items():
                data["pools"].setdefault(pool_type, {}).update(pool_values)
        else:
            data[section].update(values)
    return Settings(**data)


def small_pools(size: int = 50, threshold: int = 10, batch: int = 20) -> dict[str, dict[str, int]]:
    return {name: {"size": size, "threshold": threshold, "batch": batch} for name in ("titles", "contents")}


def sqlite_settings(tmp_path: Path, key_prefix: str, **pools: Any) -> Settings:
    base = load_settings(
        redis={"url": REDIS_URL, "key_prefix": key_prefix},
        database={"url": f"sqlite:///{tmp_path / 'poolctl.db'}"},
    )
    return make_settings(base, pools=pools or small_pools())


def mariadb_settings(database: str, key_prefix: str, **pools: Any) -> Settings:
    base = load_settings(
        redis={"url": REDIS_URL, "key_prefix": key_prefix},
        database={"url": f"mysql://root@127.0.0.1:3306/{database}"},
    )
    return make_settings(base, pools=pools or small_pools())


def drop_tables(db: Database) -> None:
    for table in db.tables.values():
        db.execute(f"DROP TABLE IF EXISTS {table.names['table']}")


@pytest.fixture
def sqlite_fake(tmp_path: Path, key_prefix: str) -> Iterator[Backend]:
    """SQLite and fakeredis: the fast unit-test backend."""
    settings = sqlite_settings(tmp_path, key_prefix)
    client = fakeredis.FakeRedis()
    store = RedisStore(client, KeyScheme(prefix=key_prefix))
    db = connect_database(settings)
    yield Backend("sqlite+fakeredis", settings, store, db, client)
    db.close()


@pytest.fixture
def mariadb_redis(mariadb_database: str, key_prefix: str, real_redis: redis.Redis) -> Iterator[Backend]:
    """MariaDB and the real Redis: the integration backend."""
    settings = mariadb_settings(mariadb_database, key_prefix)
    store = RedisStore.from_settings(settings)
    db = connect_database(settings)
    drop_tables(db)
    yield Backend("mariadb+redis", settings, store, db, store.client)
    drop_tables(db)
    db.close()
    store.client.close()


@pytest.fixture(params=["sqlite_fake", "mariadb_redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each contract test runs on both backends."""
    return request.getfixturevalue(request.param)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_rows(db: Database, pool_type: str, rows: list[tuple[int, int, str]]) -> None:
    db.create_table(pool_type)
    db.insert_rows(pool_type, rows)


def status_of(db: Database, pool_type: str) -> dict[int, int]:
    """Return {id: status} for every row of the pool type's table."""
    table = db.table(pool_type)
    return {row[0]: row[1] for row in db.query(table.sql("SELECT {id}, {status} FROM {table}"))}
