"""Memory: the peak RSS of a process filling large bodies, against the bytes of one batch.

Each round starts a child process (bench.workers memory) that imports
poolctl, connects to Redis and SQL, reads its RSS (idle), resets its peak
RSS and runs one fill pass over every body. The growth is the peak minus
idle. One batch's bytes are the pool type's batch size times the body size.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from bench.core import Result, Scale, Target
from bench.data import create_tables, drop_tables, generate_rows
from bench.env import BenchEnv

log = logging.getLogger("bench")

POOL_TYPE = "bodies"
TABLE = "memory_bodies"
GROUPS = 4
AVAILABLE, QUEUED = 1, 2
GENERATE_CHUNK = 2_000  # 100 MB of 50 KB bodies per INSERT
MIB = 1024 * 1024
CHILD_TIMEOUT_S = 600.0
PREFIX_BYTES = 10  # each body starts with its zero-padded row number, so that no two are equal
FILLER_WORD = "内容文本"  # 4 characters, 12 bytes in UTF-8


def run(env: BenchEnv, scale: Scale) -> list[Result]:
    size = max(scale.memory_bodies, 1000)
    settings, config = env.settings(
        "memory", {POOL_TYPE: {"table": TABLE, "text_column": "body", "text_type": "long", "size": size,
                               "threshold": size - 1}}
    )
    batch = settings.pools[POOL_TYPE].batch
    create_tables(settings)
    generate_rows(env, TABLE, "group_id, batch_id, status, body",
                  f"1 + seq % {GROUPS}, 1, {AVAILABLE}, {_body_sql(scale.memory_body_bytes)}", scale.memory_bodies,
                  chunk=GENERATE_CHUNK)
    body_bytes = env.query(f"SELECT MIN(LENGTH(body)), MAX(LENGTH(body)) FROM `{TABLE}`")[0]
    if body_bytes != (scale.memory_body_bytes, scale.memory_body_bytes):
        raise RuntimeError(f"generated bodies are {body_bytes[0]} to {body_bytes[1]} bytes, not {scale.memory_body_bytes}")

    growth: list[float] = []
    idle: list[float] = []
    reports = []
    try:
        for index in range(scale.warmup + scale.rounds):
            env.execute(f"UPDATE `{TABLE}` SET status = %s WHERE status <> %s", (AVAILABLE, AVAILABLE))
            env.delete_keys(settings.redis.key_prefix)
            report = _child_fill(env, config)
            if report["pushed"] != scale.memory_bodies:
                raise RuntimeError(f"the fill pushed {report['pushed']} bodies, expected {scale.memory_bodies}")
            if index >= scale.warmup:
                growth.append((report["peak_kib"] - report["idle_kib"]) / 1024)
                idle.append(report["idle_kib"] / 1024)
                reports.append(report)
    finally:
        drop_tables(env, [TABLE])
        env.delete_keys(settings.redis.key_prefix)

    batch_mib = batch * scale.memory_body_bytes / MIB
    method = "VmHWM reset through /proc/self/clear_refs" if reports and reports[0]["hwm_kib"] else "VmRSS sampled every 2 ms"
    fill_rate = sum(report["pushed"] / report["seconds"] for report in reports) / len(reports) if reports else 0
    return [
        Result("memory", "memory.fill_peak", "MiB", growth, baseline=f"one batch: {batch} bodies x "
               f"{scale.memory_body_bytes // 1024} KiB", baseline_samples=[batch_mib] * len(growth),
               target=Target("<=", 3.0),
               detail=f"peak RSS above idle while filling {scale.memory_bodies:,} bodies of "
               f"{scale.memory_body_bytes // 1024} KiB in one pass ({method}; {fill_rate:,.0f} bodies/s)"),
        Result("memory", "memory.idle_rss", "MiB", idle,
               detail="RSS of the filling process after imports and connections, before the fill"),
    ]


def _body_sql(total_bytes: int) -> str:
    """Return a SQL expression for a body of exactly total_bytes UTF-8 bytes, unique per seq."""
    word_bytes = len(FILLER_WORD.encode())
    words, rest = divmod(total_bytes - PREFIX_BYTES, word_bytes)
    return f"CONCAT(LPAD(seq, {PREFIX_BYTES}, '0'), REPEAT('{FILLER_WORD}', {words}), REPEAT('x', {rest}))"


def _child_fill(env: BenchEnv, config: Path) -> dict[str, float]:
    argv = [sys.executable, "-m", "bench.workers", "memory", POOL_TYPE]
    child = env.spawn(argv, env.child_env(config), "memory-child.log", stdout=subprocess.PIPE)  # type: ignore[arg-type]
    output, _ = child.communicate(timeout=CHILD_TIMEOUT_S)  # on a timeout, env.close() stops the child
    env.forget(child)
    if child.returncode != 0:
        raise RuntimeError(f"the memory probe exited {child.returncode}: {env.log_tail('memory-child.log')}")
    return json.loads(output)
