"""Import: text, CSV and JSON Lines into SQL, bad lines named, nothing half-loaded, and a million lines."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from poolctl.errors import ConfigError
from poolctl.importer import ImportRejected, import_items, source_for

from conftest import REDIS_URL, Backend, load_rows
from test_cli import run


def rows_of(backend: Backend, pool_type: str = "titles") -> list[tuple[int, int, int, str]]:
    """Return (group, batch, status, text) of every row, in id order."""
    table = backend.db.table(pool_type)
    return [tuple(row) for row in backend.db.query(table.sql("SELECT {group}, {batch}, {status}, {text} FROM {table} ORDER BY {id}"))]


def write(path: Path, data: str | bytes) -> str:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def test_text_file_loads_available_rows(backend: Backend, tmp_path: Path) -> None:
    backend.db.create_table("titles")
    name = write(tmp_path / "t.txt", "第一个标题\n\n  \nsecond title\r\nthird\n")
    result = import_items(backend.settings, backend.db, "titles", 4, [source_for(name)])
    assert (result.loaded, result.blank, result.batch, result.rejected) == (3, 2, 1, [])
    available = backend.settings.status.available
    assert rows_of(backend) == [(4, 1, available, "第一个标题"), (4, 1, available, "second title"), (4, 1, available, "third")]


def test_default_batch_is_next_in_group(backend: Backend, tmp_path: Path) -> None:
    load_rows(backend.db, "titles", [(4, 7, "old"), (5, 9, "other group")])
    name = write(tmp_path / "t.txt", "new\n")
    assert import_items(backend.settings, backend.db, "titles", 4, [source_for(name)]).batch == 8
    assert import_items(backend.settings, backend.db, "titles", 4, [source_for(name)], batch=2).batch == 2
    assert [(group, batch) for group, batch, _, _ in rows_of(backend)] == [(4, 7), (5, 9), (4, 8), (4, 2)]


def test_bad_lines_load_nothing(backend: Backend, tmp_path: Path) -> None:
    backend.db.create_table("titles")
    load_rows(backend.db, "titles", [(1, 1, "already there")])
    good = write(tmp_path / "good.txt", "".join(f"line {n}\n" for n in range(25_000)))
    bad = write(tmp_path / "bad.txt", b"fine\n\xff\xfe broken\nfine too\n\xe4\xb8\n")
    with pytest.raises(ImportRejected) as caught:
        import_items(backend.settings, backend.db, "titles", 1, [source_for(good), source_for(bad)])
    rejected = caught.value.details["rejected"]  # type: ignore[index]
    assert [(item["source"], item["line"], item["reason"]) for item in rejected] == [
        (bad, 2, "not valid UTF-8"), (bad, 4, "not valid UTF-8"),
    ]
    assert rows_of(backend) == [(1, 1, backend.settings.status.available, "already there")]


def test_skip_bad_loads_the_rest(backend: Backend, tmp_path: Path) -> None:
    backend.db.create_table("titles")
    bad = write(tmp_path / "bad.txt", b"fine\n\xff broken\nfine too\n")
    result = import_items(backend.settings, backend.db, "titles", 1, [source_for(bad)], skip_bad=True)
    assert result.loaded == 2
    assert [(item.line, item.reason) for item in result.rejected] == [(2, "not valid UTF-8")]
    assert [text for _, _, _, text in rows_of(backend)] == ["fine", "fine too"]


def test_csv_with_header_and_quoted_lines(backend: Backend, tmp_path: Path) -> None:
    backend.db.create_table("contents")
    name = write(tmp_path / "c.csv", '\ufeffid,content\n1,"第一段\n第二段"\n2,plain\n3\n4,"with ""quotes"""\n')
    result = import_items(backend.settings, backend.db, "contents", 2, [source_for(name)], skip_bad=True)
    assert [text for _, _, _, text in rows_of(backend, "contents")] == ["第一段\n第二段", "plain", 'with "quotes"']
    assert [(item.line, item.reason) for item in result.rejected] == [(5, "1 fields, the header has 2")]


def test_csv_without_text_column(backend: Backend, tmp_path: Path) -> None:
    backend.db.create_table("titles")
    name = write(tmp_path / "c.csv", "id,body\n1,x\n")
    with pytest.raises(ConfigError) as caught:
        import_items(backend.settings, backend.db, "titles", 2, [source_for(name)])
    assert "'text' or 'title'" in caught.value.message
    named = import_items(backend.settings, backend.db, "titles", 2, [source_for(name)], column="body")
    assert named.loaded == 1


def test_jsonl_strings_and_objects(backend: Backend, tmp_path: Path) -> None:
    backend.db.create_table("titles")
    lines = ['"a string"', '{"text": "an object"}', '{"title": "by column name"}', "{broken", "[1]", '{"text": 5}', ""]
    name = write(tmp_path / "t.jsonl", "\n".join(lines) + "\n")
    result = import_items(backend.settings, backend.db, "titles", 3, [source_for(name)], skip_bad=True)
    assert [text for _, _, _, text in rows_of(backend)] == ["a string", "an object", "by column name"]
    assert [(item.line, item.reason.split(":")[0]) for item in result.rejected] == [
        (4, "not JSON"), (5, "not a JSON string or object"), (6, "field 'text' is not a string"),
    ]
    assert result.blank == 1


