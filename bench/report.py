"""The machine description, the results table (text and Markdown), the JSON document and RESULTS.md."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.core import Result
from bench.env import REPO_ROOT, BenchEnv

JSON_SCHEMA = 1
RESULTS_BEGIN = "<!-- bench:begin -->"
RESULTS_END = "<!-- bench:end -->"
COLUMNS = ["benchmark", "unit", "median", "min", "max", "baseline", "ratio", "target", "result"]


def describe_machine(env: BenchEnv) -> dict[str, Any]:
    """Return the CPU, memory, server and library versions that the figures depend on."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(_meminfo_kib("MemTotal") / 1024 / 1024, 1),
        "mariadb": env.query("SELECT VERSION()")[0][0],
        "redis": env.redis.info("server").get("redis_version"),
        "python": platform.python_version(),
        "pymysql": version("pymysql"),
        "redis_py": version("redis"),
        "poolctl_commit": _git_commit(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo_kib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _git_commit() -> str:
    """Return the last commit that changed poolctl/, marked when poolctl/ has uncommitted changes."""
    try:
        commit = subprocess.run(["git", "log", "-1", "--format=%h", "--", "poolctl"], cwd=REPO_ROOT,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "poolctl"], cwd=REPO_ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def format_value(value: float | None, unit: str) -> str:
    """Format a number for the table: thousands separators for large values, 3 significant digits for small ones."""
    if value is None:
        return ""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if value == int(value) and unit in ("pops", "items"):
        return f"{int(value)}"
    return f"{value:.3g}"


def table_rows(results: Sequence[Result]) -> list[list[str]]:
    rows = []
    for result in results:
        ratio = f"{result.ratio:.2f}" if result.ratio is not None else ""
        rows.append([
            result.name,
            result.unit,
            format_value(result.median, result.unit),
            format_value(min(result.samples), result.unit) if result.samples else "",
            format_value(max(result.samples), result.unit) if result.samples else "",
            format_value(result.baseline_median, result.unit),
            ratio,
            result.target_label,
            result.outcome,
        ])
    return rows


def text_table(results: Sequence[Result]) -> str:
    rows = table_rows(results)
    widths = [max(len(row[index]) for row in [COLUMNS, *rows]) for index in range(len(COLUMNS))]
    numeric = {2, 3, 4, 5, 6}

    def line(cells: list[str]) -> str:
        padded = (cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(cells))
        return "  ".join(padded).rstrip()

    return "\n".join([line(COLUMNS), line(["-" * width for width in widths]), *(line(row) for row in rows)])


def notes(results: Sequence[Result]) -> list[str]:
    """Return one line per row that has a baseline, a detail or an error, for under the table."""
    lines = []
    for result in results:
        parts = []
        if result.baseline:
            parts.append(f"baseline: {result.baseline}")
        if result.detail:
            parts.append(result.detail)
        if result.error:
            parts.append(f"error: {result.error}")
        if parts:
            lines.append(f"{result.name}: " + "; ".join(parts))
    return lines


def markdown(results: Sequence[Result], machine: dict[str, Any], command: str, seconds: float, mode: str) -> str:
    """Return the Markdown block that RESULTS.md keeps between its markers."""
    header = "| " + " | ".join(COLUMNS) + " |"
    rule = "|" + "|".join("---:" if index in (2, 3, 4, 5, 6) else "---" for index in range(len(COLUMNS))) + "|"
    body = ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table_rows(results)]
    lines = [
        f"Run: `{command}` ({mode} mode, {seconds / 60:.1f} minutes) on poolctl as of commit "
        f"{machine['poolctl_commit']}.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {machine['cpu']}, {machine['cores']} cores |",
        f"| memory | {machine['memory_gib']} GiB |",
        f"| MariaDB | {machine['mariadb']} |",
        f"| Redis | {machine['redis']} |",
        f"| Python | {machine['python']} |",
        f"| PyMySQL, redis-py | {machine['pymysql']}, {machine['redis_py']} |",
        "",
        header,
        rule,
        *body,
        "",
        *(f"- {line}" for line in notes(results)),
    ]
    return "\n".join(lines)


def update_results_file(path: Path, block: str) -> None:
    """Replace the text between the markers in path with block, keeping the rest; append the markers when missing."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    new_block = f"{RESULTS_BEGIN}\n{block}\n{RESULTS_END}"
    if RESULTS_BEGIN in text and RESULTS_END in text:
        before = text.split(RESULTS_BEGIN, 1)[0]
        after = text.split(RESULTS_END, 1)[1]
        text = before + new_block + after
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + new_block + "\n"
    path.write_text(text, encoding="utf-8")


def json_document(results: Sequence[Result], machine: dict[str, Any], env: BenchEnv, mode: str, seconds: float,
                  started: str) -> dict[str, Any]:
    return {
        "schema": JSON_SCHEMA,
        "started": started,
        "mode": mode,
        "seconds": round(seconds, 1),
        "database": env.database,
        "key_prefix": env.key_prefix,
        "machine": machine,
        "results": [result.to_json() for result in results],
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
