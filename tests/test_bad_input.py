"""Bad data and bad requests: each gets a clear message and a documented exit code, and nothing is lost.

Malformed items in a pool, keys of the wrong Redis type, text that the
column's character set cannot store, acks that are not ids, and reconcile
or lock requests that need confirmation.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from poolctl.consumer import PoolConsumer
from poolctl.errors import DataError
from poolctl.fill import Filler
from poolctl.items import encode_item
from poolctl.locks import flush_locks, list_locks

from conftest import REDIS_URL, Backend, drop_tables, load_rows, mariadb_settings, status_of


def run(args: list[str], env: dict[str, str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    full_env = {name: value for name, value in os.environ.items() if not name.startswith("POOLCTL_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "poolctl", *args], env=full_env, cwd=cwd, capture_output=True,
                          text=True, timeout=120, input=stdin)


def detail(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """Return the one `poolctl: error:` line of stderr."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("poolctl: error: ")]
    assert len(lines) == 1, detail(result)
    return lines[0]


@pytest.fixture
def env(tmp_path: Path, key_prefix: str) -> dict[str, str]:
    return {
        "POOLCTL_DATABASE_URL": f"sqlite:///{tmp_path / 'bad.db'}",
        "POOLCTL_REDIS_URL": REDIS_URL,
        "POOLCTL_REDIS_KEY_PREFIX": key_prefix,
        "POOLCTL_POOLS_TITLES_SIZE": "20",
        "POOLCTL_POOLS_TITLES_THRESHOLD": "5",
        "POOLCTL_POOLS_TITLES_BATCH": "10",
        "POOLCTL_POOLS_CONTENTS_SIZE": "20",
        "POOLCTL_POOLS_CONTENTS_THRESHOLD": "5",
        "POOLCTL_POOLS_CONTENTS_BATCH": "10",
    }