def test_mariadb_rejects_what_column_cannot_hold(mariadb_redis: Backend, tmp_path: Path) -> None:
    db = mariadb_redis.db
    db.execute(
        "CREATE TABLE titles (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, group_id INT NOT NULL, "
        "batch_id INT NOT NULL, status SMALLINT NOT NULL DEFAULT 1, title VARCHAR(10) NOT NULL) "
        "ENGINE=InnoDB DEFAULT CHARSET=utf8mb3"
    )
    name = write(tmp_path / "t.txt", "短标题\n表情😀符号\n一二三四五六七八九十\n一二三四五六七八九十一\n𠀀汉字\n")
    with pytest.raises(ImportRejected) as caught:
        import_items(mariadb_redis.settings, db, "titles", 1, [source_for(name)])
    rejected = caught.value.details["rejected"]  # type: ignore[index]
    assert [(item["line"], item["reason"]) for item in rejected] == [
        (2, "character U+1F600 takes 4 bytes, which the utf8mb3 column cannot hold"),
        (4, "11 characters, column holds at most 10"),
        (5, "character U+20000 takes 4 bytes, which the utf8mb3 column cannot hold"),
    ]
    assert rejected[0]["excerpt"] == "表情😀符号"
    assert db.query("SELECT COUNT(*) FROM titles")[0][0] == 0


def test_mariadb_utf8mb4_takes_4_byte_text(mariadb_redis: Backend, tmp_path: Path) -> None:
    mariadb_redis.db.create_table("titles")
    name = write(tmp_path / "t.txt", "表情😀符号\n𠀀汉字\n")
    assert import_items(mariadb_redis.settings, mariadb_redis.db, "titles", 1, [source_for(name)]).loaded == 2
    assert [text for _, _, _, text in rows_of(mariadb_redis)] == ["表情😀符号", "𠀀汉字"]


@pytest.fixture
def cli_env(tmp_path: Path, key_prefix: str) -> dict[str, str]:
    env = {"POOLCTL_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "POOLCTL_REDIS_URL": REDIS_URL,
           "POOLCTL_REDIS_KEY_PREFIX": key_prefix}
    assert run(["db", "init", "-q"], env, tmp_path).returncode == 0
    return env


def test_import_cli_stdin_and_json(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = run(["import", "titles", "-g", "3", "--json"], cli_env, tmp_path, stdin="一\n二\n\n三\n")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) | {"seconds": 0} == {
        "pool_type": "titles", "group": 3, "batch": 1, "loaded": 3, "blank": 1, "skipped": [], "seconds": 0,
    }


def test_import_cli_names_bad_lines(cli_env: dict[str, str], tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.txt", b"ok\n\xff\nok\n\xc3\n")
    text = run(["import", "titles", "-g", "3", bad], cli_env, tmp_path)
    assert text.returncode == 1, text.stderr
    assert text.stdout == ""
    assert text.stderr.splitlines() == [
        f"{bad}:2: not valid UTF-8: '\ufffd'",
        f"{bad}:4: not valid UTF-8: '\ufffd'",
        "poolctl: error: 2 lines rejected, nothing was loaded. Fix the lines listed, or pass --skip-bad to load the others",
    ]
    envelope = json.loads(run(["import", "titles", "-g", "3", bad, "--json", "-q"], cli_env, tmp_path).stdout)
    assert envelope["error"]["code"] == "rejected_lines"
    assert [item["line"] for item in envelope["error"]["details"]["rejected"]] == [2, 4]
    skipped = run(["import", "titles", "-g", "3", bad, "--skip-bad", "-q"], cli_env, tmp_path)
    assert skipped.returncode == 0, skipped.stderr
    assert skipped.stdout.splitlines()[1:] == [
        "skipped 2 rejected lines:", f"  {bad}:2: not valid UTF-8: '\ufffd'", f"  {bad}:4: not valid UTF-8: '\ufffd'",
    ]


def test_import_cli_missing_file(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = run(["import", "titles", "-g", "3", str(tmp_path / "nope.txt")], cli_env, tmp_path)
    assert result.returncode == 2
    assert "not found" in result.stderr


MILLION = 1_000_000


@pytest.mark.slow
def test_import_million_lines_with_progress_bar(mariadb_redis: Backend, tmp_path: Path, key_prefix: str) -> None:
    mariadb_redis.db.create_table("titles")
    path = tmp_path / "million.txt"
    with path.open("w", encoding="utf-8") as out:
        for start in range(0, MILLION, 100_000):
            out.write("".join(f"第{n}号标题 title {n}\n" for n in range(start, start + 100_000)))
    env = {name: value for name, value in os.environ.items() if not name.startswith("POOLCTL_")}
    env.update(POOLCTL_DATABASE_URL=mariadb_redis.settings.database.url, POOLCTL_REDIS_URL=REDIS_URL,
               POOLCTL_REDIS_KEY_PREFIX=key_prefix, COLUMNS="120")

    # stderr on a pseudo-terminal, so the progress bar is drawn as a person would see it
    controller, terminal = os.openpty()
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "poolctl", "import", "titles", "-g", "1", str(path), "--json"],
                               stdout=subprocess.PIPE, stderr=terminal, env=env, cwd=tmp_path)
    os.close(terminal)
    screen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO once the child has closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    stdout = process.stdout.read() if process.stdout else b""
    process.wait(timeout=300)
    seconds = time.monotonic() - started
    os.close(controller)
    output = screen.decode("utf-8", errors="replace")

    assert process.returncode == 0, output
    report = json.loads(stdout)
    assert (report["loaded"], report["skipped"]) == (MILLION, []), report
    assert mariadb_redis.db.query("SELECT COUNT(*) FROM titles WHERE status = 1 AND group_id = 1")[0][0] == MILLION
    frames = re.findall(r"importing.*?([\d.]+)/([\d.]+) MB", output)
    assert len(frames) >= 2, output[-2000:]
    assert frames[-1][0] == frames[-1][1], frames[-3:]
    print(f"imported {MILLION:,} lines ({path.stat().st_size:,} bytes) in {seconds:.1f}s, {len(frames)} progress frames")
