"""The metrics endpoint of `fill --watch`, scraped over HTTP and compared with `stats --json`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port
from test_cli import env, loaded, run  # noqa: F401  (env and loaded are fixtures)

# Gauges of the endpoint and the stats --json field each one must equal.
GAUGE_FIELDS = {
    "poolctl_pool_length": "length", "poolctl_pool_size": "size", "poolctl_pool_threshold": "threshold",
    "poolctl_pool_acks": "acks", "poolctl_pool_dead": "dead", "poolctl_pool_pop_rate": "pop_rate",
    "poolctl_pool_fill_rate": "fill_rate",
}


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Return {sample name: {sorted labels: value}} from the endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def wait_until(condition, description: str, limit_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"gave up waiting: {description}")


@pytest.mark.slow
def test_metrics_match_stats_json(loaded: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    process_env = {**{name: value for name, value in os.environ.items() if not name.startswith("POOLCTL_")}, **loaded}
    # The 7 items popped below must stay popped: no early refill of a pool that looks like it drains fast.
    process_env["POOLCTL_FILL_LEAD_S"] = "0"
    filler = subprocess.Popen(
        [sys.executable, "-m", "poolctl", "fill", "--watch", "--interval", "0.2", "--metrics-port", str(port), "-q"],
        env=process_env, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )
    try:
        def stats() -> list[dict[str, object]]:
            result = run(["stats", "--json"], loaded, tmp_path)
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)["pools"]

        wait_until(lambda: all(row["length"] == row["size"] for row in stats()), "every pool full")
        popped = run(["pop", "titles", "--group", "2", "--count", "7"], loaded, tmp_path)
        assert popped.returncode == 0, popped.stderr
        rows = stats()
        samples = scrape(port)
    finally:
        filler.send_signal(signal.SIGINT)
        _, stderr = filler.communicate(timeout=30)
    assert filler.returncode == 0, stderr

    assert samples["poolctl_redis_up"] == {(): 1.0}
    for row in rows:
        labels = (("group", str(row["group"])), ("pool_type", row["pool_type"]))
        for metric, field in GAUGE_FIELDS.items():
            assert samples[metric][labels] == pytest.approx(row[field]), (metric, row)
        assert samples["poolctl_pool_lock_held"][labels] == 0.0
    titles_2 = next(row for row in rows if (row["pool_type"], row["group"]) == ("titles", 2))
    assert (titles_2["length"], titles_2["pop_rate"]) == (33, round(7 / 60, 3))

    pushed = sum(row["size"] for row in rows)
    assert sum(samples["poolctl_fill_items_total"].values()) == pushed
    filled = {labels: value for labels, value in samples["poolctl_fills_total"].items() if ("outcome", "filled") in labels}
    assert sorted(filled.values()) == [1.0] * len(rows)
    assert samples["poolctl_fill_passes_total"][()] >= 1
    assert sum(value for labels, value in samples["poolctl_fill_duration_seconds_count"].items()) == len(rows)
    assert sum(samples.get("poolctl_fill_errors_total", {}).values()) == 0


def test_metrics_port_needs_watch(loaded: dict[str, str], tmp_path: Path) -> None:
    result = run(["fill", "--metrics-port", "9999"], loaded, tmp_path)
    assert result.returncode == 2
    assert "--metrics-port needs --watch" in result.stderr


def test_metrics_port_in_use(loaded: dict[str, str], tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(["fill", "--watch", "--metrics-port", str(port)], loaded, tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
