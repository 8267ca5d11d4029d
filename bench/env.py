"""The run's own MariaDB database, Redis key prefix, config files and child processes, all removed at the end.

Other people run tests on the same servers, so a run touches nothing but
the database `poolctl_bench_<pid>_<random>` and the Redis keys under
`poolctl-bench:<pid>:<random>:`. `close()` stops the child processes,
deletes those keys and drops the database, also after an error or Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pymysql
import redis

from poolctl.config import Settings, load_settings

from bench.core import Stopwatch

log = logging.getLogger("bench")

REPO_ROOT = Path(__file__).resolve().parent.parent
SCAN_COUNT = 1000
# Maximum seconds that wait_for_purge waits before a measurement starts anyway.
PURGE_WAIT_S = 10.0
CHILD_STOP_TIMEOUT_S = 10.0


def poolctl_command() -> list[str]:
    """Return the argv start of the `poolctl` console script of the running interpreter's environment."""
    script = Path(sys.executable).parent / "poolctl"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "poolctl"]


def to_toml(data: dict[str, dict[str, Any]]) -> str:
    """Write a config as TOML: top-level sections, and [pools.NAME] tables under "pools"."""
    lines: list[str] = []

    def table(header: str, values: dict[str, Any]) -> None:
        lines.append(f"[{header}]")
        for key, value in values.items():
            # JSON strings, numbers and booleans are valid TOML for the values a config has.
            lines.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
        lines.append("")

    for section, values in data.items():
        if section == "pools":
            for pool_type, spec in values.items():
                table(f"pools.{pool_type}", spec)
        else:
            table(section, values)
    return "\n".join(lines)


