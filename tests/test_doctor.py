"""Doctor: each misconfiguration it looks for, set up for real and found.

Redis settings that must not be changed on the shared server (eviction policy,
persistence) are tested on a throwaway redis-server started on a free port of
127.0.0.1 and stopped by its pid.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from poolctl.config import Settings, load_settings
from poolctl.doctor import Check, doctor, mysql_version_checks, redis_version_check
from poolctl.sql import connect_database

from conftest import REDIS_URL, Backend, free_port, make_settings, sqlite_settings
from test_cli import run


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start redis-server processes with the given arguments; each is stopped by its pid afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> str:
        port = free_port()
        folder = tmp_path / f"redis-{port}"
        folder.mkdir()
        process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        started.append(process)
        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            pytest.fail(f"throwaway redis-server on port {port} did not start")
        return f"redis://127.0.0.1:{port}/0"

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


def checks_named(checks: list[Check], name: str) -> list[Check]:
    return [check for check in checks if check.name == name]


def only(checks: list[Check], name: str) -> Check:
    found = checks_named(checks, name)
    assert len(found) == 1, checks
    return found[0]


def initialized(settings: Settings) -> Settings:
    db = connect_database(settings)
    for pool_type in settings.pools:
        db.create_table(pool_type)
    db.close()
    return settings


def test_doctor_healthy_sqlite(tmp_path: Path, key_prefix: str, throwaway_redis) -> None:  # type: ignore[no-untyped-def]
    url = throwaway_redis("--appendonly", "yes", "--maxmemory-policy", "noeviction")
    settings = initialized(make_settings(sqlite_settings(tmp_path, key_prefix), redis={"url": url}))
    report = doctor(lambda: settings)
    assert report.ok, report.checks
    assert (report.failed, report.warnings) == (0, 0), report.checks
    assert [check.name for check in report.checks] == [
        "config", "redis", "redis eviction", "redis persistence", "sql",
        "table titles", "fill index titles", "table contents", "fill index contents",
    ]


def test_doctor_redis_unreachable(tmp_path: Path, key_prefix: str) -> None:
    settings = initialized(make_settings(sqlite_settings(tmp_path, key_prefix), redis={"url": "redis://127.0.0.1:1/0"}))
    report = doctor(lambda: settings)
    assert not report.ok
    assert only(report.checks, "redis").status == "fail"
    assert "unreachable" in only(report.checks, "redis").message
    assert only(report.checks, "redis eviction").status == "skip"
    assert only(report.checks, "sql").status == "ok"


def test_doctor_sql_unreachable(tmp_path: Path, key_prefix: str) -> None:
    settings = make_settings(sqlite_settings(tmp_path, key_prefix), database={"url": "mysql://root@127.0.0.1:1/nope"})
    report = doctor(lambda: settings)
    assert only(report.checks, "sql").status == "fail"
    assert only(report.checks, "tables").status == "skip"
    assert not report.ok


def test_doctor_missing_sqlite_file_not_created(tmp_path: Path, key_prefix: str) -> None:
    missing = tmp_path / "nothing.db"
    settings = make_settings(sqlite_settings(tmp_path, key_prefix), database={"url": f"sqlite:///{missing}"})
    check = only(doctor(lambda: settings).checks, "sql")
    assert check.status == "fail"
    assert "not found" in check.message
    assert not missing.exists()


@pytest.mark.parametrize(("version", "status"), [("5.0.14", "fail"), ("6.0.9", "fail"), ("6.2.0", "ok"), ("7.2.4", "ok")])
def test_redis_version_needs_rpop_count(version: str, status: str) -> None:
    assert redis_version_check(version, "redis://x").status == status


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("10.11.6-MariaDB-0+deb12u1", {"sql": "ok", "sql features": "ok"}),
        ("10.6.16-MariaDB", {"sql": "ok", "sql features": "fail"}),  # SKIP LOCKED, no DESC index
        ("10.5.23-MariaDB", {"sql": "ok", "sql features": ["warn", "fail"]}),
        ("8.0.36", {"sql": "ok", "sql features": "ok"}),
        ("5.7.44-log", {"sql": "ok", "sql features": ["warn", "fail"]}),
    ],
)
def test_sql_version_features(version: str, expected: dict[str, object]) -> None:
    checks = list(mysql_version_checks(version, "mysql://x"))
    for name, statuses in expected.items():
        wanted = statuses if isinstance(statuses, list) else [statuses]
        assert [check.status for check in checks_named(checks, name)] == wanted, checks


@pytest.mark.parametrize(("policy", "status"), [("allkeys-lru", "fail"), ("allkeys-random", "fail"),
                                                ("volatile-ttl", "warn"), ("noeviction", "ok")])
def test_doctor_eviction_policy(tmp_path: Path, key_prefix: str, throwaway_redis, policy: str, status: str) -> None:  # type: ignore[no-untyped-def]
    url = throwaway_redis("--maxmemory", "100mb", "--maxmemory-policy", policy, "--appendonly", "yes")
    settings = initialized(make_settings(sqlite_settings(tmp_path, key_prefix), redis={"url": url}))
    check = only(doctor(lambda: settings).checks, "redis eviction")
    assert check.status == status, check
    assert policy in check.message


@pytest.mark.parametrize(
    ("args", "status", "fragment"),
    [
        (("--appendonly", "yes"), "ok", "AOF on"),
        (("--appendonly", "no", "--save", "60 1000"), "warn", "items popped since then are handed out again"),
        (("--appendonly", "no", "--save", ""), "warn", "a restart empties every pool"),
    ],
)
def test_doctor_persistence(tmp_path: Path, key_prefix: str, throwaway_redis, args: tuple[str, ...], status: str,  # type: ignore[no-untyped-def]
                            fragment: str) -> None:
    url = throwaway_redis(*args)
    settings = initialized(make_settings(sqlite_settings(tmp_path, key_prefix), redis={"url": url}))
    check = only(doctor(lambda: settings).checks, "redis persistence")
    assert check.status == status, check
    assert fragment in check.message


def test_doctor_missing_table(tmp_path: Path, key_prefix: str) -> None:
    settings = sqlite_settings(tmp_path, key_prefix)
    connect_database(settings).create_table("contents")
    report = doctor(lambda: settings)
    check = only(report.checks, "table titles")
    assert check.status == "fail"
    assert "titles" in check.message
    assert "db init" in check.hint
    assert checks_named(report.checks, "fill index titles") == []
    assert only(report.checks, "table contents").status == "ok"


def test_doctor_missing_column(tmp_path: Path, key_prefix: str) -> None:
    settings = initialized(sqlite_settings(tmp_path, key_prefix))
    renamed = make_settings(settings, pools={"titles": {"text_column": "headline"}})
    check = only(doctor(lambda: renamed).checks, "table titles")
    assert check.status == "fail"
    assert "headline" in check.message


def test_doctor_sqlite_filesort(tmp_path: Path, key_prefix: str) -> None:
    settings = initialized(sqlite_settings(tmp_path, key_prefix))
    db = connect_database(settings)
    db.execute("DROP INDEX titles_poolctl_fill")
    db.close()
    report = doctor(lambda: settings)
    check = only(report.checks, "fill index titles")
    assert check.status == "fail", check
    assert "batch_id DESC" in check.hint
    assert only(report.checks, "fill index contents").status == "ok"
    assert not report.ok


def test_doctor_mariadb_filesort_and_utf8mb3(mariadb_redis: Backend) -> None:
    db = mariadb_redis.db
    db.create_table("contents")
    db.execute(
        "CREATE TABLE titles (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, group_id INT NOT NULL, "
        "batch_id INT NOT NULL, status SMALLINT NOT NULL DEFAULT 1, title VARCHAR(255) NOT NULL) "
        "ENGINE=InnoDB DEFAULT CHARSET=utf8mb3"
    )
    report = doctor(lambda: mariadb_redis.settings)
    assert only(report.checks, "sql").status == "ok"
    assert only(report.checks, "sql features").status == "ok"
    index = only(report.checks, "fill index titles")
    assert index.status == "fail", index
    assert "filesort" in index.message, index
    charset = only(report.checks, "charset titles")
    assert charset.status == "fail", charset
    assert "utf8mb3" in charset.message, charset
    assert "CONVERT TO CHARACTER SET utf8mb4" in charset.hint
    assert only(report.checks, "charset contents").status == "ok"
    assert only(report.checks, "fill index contents").status == "ok"


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("POOLCTL_POOLS_TITLES_THRESHOLD", "6000", "threshold (6000) must be below size (5000)"),
        ("POOLCTL_POOLS_TITLES_BATCH", "6000", "batch (6000) must be at most size (5000)"),
    ],
)
def test_doctor_config_threshold_and_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str,
                                           fragment: str) -> None:
    monkeypatch.setenv(variable, value)

    def load() -> Settings:
        return load_settings(database={"url": f"sqlite:///{tmp_path / 'x.db'}"})

    report = doctor(load)
    check = only(report.checks, "config")
    assert check.status == "fail", check
    assert fragment in check.message
    assert variable in check.hint
    assert only(report.checks, "redis").status == "skip"
    assert not report.ok


def test_doctor_config_intervals_and_shared_table(tmp_path: Path, key_prefix: str) -> None:
    settings = initialized(make_settings(sqlite_settings(tmp_path, key_prefix), fill={"interval_s": 1.0, "min_interval_s": 2.0},
                                         pools={"contents": {"table": "titles", "text_column": "title"}}))
    found = {check.status: check for check in checks_named(doctor(lambda: settings).checks, "config")}
    assert set(found) == {"fail", "warn"}
    assert "fill.min_interval_s (2.0) is above fill.interval_s (1.0)" in found["fail"].message
    assert "share table titles" in found["warn"].message


def test_doctor_cli_exit_code_and_json(tmp_path: Path, key_prefix: str) -> None:
    env = {"POOLCTL_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "POOLCTL_REDIS_URL": REDIS_URL,
           "POOLCTL_REDIS_KEY_PREFIX": key_prefix}
    missing = run(["doctor", "--json"], env, tmp_path)
    assert missing.returncode == 1, missing.stderr
    report = json.loads(missing.stdout)
    assert set(report) == {"ok", "failed", "warnings", "checks"}
    assert report["ok"] is False
    assert report["failed"] == 1
    assert all(set(check) == {"name", "status", "message", "hint"} for check in report["checks"])
    assert run(["db", "init", "-q"], env, tmp_path).returncode == 0
    healthy = run(["doctor"], env, tmp_path)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    lines = healthy.stdout.splitlines()
    assert lines[-1].startswith("9 checks: 0 failed")
    assert all(line.split()[0] in ("ok", "WARN") for line in lines[:-1]), healthy.stdout
    assert "\x1b[" not in healthy.stdout

