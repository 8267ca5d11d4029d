"""The benchmark suite runs end to end in its smallest mode and reports every row; no timing is ever asserted."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis

from conftest import MARIADB_ROOT, REDIS_URL

ROOT = Path(__file__).resolve().parent.parent
TARGET_ROWS = {
    "fill.titles", "fill.bodies",
    "keepup.empty_pops",
    "pop.one", "pop.many100",
    "idle.pass", "idle.per_pool_growth",
    "plans.claim_query", "plans.fallback_query", "plans.fill_pass",
    "startup.pop",
    "memory.fill_peak",
}
# Rows without a target that the suite must still report.
REPORTED_ROWS = TARGET_ROWS | {"keepup.delivered", "memory.idle_rss"}
BENCHMARKS = {"fill", "keepup", "pop", "idle", "plans", "startup", "memory"}
SmokeRun = tuple[subprocess.CompletedProcess[str], dict[str, Any], str]  # process, JSON document, results file
RESULTS_TEMPLATE = "# Results\n\nKept by hand.\n\n<!-- bench:begin -->\nold table\n<!-- bench:end -->\n\nAlso kept.\n"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    """Run `python -m bench.run --smoke` once, writing JSON and a results file."""
    folder = tmp_path_factory.mktemp("bench")
    results_file = folder / "RESULTS.md"
    results_file.write_text(RESULTS_TEMPLATE, encoding="utf-8")
    json_file = folder / "bench.json"
    env = {name: value for name, value in os.environ.items() if not name.startswith("POOLCTL_")}
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--json", str(json_file), "--results", str(results_file)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    document = json.loads(json_file.read_text(encoding="utf-8")) if json_file.exists() else {}
    return completed, document, results_file.read_text(encoding="utf-8")


@pytest.mark.mariadb
@pytest.mark.redis
@pytest.mark.slow
def test_bench_smoke_run_exits_zero(smoke_run: SmokeRun) -> None:
    completed, _, _ = smoke_run
    assert completed.returncode == 0, f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr[-4000:]}"


@pytest.mark.mariadb
@pytest.mark.redis
@pytest.mark.slow
def test_bench_json_has_every_row(smoke_run: SmokeRun) -> None:
    _, document, _ = smoke_run
    assert document.get("schema") == 1, document
    assert document["mode"] == "smoke"
    assert set(document["machine"]) >= {"cpu", "cores", "memory_gib", "mariadb", "redis", "python", "pymysql", "redis_py"}
    rows = {row["name"]: row for row in document["results"]}
    assert REPORTED_ROWS - set(rows) == set(), f"rows missing from the JSON: {sorted(REPORTED_ROWS - set(rows))}"
    assert {row["benchmark"] for row in document["results"]} == BENCHMARKS
    errors = {name: row["error"] for name, row in rows.items() if row["error"]}
    assert errors == {}, errors


@pytest.mark.mariadb
@pytest.mark.redis
@pytest.mark.slow
def test_bench_rows_are_consistent(smoke_run: SmokeRun) -> None:
    _, document, _ = smoke_run
    for row in document["results"]:
        name = row["name"]
        if name in TARGET_ROWS:
            assert row["outcome"] == "not judged", f"{name}: {row}"  # smoke sizes mean nothing
            assert row["target"], f"{name} has no target"
        else:
            assert row["outcome"] == "info", f"{name}: {row}"
        if row["samples"]:
            assert all(math.isfinite(value) for value in row["samples"]), f"{name}: {row['samples']}"
            assert row["min"] <= row["median"] <= row["max"], f"{name}: {row}"
        if row["ratio"] is not None:
            assert math.isclose(row["ratio"], row["median"] / row["baseline_median"]), f"{name}: {row}"


@pytest.mark.parametrize(
    ("op", "limit", "samples", "baseline", "outcome"),
    [
        (">=", 0.8, [9.0, 8.0, 10.0], [10.0], "PASS"),  # median 9 / 10 = 0.9
        (">=", 0.8, [7.0, 8.0, 6.0], [10.0], "FAIL"),  # 0.7
        ("<=", 1.5, [14.0], [10.0], "PASS"),
        ("<=", 1.5, [16.0], [10.0], "FAIL"),
    ],
)
def test_bench_result_judges_ratio_of_medians(
    op: str, limit: float, samples: list[float], baseline: list[float], outcome: str
) -> None:
    from bench.core import Result, Target

    result = Result("pop", "pop.one", "items/s", samples, baseline_samples=baseline, target=Target(op, limit))  # type: ignore[arg-type]
    assert result.outcome == outcome
    result.judged = False
    assert (result.outcome, result.passed) == ("not judged", None)
    assert Result("pop", "pop.info", "items/s", samples, baseline_samples=baseline).outcome == "info"


@pytest.mark.mariadb
@pytest.mark.redis
@pytest.mark.slow
def test_bench_prints_table_with_every_row(smoke_run: SmokeRun) -> None:
    completed, document, _ = smoke_run
    lines = completed.stdout.splitlines()
    assert lines[0].split() == ["benchmark", "unit", "median", "min", "max", "baseline", "ratio", "target", "result"]
    table = lines[2 : lines.index("")]
    printed = {line.split()[0] for line in table}
    assert {row["name"] for row in document["results"]} <= printed


@pytest.mark.mariadb
@pytest.mark.redis
@pytest.mark.slow
def test_bench_results_file_keeps_other_text(smoke_run: SmokeRun) -> None:
    _, _, results = smoke_run
    assert results.startswith("# Results\n\nKept by hand.\n\n<!-- bench:begin -->\n"), results[:200]
    assert results.endswith("<!-- bench:end -->\n\nAlso kept.\n"), results[-200:]
    assert "old table" not in results
    assert "| fill.titles | items/s |" in results
    assert "smoke mode" in results


@pytest.mark.mariadb
@pytest.mark.redis
@pytest.mark.slow
def test_bench_removes_database_and_keys(smoke_run: SmokeRun) -> None:
    _, document, _ = smoke_run
    conn = pymysql.connect(**MARIADB_ROOT)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SHOW DATABASES LIKE %s", (document["database"],))
            assert cursor.fetchall() == (), f"database {document['database']} was left behind"
    finally:
        conn.close()
    client = redis.Redis.from_url(REDIS_URL)
    left = list(client.scan_iter(match=document["key_prefix"] + "*", count=1000))
    client.close()
    assert left == [], f"{len(left)} Redis keys left under {document['key_prefix']}"