class BenchEnv:
    """Everything one run creates on the shared servers and on disk."""

    def __init__(self, mysql_url: str, redis_url: str, profile_dir: Path | None = None) -> None:
        run_id = f"{os.getpid()}_{secrets.token_hex(3)}"
        self.database = f"poolctl_bench_{run_id}"
        self.key_prefix = f"poolctl-bench:{run_id}:"
        self.mysql_url = mysql_url.rstrip("/")
        self.database_url = f"{self.mysql_url}/{self.database}"
        self.redis_url = redis_url
        self.profile_dir = profile_dir
        self.workdir = Path(tempfile.mkdtemp(prefix="poolctl-bench-"))
        self._children: list[subprocess.Popen[bytes]] = []
        self._sql: pymysql.connections.Connection | None = None
        self._redis: redis.Redis | None = None
        self._created = False

    # -- set-up and clean-up ------------------------------------------------

    def open(self) -> None:
        """Create the run's database and check that Redis responds to PING."""
        server = self._connect(database=None)
        with server.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        server.close()
        self._created = True
        self.redis.ping()
        log.info("database %s and key prefix %s created", self.database, self.key_prefix)

    def close(self) -> None:
        """Stop child processes, delete the run's Redis keys, drop its database and remove its files."""
        for child in self._children:
            stop_child(child)
        self._children.clear()
        try:
            deleted = self.delete_keys(self.key_prefix)
            log.info("%d Redis keys under %s deleted", deleted, self.key_prefix)
        except redis.RedisError as exc:
            log.error("could not delete the Redis keys under %s: %s; delete them by hand", self.key_prefix, exc)
        if self._created:
            try:
                if self._sql is not None:
                    self._sql.close()
                    self._sql = None
                server = self._connect(database=None)
                with server.cursor() as cursor:
                    cursor.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
                server.close()
                log.info("database %s dropped", self.database)
            except pymysql.MySQLError as exc:
                log.error("could not drop database %s: %s; drop it by hand", self.database, exc)
        if self._redis is not None:
            self._redis.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- connections --------------------------------------------------------

    def _connect(self, database: str | None) -> pymysql.connections.Connection:
        parts = urlsplit(self.mysql_url)
        conn = pymysql.connect(
            host=parts.hostname or "127.0.0.1", port=parts.port or 3306, user=parts.username or "root",
            password=parts.password or "", database=database, charset="utf8mb4", autocommit=True,
        )
        with conn.cursor() as cursor:
            # The same isolation as poolctl's own sessions (MariaDB's default), for the hand-written baselines.
            from poolctl.sql.mysql import SESSION_SETUP

            for statement in SESSION_SETUP:
                cursor.execute(statement)
        return conn

    def sql_connection(self) -> pymysql.connections.Connection:
        """Open a new autocommit connection to the run's database."""
        return self._connect(self.database)

    @property
    def sql(self) -> pymysql.connections.Connection:
        """The run's shared connection for set-up statements."""
        if self._sql is None:
            self._sql = self.sql_connection()
        return self._sql

    def execute(self, statement: str, params: Sequence[Any] | None = None) -> int:
        with self.sql.cursor() as cursor:
            return cursor.execute(statement, params)

    def query(self, statement: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.sql.cursor() as cursor:
            cursor.execute(statement, params)
            return list(cursor.fetchall())

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.redis_url)
        return self._redis

    def wait_for_purge(self, timeout_s: float = PURGE_WAIT_S) -> float:
        """Wait until InnoDB has purged the old row versions of earlier updates; return the seconds waited.

        A reset of 200,000 rows leaves about a second of purge work, which
        would otherwise load the server during the next measurement.
        """
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            history = self.query("SELECT `COUNT` FROM information_schema.INNODB_METRICS WHERE NAME = 'trx_rseg_history_len'")
            if not history or history[0][0] == 0:
                break
            time.sleep(0.02)
        else:
            log.info("InnoDB purge still running after %.0fs; measuring anyway", timeout_s)
        return time.monotonic() - started

    def delete_keys(self, prefix: str) -> int:
        """Delete every Redis key under prefix (which must lie under the run's own prefix)."""
        if not prefix.startswith(self.key_prefix):
            raise ValueError(f"deleting keys under {prefix!r} rejected: not under this run's prefix {self.key_prefix!r}")
        deleted = 0
        batch: list[bytes] = []
        for key in self.redis.scan_iter(match=prefix + "*", count=SCAN_COUNT):
            batch.append(key)
            if len(batch) >= SCAN_COUNT:
                deleted += self.redis.unlink(*batch)
                batch.clear()
        if batch:
            deleted += self.redis.unlink(*batch)
        return deleted

    # -- poolctl settings and processes ---------------------------------------

    def settings(self, name: str, pools: dict[str, dict[str, Any]], **sections: dict[str, Any]) -> tuple[Settings, Path]:
        """Write a config file for one benchmark and load it; return the settings and the file.

        Each benchmark gets its own key prefix under the run's prefix. The file
        carries the URLs and the prefix too, so child processes need only
        POOLCTL_CONFIG.
        """
        config = {
            "redis": {"url": self.redis_url, "key_prefix": f"{self.key_prefix}{name}:"},
            "database": {"url": self.database_url},
            **sections,
            "pools": pools,
        }
        path = self.workdir / f"{name}.toml"
        path.write_text(to_toml(config), encoding="utf-8")
        return load_settings(path), path

    def child_env(self, config: Path) -> dict[str, str]:
        """Return the environment of a child poolctl process: this one's without POOLCTL_*, plus the config file."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("POOLCTL_")}
        env["POOLCTL_CONFIG"] = str(config)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
        return env

    def spawn(self, argv: list[str], env: dict[str, str], log_name: str, stdout: int | None = None) -> subprocess.Popen[bytes]:
        """Start a child process that close() stops; its stderr goes to a log file in the work folder."""
        log_path = self.workdir / log_name
        with log_path.open("ab") as log_file:
            child = subprocess.Popen(argv, env=env, cwd=self.workdir, stdout=stdout, stderr=log_file)
        self._children.append(child)
        return child

    def forget(self, child: subprocess.Popen[bytes]) -> None:
        """Stop tracking a child that has exited."""
        if child in self._children:
            self._children.remove(child)

    def log_tail(self, log_name: str, chars: int = 2000) -> str:
        path = self.workdir / log_name
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stopwatch(self, label: str) -> Stopwatch:
        """Return a stopwatch for a poolctl code path; with --profile it also writes LABEL.prof."""
        path = self.profile_dir / f"{label}.prof" if self.profile_dir else None
        return Stopwatch(path)


def stop_child(child: subprocess.Popen[bytes]) -> None:
    """Stop a child with SIGTERM, then SIGKILL if it has not exited within CHILD_STOP_TIMEOUT_S."""
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=CHILD_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def mask_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
