"""The command line contract: exact JSON shapes, data alone on stdout, plain text when piped, exit codes, logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from conftest import REDIS_URL
from test_cli import env, loaded, run  # noqa: F401  (env and loaded are fixtures)

STATS_KEYS = {
    "pool_type", "group", "length", "size", "threshold", "fill_percent", "acks", "dead", "lock_owner", "lock_ttl_s",
    "available", "queued", "consumed", "pop_rate", "fill_rate", "empty_in_s", "exhausted_in_s", "attention",
}
ERROR_KEYS = {"code", "message", "hint"}
BOX_DRAWING = set("─│┃━┏┓┗┛┡┩└┘┌┐╇┳┻")


def json_of(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """Parse stdout as exactly one JSON document, failing with the output when it is anything else."""
    try:
        return json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"stdout is not one JSON document:\n{result.stdout}\nstderr:\n{result.stderr}")


def assert_plain(result: subprocess.CompletedProcess[str]) -> None:
    assert "\x1b[" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert not BOX_DRAWING & set(result.stdout), result.stdout


def test_every_command_json_shape(loaded: dict[str, str], tmp_path: Path, key_prefix: str) -> None:
    fill = json_of(run(["fill", "--json"], loaded, tmp_path))
    assert set(fill) == {"pools", "pools_checked", "pushed", "restored", "acks_flushed", "wrong_type", "seconds"}
    assert {key for row in fill["pools"] for key in row} == {  # type: ignore[union-attr]
        "pool_type", "group", "length_before", "length_after", "pushed", "outcome", "restored", "seconds"}

    pop = json_of(run(["pop", "titles", "--group", "1", "--count", "2", "--json"], loaded, tmp_path))
    assert set(pop) == {"pool_type", "group", "items"}
    assert [set(item) for item in pop["items"]] == [{"id", "text", "source"}] * 2  # type: ignore[union-attr]

    stats = json_of(run(["stats", "--json"], loaded, tmp_path))
    assert set(stats) == {"time", "pools"}
    assert [set(row) for row in stats["pools"]] == [STATS_KEYS] * 6  # type: ignore[union-attr]

    check = json_of(run(["check", "--json"], loaded, tmp_path))
    assert check == {"status": "ok", "checked": 6, "low": []}

    reconciled = json_of(run(["reconcile", "--json"], loaded, tmp_path))
    assert set(reconciled) == {"applied", "restored", "pools"}
    assert [set(row) for row in reconciled["pools"]] == [{  # type: ignore[union-attr]
        "pool_type", "group", "outcome", "sentinel_missing", "queued", "in_pool", "in_acks", "missing", "recorded",
        "ambiguous", "lost", "restored", "claims_dropped", "malformed", "message", "ids", "seconds"}] * 6
    assert {key for row in reconciled["pools"] for key in row["ids"]} == {  # type: ignore[union-attr,index]
        "recorded", "ambiguous", "lost", "restored"}

    audited = json_of(run(["audit", "--json"], loaded, tmp_path))
    assert set(audited) == {"ok", "pools_checked", "errors", "warnings", "findings", "seconds"}
    assert audited["findings"] == []

    schema = json_of(run(["db", "check", "--json"], loaded, tmp_path))
    assert set(schema) == {"ok", "failed", "warnings", "checks"}
    assert {key for row in schema["checks"] for key in row} == {"name", "status", "message", "hint"}  # type: ignore[union-attr]

    redis.Redis.from_url(REDIS_URL).set(f"{key_prefix}titles:pool:3:filling", "host:1:abc", px=60_000)
    locks = json_of(run(["locks", "--json"], loaded, tmp_path))
    assert [set(lock) for lock in locks["locks"]] == [{"pool_type", "group", "key", "owner", "ttl_s"}]  # type: ignore[union-attr]
    flushed = json_of(run(["locks", "flush", "--yes", "--json"], loaded, tmp_path))
    assert set(flushed) == {"removed", "skipped"}

    init = json_of(run(["db", "init", "--json"], loaded, tmp_path))
    assert [set(table) for table in init["tables"]] == [  # type: ignore[union-attr]
        {"pool_type", "table", "created", "index_ok", "plan", "inserted", "seconds"}] * 2


def test_piped_text_has_no_escapes(loaded: dict[str, str], tmp_path: Path, key_prefix: str) -> None:
    redis.Redis.from_url(REDIS_URL).set(f"{key_prefix}titles:pool:3:filling", "host:1:abc", px=60_000)
    for args in (["fill"], ["stats"], ["pop", "titles", "-g", "1"], ["locks"], ["check"], ["doctor"], ["db", "init"],
                 ["import", "titles", "-g", "9"], ["pop", "titles", "-g", "99"]):
        result = run(args, loaded, tmp_path, stdin="一\n二\n")
        assert result.returncode in (0, 1, 2, 5), (args, result.stderr)
        assert_plain(result)


def test_stats_text_columns(loaded: dict[str, str], tmp_path: Path) -> None:
    run(["fill"], loaded, tmp_path)
    lines = run(["stats", "--pool", "titles", "--group", "2"], loaded, tmp_path).stdout.splitlines()
    available = json_of(run(["stats", "--json", "--pool", "titles", "--group", "2"], loaded, tmp_path))["pools"][0]["available"]  # type: ignore[index]
    assert lines[0].split() == ["pool", "group", "length", "size", "threshold", "fill", "%", "acks", "dead", "lock",
                                "available", "queued", "consumed", "pop/s", "fill/s", "empty", "in", "attention"]
    assert lines[1].split() == ["titles", "2", "40", "40", "10", "100.0", "0", "0", "-", str(available), "40", "0",
                                "0.0", "0.7", "-", "-"]
    assert len(lines) == 2


def test_error_envelopes(loaded: dict[str, str], tmp_path: Path) -> None:
    cases = [
        (["pop", "titles", "--json"], 2, "usage"),
        (["pop", "headlines", "-g", "1", "--json"], 2, "unknown_pool_type"),
        (["stats", "--json", "--redis-url", "redis://127.0.0.1:1/0"], 4, "redis_unavailable"),
        (["check", "--json", "--redis-url", "redis://127.0.0.1:1/0"], 4, "redis_unavailable"),
        (["pop", "titles", "-g", "1", "--json"], 3, "pool_empty"),
    ]
    for args, code, error_code in cases:
        result = run(args, loaded, tmp_path)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        envelope = json_of(result)
        assert set(envelope) == {"error"}
        assert set(envelope["error"]) == ERROR_KEYS, envelope  # type: ignore[arg-type]
        assert envelope["error"]["code"] == error_code, envelope  # type: ignore[index]
        assert result.stderr.strip(), args


def test_check_exit_codes(loaded: dict[str, str], tmp_path: Path) -> None:
    low = run(["check"], loaded, tmp_path)
    assert low.returncode == 5, low.stdout
    assert low.stdout.splitlines()[-1] == "6 pools checked, 6 low"
    run(["fill"], loaded, tmp_path)
    ok = run(["check"], loaded, tmp_path)
    assert (ok.returncode, ok.stdout) == (0, "6 pools checked, 0 low\n")
    run(["pop", "titles", "-g", "2", "-n", "30"], loaded, tmp_path)
    one_low = run(["check", "--json"], loaded, tmp_path)
    assert one_low.returncode == 5
    assert json_of(one_low) == {"status": "low", "checked": 6,
                                "low": [{"pool_type": "titles", "group": 2, "length": 10, "threshold": 10}]}
    typo = run(["check", "--group", "999"], loaded, tmp_path)  # a probe with a wrong group must not pass
    assert typo.returncode == 2, typo.stdout
    assert "group 999 has no rows" in typo.stderr


def shell(command: str, env_extra: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("POOLCTL_")}
    environment.update(env_extra)
    return subprocess.run(["bash", "-c", command], env=environment, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_broken_pipe_is_quiet(loaded: dict[str, str], tmp_path: Path) -> None:
    run(["fill"], loaded, tmp_path)
    poolctl = f"{sys.executable} -m poolctl"
    popped = shell(f"{poolctl} pop titles -g 1 -n 30 | head -1; echo \"status ${{PIPESTATUS[*]}}\"", loaded, tmp_path)
    assert popped.stderr == ""
    assert popped.stdout.splitlines()[-1] == "status 0 0"
    watched = shell(f"{poolctl} stats --watch --interval 0.2 | head -12; echo \"status ${{PIPESTATUS[*]}}\"", loaded, tmp_path)
    assert watched.stderr == ""
    assert watched.stdout.splitlines()[-1] == "status 0 0"
    assert watched.stdout.count("pool ") == 2  # two snapshots of 1 + 6 lines each, a blank line between


def test_stats_watch_json_lines(loaded: dict[str, str], tmp_path: Path) -> None:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("POOLCTL_")} | loaded
    process = subprocess.Popen([sys.executable, "-m", "poolctl", "stats", "--watch", "--json", "--interval", "0.2"],
                               env=environment, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = [process.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
    process.send_signal(signal.SIGINT)
    rest, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    for line in lines + rest.splitlines():
        snapshot = json.loads(line)
        assert set(snapshot) == {"time", "pools"}
        assert len(snapshot["pools"]) == 6


def test_verbosity_levels(loaded: dict[str, str], tmp_path: Path) -> None:
    default = run(["fill"], loaded, tmp_path).stderr
    assert " INFO poolctl.cli: fill pass:" in default
    assert " DEBUG " not in default
    assert " DEBUG poolctl.cli: settings from environment and defaults" in run(["fill", "-v"], loaded, tmp_path).stderr
    assert run(["fill", "-q"], loaded, tmp_path).stderr == ""
    # Popping more than the pool has logs a warning: shown with -q, hidden with -qq.
    assert "WARNING" in run(["pop", "titles", "-g", "1", "-n", "100", "-q"], loaded, tmp_path).stderr
    assert run(["pop", "titles", "-g", "2", "-n", "100", "-qq"], loaded, tmp_path).stderr == ""


def test_log_format_json(loaded: dict[str, str], tmp_path: Path) -> None:
    result = run(["fill", "--log-format", "json", "-v"], loaded, tmp_path)
    lines = result.stderr.splitlines()
    assert len(lines) >= 2, result.stderr
    for line in lines:
        entry = json.loads(line)
        assert set(entry) == {"time", "level", "logger", "message"}, entry
    assert {json.loads(line)["level"] for line in lines} >= {"DEBUG", "INFO"}


def test_stdout_is_utf8_in_c_locale(loaded: dict[str, str], tmp_path: Path) -> None:
    run(["fill"], loaded, tmp_path)
    ascii_locale = {**loaded, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    environment = {name: value for name, value in os.environ.items() if not name.startswith(("POOLCTL_", "LC_", "LANG"))}
    environment.update(ascii_locale)
    result = subprocess.run([sys.executable, "-m", "poolctl", "pop", "titles", "-g", "1", "--json"], env=environment,
                            cwd=tmp_path, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = json.loads(result.stdout.decode("utf-8"))["items"][0]["text"]
    assert any("\u4e00" <= char <= "\u9fff" for char in text), text


def test_shell_completion_script(env: dict[str, str], tmp_path: Path) -> None:
    poolctl = str(Path(sys.executable).with_name("poolctl"))
    environment = {name: value for name, value in os.environ.items() if not name.startswith("POOLCTL_")}
    result = subprocess.run([poolctl, "--show-completion", "bash"], env=environment, cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "_POOLCTL_COMPLETE" in result.stdout
    assert "complete " in result.stdout


def test_wide_table_drops_least_needed_columns_to_fit() -> None:
    from poolctl.cli.output import _fit_columns

    columns = ["pool", "group", "length", "consumed", "lock", "attention"]
    cells = [["contents", "12", "5000", "123456", "host:1:abcdef", "low"]]
    keep, hidden = _fit_columns(columns, cells, 200)
    assert (keep, hidden) == ([0, 1, 2, 3, 4, 5], [])
    keep, hidden = _fit_columns(columns, cells, 50)
    assert [columns[index] for index in keep] == ["pool", "group", "length", "attention"]
    assert hidden == ["consumed", "lock"]