@pytest.fixture
def filled(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    for command in (["db", "init", "--sample", "100", "--groups", "2", "--seed", "3"], ["fill"]):
        result = run(command, env, tmp_path)
        assert result.returncode == 0, detail(result)
    return env


@pytest.fixture
def client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


# -- malformed items ------------------------------------------------------------


def test_malformed_item_set_aside(filled: dict[str, str], tmp_path: Path, key_prefix: str, client: redis.Redis) -> None:
    pool = f"{key_prefix}titles:pool:1"
    client.rpush(pool, b'{"id": "seven", "text": "bad id"}', b"not json at all")  # at the tail: popped first
    audit = run(["audit"], filled, tmp_path)
    assert audit.returncode == 1, detail(audit)
    assert f"{pool} holds 2 entries that are not valid items; pops move them to {pool}:dead" in audit.stdout

    popped = run(["pop", "titles", "--group", "1", "--json"], filled, tmp_path)
    assert popped.returncode == 0, detail(popped)
    assert len(json.loads(popped.stdout)["items"]) == 1
    assert f"pool titles group 1: 2 malformed items moved to {pool}:dead" in popped.stderr
    # Popped from the tail in turn, so the last one popped is at the head of the dead list.
    assert client.lrange(f"{pool}:dead", 0, -1) == [b'{"id": "seven", "text": "bad id"}', b"not json at all"]

    after = run(["audit", "--json"], filled, tmp_path)
    assert after.returncode == 0, detail(after)
    findings = json.loads(after.stdout)["findings"]
    assert [(f["severity"], f["check"], f["count"]) for f in findings] == [("warning", "dead_letters", 2)]


def test_only_malformed_items_pool_empty(filled: dict[str, str], tmp_path: Path, key_prefix: str,
                                        client: redis.Redis) -> None:
    pool = f"{key_prefix}titles:pool:2"
    client.delete(pool)
    client.rpush(pool, b'{"id": 1e3, "text": "exponent id"}')
    result = run(["pop", "titles", "--group", "2"], filled, tmp_path)
    assert result.returncode == 3, detail(result)
    assert error_line(result) == ("poolctl: error: titles group 2: the pool is empty. "
                                  "Run `poolctl fill`, or retry with --fallback")
    assert f"1 malformed items moved to {pool}:dead" in result.stderr
    assert client.lrange(f"{pool}:dead", 0, -1) == [b'{"id": 1e3, "text": "exponent id"}']
    assert client.llen(f"{pool}:acks") == 0


def test_undecodable_text_keeps_row_queued(backend: Backend) -> None:
    """An entry that Lua accepts and Python cannot decode loses its ack, so its row is never marked consumed."""
    load_rows(backend.db, "titles", [(1, 1, "first"), (1, 1, "second")])
    filler = Filler(backend.settings, backend.store, backend.db)
    filler.run_pass(filler.discover(["titles"]))
    keys = backend.store.keys("titles", 1)
    raw = backend.redis_client.rpop(keys.pool)
    broken = raw.replace(b"first", b"\xff\xfe")  # invalid UTF-8 inside the JSON string
    backend.redis_client.rpush(keys.pool, broken)
    consumer = PoolConsumer(backend.settings, store=backend.store, db=backend.db)
    items = consumer.pop_many("titles", 1, 2)
    consumer.flush_acks()
    assert [item.text for item in items] == ["second"]
    assert backend.redis_client.lrange(keys.dead, 0, -1) == [broken]
    statuses = status_of(backend.db, "titles")
    assert statuses[json.loads(raw)["id"]] == backend.settings.status.queued
    assert statuses[items[0].id] == backend.settings.status.consumed


def test_acks_not_ids_moved_to_dead(filled: dict[str, str], tmp_path: Path, key_prefix: str,
                                    client: redis.Redis) -> None:
    acks = f"{key_prefix}titles:pool:1:acks"
    client.lpush(acks, b"twelve")
    audit = run(["audit"], filled, tmp_path)
    assert audit.returncode == 1, detail(audit)
    assert f"{acks} holds 1 entries that are not ids" in audit.stdout
    fill = run(["fill"], filled, tmp_path)
    assert fill.returncode == 0, detail(fill)
    assert f"acks {acks}: 1 entries are not ids, moved to {key_prefix}titles:pool:1:dead" in fill.stderr
    assert client.llen(acks) == 0
    assert client.lrange(f"{key_prefix}titles:pool:1:dead", 0, -1) == [b"twelve"]


# -- keys of the wrong type -----------------------------------------------------


def test_wrong_type_pool_key(filled: dict[str, str], tmp_path: Path, key_prefix: str, client: redis.Redis) -> None:
    pool = f"{key_prefix}titles:pool:1"
    client.delete(pool)
    client.hset(pool, "field", "value")

    popped = run(["pop", "titles", "--group", "1"], filled, tmp_path)
    assert popped.returncode == 1, detail(popped)
    assert error_line(popped) == (
        f"poolctl: error: Redis key {pool} holds a hash, but poolctl keeps a list there. "
        f"Inspect it (redis-cli TYPE {pool}), then rename or delete it; poolctl does not touch it"
    )

    fill = run(["fill", "--json"], filled, tmp_path)
    assert fill.returncode == 1, detail(fill)
    assert error_line(fill).startswith(f"poolctl: error: 1 Redis keys hold the wrong type, their pools were skipped: {pool}.")
    report = json.loads(fill.stdout.splitlines()[0])
    assert report["wrong_type"] == [pool]

    audit = run(["audit", "--json"], filled, tmp_path)
    assert audit.returncode == 1, detail(audit)
    findings = json.loads(audit.stdout)["findings"]
    assert [(f["check"], f["key"]) for f in findings if f["severity"] == "error"] == [("wrong_type", pool)]

    reconcile = run(["reconcile"], filled, tmp_path)
    assert reconcile.returncode == 1, detail(reconcile)
    assert "titles group 1 (wrong_type)" in error_line(reconcile)
    assert client.hgetall(pool) == {b"field": b"value"}  # poolctl never touches it


def test_wrong_type_claiming_key(filled: dict[str, str], tmp_path: Path, key_prefix: str, client: redis.Redis) -> None:
    claiming = f"{key_prefix}titles:pool:2:claiming"
    client.delete(f"{key_prefix}titles:pool:2")  # empty: the next fill must take the lock
    client.set(claiming, "not a set")
    fill = run(["fill"], filled, tmp_path)
    assert fill.returncode == 1, detail(fill)
    assert claiming in error_line(fill)
    assert client.exists(f"{key_prefix}titles:pool:2:filling") == 0  # the failed lock attempt left no lock
    assert client.llen(f"{key_prefix}titles:pool:1") == 20  # the other pools were filled


# -- text the column cannot store -------------------------------------------------


@pytest.fixture
def mariadb_env(mariadb_database: str, key_prefix: str) -> dict[str, str]:
    return {
        "POOLCTL_DATABASE_URL": f"mysql://root@127.0.0.1:3306/{mariadb_database}",
        "POOLCTL_REDIS_URL": REDIS_URL,
        "POOLCTL_REDIS_KEY_PREFIX": key_prefix,
    }


@pytest.fixture
def utf8mb3_titles(mariadb_database: str, key_prefix: str) -> Backend:  # type: ignore[misc]
    from poolctl.sql import connect_database

    settings = mariadb_settings(mariadb_database, key_prefix)
    db = connect_database(settings)
    drop_tables(db)
    db.create_table("contents")
    db.execute(
        "CREATE TABLE titles (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, group_id INT NOT NULL, "
        "batch_id INT NOT NULL, status SMALLINT NOT NULL DEFAULT 1, title VARCHAR(255) NOT NULL, "
        "KEY titles_poolctl_fill (group_id, status, batch_id DESC, id)) CHARACTER SET utf8mb3"
    )
    yield Backend("mariadb", settings, None, db, None)  # type: ignore[arg-type]
    drop_tables(db)
    db.close()


def test_sample_refused_for_utf8mb3(utf8mb3_titles: Backend, mariadb_env: dict[str, str], tmp_path: Path) -> None:
    result = run(["db", "init", "--sample", "50"], mariadb_env, tmp_path)
    assert result.returncode == 1, detail(result)
    assert error_line(result) == (
        "poolctl: error: column titles.title uses utf8mb3, which cannot store the 4-byte characters that sample "
        "texts contain, such as 𫖯 (U+2B5AF); nothing was inserted. "
        "Convert the table to utf8mb4 (ALTER TABLE titles CONVERT TO CHARACTER SET utf8mb4)"
    )
    assert status_of(utf8mb3_titles.db, "titles") == {}


def test_import_refuses_4_byte_text(utf8mb3_titles: Backend, mariadb_env: dict[str, str], tmp_path: Path) -> None:
    lines = tmp_path / "titles.txt"
    lines.write_text("普通标题\n表情 😀 标题\n赵孟𫖯的字\n")
    result = run(["import", "titles", "--group", "1", str(lines)], mariadb_env, tmp_path)
    assert result.returncode == 1, detail(result)
    assert result.stderr.splitlines()[:2] == [
        f"{lines}:2: character U+1F600 takes 4 bytes, which the utf8mb3 column cannot hold: '表情 😀 标题'",
        f"{lines}:3: character U+2B5AF takes 4 bytes, which the utf8mb3 column cannot hold: '赵孟𫖯的字'",
    ]
    assert error_line(result) == ("poolctl: error: 2 lines rejected, nothing was loaded. "
                                  "Fix the lines listed, or pass --skip-bad to load the others")
    assert status_of(utf8mb3_titles.db, "titles") == {}


def test_library_insert_4_byte_text(utf8mb3_titles: Backend) -> None:
    """A caller that skips the import checks still gets a DataError from the server's strict mode, with the fix."""
    db = utf8mb3_titles.db
    with pytest.raises(DataError) as caught:
        db.insert_rows("titles", [(1, 1, "普通标题"), (1, 1, "表情 😀 标题")])
    assert caught.value.message.startswith("text rejected by mysql://root@127.0.0.1:3306/")
    assert "Incorrect string value" in caught.value.message
    assert caught.value.hint.startswith("Convert the column to utf8mb4 (ALTER TABLE ... CONVERT TO CHARACTER SET utf8mb4)")
    assert status_of(db, "titles") == {}


def test_db_check_warns_utf8mb3(utf8mb3_titles: Backend, mariadb_env: dict[str, str], tmp_path: Path) -> None:
    result = run(["db", "check"], mariadb_env, tmp_path)
    assert result.returncode == 1, detail(result)
    assert ("FAIL  charset titles       column titles.title is utf8mb3: it cannot hold 4-byte characters (emoji, "
            "rarer CJK ideographs), so rows with them fail to load. ALTER TABLE titles CONVERT TO CHARACTER SET "
            "utf8mb4") in result.stdout.splitlines()
    assert result.stdout.splitlines()[-1] == "8 checks: 1 failed, 0 warnings"
    utf8mb3_titles.db.execute("ALTER TABLE titles CONVERT TO CHARACTER SET utf8mb4")
    fixed = run(["db", "check", "--json"], mariadb_env, tmp_path)
    assert fixed.returncode == 0, detail(fixed)
    report = json.loads(fixed.stdout)
    assert (report["ok"], report["failed"], report["warnings"]) == (True, 0, 0)
    assert [check["name"] for check in report["checks"]] == [
        "table titles", "fill index titles", "charset titles", "status titles",
        "table contents", "fill index contents", "charset contents", "status contents",
    ]


def test_db_check_missing_table(env: dict[str, str], tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "bad.db").close()  # a database without poolctl's tables
    result = run(["db", "check", "--json"], env, tmp_path)
    assert result.returncode == 1, detail(result)
    checks = json.loads(result.stdout)["checks"]
    assert [(check["name"], check["status"], check["message"].split(" in SQLite")[0]) for check in checks] == [
        ("table titles", "fail", "table titles for pool type titles not found"),
        ("table contents", "fail", "table contents for pool type contents not found"),
    ]
    assert checks[0]["hint"] == "Run `poolctl db init` or fix pools.titles.table in the config"


def test_db_check_unknown_status(filled: dict[str, str], tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "bad.db") as conn:
        conn.execute("UPDATE titles SET status = 9 WHERE id IN (1, 2)")
    result = run(["db", "check", "--json"], filled, tmp_path)
    assert result.returncode == 1, detail(result)
    failed = [check for check in json.loads(result.stdout)["checks"] if check["status"] == "fail"]
    assert failed == [{
        "name": "status titles", "status": "fail",
        "message": "2 rows of titles have a status that is none of available (1), queued (2) and consumed (0); "
                   "fill and pop ignore them",
        "hint": "Check [status] in the config, or fix the rows",
    }]


# -- requests that need confirmation ----------------------------------------------


def test_reconcile_ambiguous_needs_yes(filled: dict[str, str], tmp_path: Path) -> None:
    alone = run(["reconcile", "--include-ambiguous"], filled, tmp_path)
    assert alone.returncode == 2, detail(alone)
    assert error_line(alone) == "poolctl: error: --include-ambiguous works only together with --apply. Add --apply"
    unconfirmed = run(["reconcile", "--apply", "--include-ambiguous"], filled, tmp_path)
    assert unconfirmed.returncode == 2, detail(unconfirmed)
    assert error_line(unconfirmed) == ("poolctl: error: restoring ambiguous items needs confirmation. "
                                       "Pass --yes to restore them without a prompt")


def test_reconcile_text_report(filled: dict[str, str], tmp_path: Path, key_prefix: str, client: redis.Redis) -> None:
    client.rpop(f"{key_prefix}titles:pool:1")  # as the Go service pops: no ack
    result = run(["reconcile"], filled, tmp_path)
    assert result.returncode == 0, detail(result)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["pool", "group", "queued", "in", "pool", "in", "acks", "recorded", "ambiguous",
                                "lost", "restored", "outcome"]
    assert lines[1].split() == ["titles", "1", "20", "19", "0", "0", "1", "0", "0", "checked"]
    assert ("1 missing items are ambiguous (a consumer without acks may have served them): "
            "--apply --include-ambiguous restores them") in result.stderr


def test_locks_flush_keeps_new_owner(backend: Backend) -> None:
    keys = backend.store.keys("titles", 3)
    backend.store.acquire_lock(keys, "dead-filler", 30)
    listed = list_locks(backend.store)
    backend.redis_client.set(keys.lock, "live-filler", px=30_000)  # expired and taken over in between
    result = flush_locks(backend.store, listed)
    assert [lock.owner for lock in result.skipped] == ["dead-filler"]
    assert result.removed == []
    assert backend.redis_client.get(keys.lock) == b"live-filler"


def test_locks_flush_reports_removed(filled: dict[str, str], tmp_path: Path, key_prefix: str,
                                          client: redis.Redis) -> None:
    lock = f"{key_prefix}titles:pool:2:filling"
    client.set(lock, "deadhost:77:abc", px=60_000)
    result = run(["locks", "flush", "--yes"], filled, tmp_path)
    assert result.returncode == 0, detail(result)
    assert result.stdout == f"removed {lock} (owner deadhost:77:abc)\n"
    assert "pool titles group 2: lock of deadhost:77:abc flushed" in result.stderr
    assert client.exists(lock) == 0


def test_fill_with_encode_item_roundtrip(backend: Backend) -> None:
    """The only item shape poolctl writes passes the pop check unchanged."""
    keys = backend.store.keys("titles", 1)
    backend.redis_client.lpush(keys.pool, encode_item(42, '引号 " 和 \\ 反斜杠 {"id":7,}'))
    result = backend.store.pop(keys, 1)
    assert result.ids == [42]
    assert result.dead == 0
