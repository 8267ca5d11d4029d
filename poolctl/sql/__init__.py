"""The SQL side: one backend per URL scheme behind the `Database` contract."""

from __future__ import annotations

from urllib.parse import urlsplit

from poolctl.config import Settings
from poolctl.sql.base import Database, QueryPlan, Row, StateCounts, TextColumn

__all__ = ["Database", "QueryPlan", "Row", "StateCounts", "TextColumn", "connect_database"]


def connect_database(settings: Settings, create: bool = True) -> Database:
    """Open the database that settings.database.url names (sqlite:/// or mysql://).

    With create False, a SQLite file or a MariaDB/MySQL database that does
    not exist is an error instead of a new empty database: only `db init`
    should make one.
    """
    url = settings.database.url
    timeout_s = settings.database.connect_timeout_s
    if urlsplit(url).scheme == "mysql":
        from poolctl.sql.mysql import MysqlDatabase  # PyMySQL is imported only when used

        return MysqlDatabase(url, settings.status, settings.pools, timeout_s, create=create)
    from poolctl.sql.sqlite import SqliteDatabase

    return SqliteDatabase(url, settings.status, settings.pools, timeout_s, create=create)
