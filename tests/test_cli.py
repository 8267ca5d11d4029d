"""The command line as a user runs it: output, JSON shapes, errors and exit codes."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import sys
from pathlib import Path

import pymysql
import pytest

from conftest import MARIADB_ROOT, REDIS_URL

SECRET = "s3cret-pw"


def run(args: list[str], env_extra: dict[str, str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("POOLCTL_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "poolctl", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120, input=stdin)


@pytest.fixture
def env(tmp_path: Path, key_prefix: str) -> dict[str, str]:
    return {
        "POOLCTL_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "POOLCTL_REDIS_URL": REDIS_URL,
        "POOLCTL_REDIS_KEY_PREFIX": key_prefix,
        "POOLCTL_POOLS_TITLES_SIZE": "40",
        "POOLCTL_POOLS_TITLES_THRESHOLD": "10",
        "POOLCTL_POOLS_TITLES_BATCH": "15",
        "POOLCTL_POOLS_CONTENTS_SIZE": "20",
        "POOLCTL_POOLS_CONTENTS_THRESHOLD": "5",
        "POOLCTL_POOLS_CONTENTS_BATCH": "10",
    }


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    detail = f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.returncode == code, detail
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, detail
    assert lines[0].startswith("poolctl: error: "), detail
    assert "Traceback" not in result.stderr, detail
    for fragment in fragments:
        assert fragment in lines[0], detail
    assert SECRET not in result.stderr + result.stdout, "password leaked"


@pytest.fixture
def loaded(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    result = run(["db", "init", "--sample", "300", "--groups", "3", "--seed", "7"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    return env


def test_version(env: dict[str, str], tmp_path: Path) -> None:
    import poolctl

    result = run(["--version"], env, tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"poolctl {poolctl.__version__}\n", "")
    assert not (tmp_path / "cli.db").exists()  # nothing else ran


def test_common_option_before_command(env: dict[str, str], tmp_path: Path) -> None:
    result = run(["--config", "poolctl.toml", "doctor"], env, tmp_path)
    assert_one_line_error(result, 2, "No such option: --config", "Put --config after the command name")


def test_db_init_creates_tables(env: dict[str, str], tmp_path: Path) -> None:
    result = run(["db", "init", "--sample", "titles=50", "--groups", "2", "--json"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    tables = {table["pool_type"]: table for table in json.loads(result.stdout)["tables"]}
    assert tables["titles"]["created"] and tables["contents"]["created"]
    assert (tables["titles"]["inserted"], tables["contents"]["inserted"]) == (50, 0)
    assert tables["titles"]["index_ok"] and tables["contents"]["index_ok"]


def test_db_init_creates_missing_mariadb_database(env: dict[str, str], tmp_path: Path) -> None:
    """Only db init creates a MariaDB database the URL names; pop --fallback and doctor report it missing."""
    name = f"poolctl_test_new_{secrets.token_hex(4)}"
    mariadb = {**env, "POOLCTL_DATABASE_URL": f"mysql://root@127.0.0.1:3306/{name}"}
    conn = pymysql.connect(**MARIADB_ROOT, autocommit=True)
    try:
        popped = run(["pop", "titles", "--group", "1", "--fallback"], mariadb, tmp_path)
        assert_one_line_error(popped, 4, f"Unknown database '{name}'", "poolctl db init")
        checked = run(["doctor"], mariadb, tmp_path)
        assert checked.returncode == 1, checked.stderr
        assert f"Unknown database '{name}'" in checked.stdout
        with conn.cursor() as cursor:
            assert cursor.execute("SHOW DATABASES LIKE %s", (name,)) == 0
        result = run(["db", "init", "--sample", "50", "--groups", "2"], mariadb, tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"database {name} created" in result.stderr
        with conn.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM `{name}`.titles")
            assert cursor.fetchone()[0] == 50
            cursor.execute("SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,))
            assert cursor.fetchone()[0] == "utf8mb4"
    finally:
        with conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


def test_fill_then_stats_shows_full_pools(loaded: dict[str, str], tmp_path: Path) -> None:
    fill = run(["fill", "--json"], loaded, tmp_path)
    assert fill.returncode == 0, fill.stderr
    report = json.loads(fill.stdout)
    assert report["pushed"] == 3 * 40 + 3 * 20
    stats = run(["stats", "--json"], loaded, tmp_path)
    rows = json.loads(stats.stdout)["pools"]
    assert {(row["pool_type"], row["group"], row["length"]) for row in rows} == {
        (pool, group, size) for pool, size in (("titles", 40), ("contents", 20)) for group in (1, 2, 3)
    }
    assert all(row["queued"] == row["length"] and row["lock_owner"] is None for row in rows)


def test_stats_piped_is_plain_text(loaded: dict[str, str], tmp_path: Path) -> None:
    run(["fill"], loaded, tmp_path)
    result = run(["stats"], loaded, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout
    header = result.stdout.splitlines()[0].split()
    assert header[:5] == ["pool", "group", "length", "size", "threshold"]
    assert len(result.stdout.splitlines()) == 1 + 6


def test_pop_prints_text_and_consumes(loaded: dict[str, str], tmp_path: Path) -> None:
    run(["fill"], loaded, tmp_path)
    result = run(["pop", "titles", "--group", "2", "--json"], loaded, tmp_path)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert (payload["pool_type"], payload["group"], len(payload["items"])) == ("titles", 2, 1)
    item = payload["items"][0]
    assert set(item) == {"id", "text", "source"} and item["source"] == "pool"
    stats = json.loads(run(["stats", "--json", "--pool", "titles", "--group", "2"], loaded, tmp_path).stdout)["pools"]
    assert (stats[0]["consumed"], stats[0]["acks"], stats[0]["length"]) == (1, 0, 39)
    text = run(["pop", "titles", "-g", "2", "-n", "3"], loaded, tmp_path)
    assert text.returncode == 0, text.stderr
    assert len(text.stdout.splitlines()) == 3


def test_pop_without_sql_table(loaded: dict[str, str], tmp_path: Path) -> None:
    """A pop whose ack flush fails for lack of a table still prints its items; the acks wait in Redis."""
    run(["fill"], loaded, tmp_path)
    empty_db = {**loaded, "POOLCTL_DATABASE_URL": f"sqlite:///{tmp_path / 'no-tables.db'}"}
    result = run(["pop", "titles", "-g", "2", "-n", "3", "--json"], empty_db, tmp_path)
    assert result.returncode == 0, result.stderr
    popped = [item["id"] for item in json.loads(result.stdout)["items"]]
    assert len(popped) == 3
    assert "ack flush failed, acks stay in Redis" in result.stderr
    stats = json.loads(run(["stats", "--json", "--pool", "titles", "--group", "2"], loaded, tmp_path).stdout)["pools"]
    assert (stats[0]["acks"], stats[0]["queued"]) == (3, 40)
    fill = json.loads(run(["fill", "--json"], loaded, tmp_path).stdout)  # the right database: acks flushed
    assert fill["acks_flushed"] == 3


def test_pop_fallback_failing_midway_prints_one_document(loaded: dict[str, str], tmp_path: Path) -> None:
    """Items popped before a fallback fails are handed out as one JSON document, exit 0, with a warning."""
    run(["fill"], {**loaded, "POOLCTL_POOLS_TITLES_SIZE": "12", "POOLCTL_POOLS_TITLES_THRESHOLD": "2",
                   "POOLCTL_POOLS_TITLES_BATCH": "12"}, tmp_path)
    no_file = {**loaded, "POOLCTL_DATABASE_URL": f"sqlite:///{tmp_path / 'missing.db'}"}
    result = run(["pop", "titles", "-g", "1", "-n", "15", "--fallback", "--json"], no_file, tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["items"]) == 12  # json.loads fails on a second document
    assert "12 of 15 items popped, then: SQLite database" in result.stderr
    assert not (tmp_path / "missing.db").exists()


def test_stats_unknown_group(loaded: dict[str, str], tmp_path: Path) -> None:
    assert_one_line_error(run(["stats", "--group", "999"], loaded, tmp_path), 2, "group 999 has no rows")


def test_pop_empty_pool_exit_code(loaded: dict[str, str], tmp_path: Path) -> None:
    result = run(["pop", "titles", "--group", "1"], loaded, tmp_path)
    assert_one_line_error(result, 3, "empty", "poolctl fill")


def test_pop_fallback_reads_sql(loaded: dict[str, str], tmp_path: Path) -> None:
    result = run(["pop", "titles", "--group", "1", "--fallback", "--json"], loaded, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["items"][0]["source"] == "sql"


def test_pop_fallback_redis_down_sql_empty(loaded: dict[str, str], tmp_path: Path) -> None:
    """Redis down and nothing available in SQL: a service error (4), not an empty pool, which was never read."""
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        conn.execute("UPDATE titles SET status = 0 WHERE group_id = 1")
    url = f"redis://:{SECRET}@127.0.0.1:1/0"
    result = run(["pop", "titles", "--group", "1", "--fallback", "--redis-url", url], loaded, tmp_path)
    assert result.returncode == 4, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("poolctl: error: titles group 1: Redis at redis://:***@127.0.0.1:1/0 is unreachable"), last
    assert "SQL has no available row" in last
    assert "empty" not in last
    assert SECRET not in result.stderr


def test_invalid_redis_url_is_config_error(loaded: dict[str, str], tmp_path: Path) -> None:
    for url in ("redis://127.0.0.1:99999/0", "redis://127.0.0.1:abc/0"):
        result = run(["stats", "--redis-url", url], loaded, tmp_path)
        assert_one_line_error(result, 2, "invalid Redis URL", "Fix redis.url")


def test_unknown_pool_type(loaded: dict[str, str], tmp_path: Path) -> None:
    result = run(["pop", "headlines", "--group", "1"], loaded, tmp_path)
    assert_one_line_error(result, 2, "unknown pool type 'headlines'", "titles")


def test_unknown_group(loaded: dict[str, str], tmp_path: Path) -> None:
    assert_one_line_error(run(["pop", "titles", "--group", "99"], loaded, tmp_path), 2, "group 99")
    assert_one_line_error(run(["fill", "--group", "99"], loaded, tmp_path), 2, "group 99")
    assert_one_line_error(run(["audit", "--group", "99"], loaded, tmp_path), 2, "group 99")


def test_unreachable_redis_masks_password(loaded: dict[str, str], tmp_path: Path) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:1/0"
    result = run(["fill", "--redis-url", url], loaded, tmp_path)
    assert_one_line_error(result, 4, "redis://:***@127.0.0.1:1/0", "redis.url")


def test_unreachable_sql_masks_password(loaded: dict[str, str], tmp_path: Path) -> None:
    url = f"mysql://root:{SECRET}@127.0.0.1:1/poolctl"
    result = run(["stats", "--database-url", url], loaded, tmp_path)
    assert_one_line_error(result, 4, "mysql://root:***@127.0.0.1:1/poolctl", "database.url")


def test_missing_database_file_is_not_created(env: dict[str, str], tmp_path: Path) -> None:
    for command in (["fill"], ["stats"], ["pop", "titles", "-g", "1"], ["check"], ["reconcile"], ["audit"], ["db", "check"]):
        result = run(command, env, tmp_path)
        assert_one_line_error(result, 2, "cli.db does not exist", "poolctl db init")
    assert not (tmp_path / "cli.db").exists()


def test_missing_table(env: dict[str, str], tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "cli.db").close()  # a database without poolctl's tables
    result = run(["fill"], env, tmp_path)
    assert_one_line_error(result, 2, "titles", "poolctl db init")


def test_missing_column(loaded: dict[str, str], tmp_path: Path) -> None:
    result = run(["fill"], {**loaded, "POOLCTL_POOLS_TITLES_TEXT_COLUMN": "headline"}, tmp_path)
    assert_one_line_error(result, 2, "headline")


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("POOLCTL_POOLS_TITLES_SIZE", "-5", "pools.titles.size"),
        ("POOLCTL_POOLS_TITLES_THRESHOLD", "4000", "threshold"),
        ("POOLCTL_FILL_LOCK_TTL_S", "soon", "fill.lock_ttl_s"),
        ("POOLCTL_POOLS_TITLES_TABLE", "titles; DROP TABLE x", "not a valid SQL identifier"),
        ("POOLCTL_DATABASE_URL", "postgres://u:p@h/db", "database.url"),
        ("POOLCTL_REDIS_URLL", "redis://x", "unknown environment variable POOLCTL_REDIS_URLL"),
    ],
)
def test_bad_config_value(loaded: dict[str, str], tmp_path: Path, name: str, value: str, fragment: str) -> None:
    result = run(["stats"], {**loaded, name: value}, tmp_path)
    assert_one_line_error(result, 2, fragment)


def test_bad_config_file(loaded: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "poolctl.toml"
    config.write_text("[fill]\ninterval_s = 0\n")
    assert_one_line_error(run(["stats"], loaded, tmp_path), 2, "fill.interval_s", str(config.name))
    missing = run(["stats", "--config", str(tmp_path / "nope.toml")], loaded, tmp_path)
    assert_one_line_error(missing, 2, "not found")


def test_json_error_envelope(loaded: dict[str, str], tmp_path: Path) -> None:
    result = run(["pop", "titles", "--group", "1", "--json"], loaded, tmp_path)
    assert result.returncode == 3
    assert json.loads(result.stdout) == {
        "error": {"code": "pool_empty", "message": "titles group 1: the pool is empty",
                  "hint": "Run `poolctl fill`, or retry with --fallback"}
    }


def test_locks_list_and_flush(loaded: dict[str, str], tmp_path: Path, key_prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.set(f"{key_prefix}titles:pool:2:filling", "deadhost:1:abc", px=60_000)
    listed = json.loads(run(["locks", "--json"], loaded, tmp_path).stdout)["locks"]
    assert [(lock["pool_type"], lock["group"], lock["owner"]) for lock in listed] == [("titles", 2, "deadhost:1:abc")]
    refused = run(["locks", "flush"], loaded, tmp_path, stdin="")
    assert_one_line_error(refused, 2, "--yes")
    flushed = json.loads(run(["locks", "flush", "--yes", "--json"], loaded, tmp_path).stdout)
    assert [lock["owner"] for lock in flushed["removed"]] == ["deadhost:1:abc"]
    assert client.exists(f"{key_prefix}titles:pool:2:filling") == 0


def test_every_command_has_help(env: dict[str, str], tmp_path: Path) -> None:
    for command in (["fill"], ["pop"], ["stats"], ["locks"], ["db", "init"], ["db", "check"], ["reconcile"], ["audit"]):
        result = run([*command, "--help"], env, tmp_path)
        assert result.returncode == 0, result.stderr
        assert "Usage" in result.stdout
