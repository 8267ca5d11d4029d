"""Prometheus metrics of the fill daemon, served by `poolctl fill --watch --metrics-port P`.

Pool gauges (length, size, threshold, pending acks, dead letters, pop and fill
rates, lock held) are read from Redis at each scrape by the same code as
`poolctl stats`, so the two agree. Counters and the fill duration histogram
count what this process did: passes, fills by outcome, items pushed, lost
locks and failed passes.

This module imports prometheus_client, so import it only when metrics are on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from poolctl.config import Settings
from poolctl.errors import ConfigError, DatabaseUnavailable, PoolctlError, RedisUnavailable, ServiceUnavailable
from poolctl.fill import PassResult
from poolctl.keys import PoolKeys
from poolctl.stats import read_pool_stats
from poolctl.store import RedisStore

log = logging.getLogger(__name__)

POOL_LABELS = ["pool_type", "group"]
# Fill durations range from milliseconds (one small batch) to the lock TTL.
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# Gauges read at scrape time: metric name, help text, PoolStats attribute.
POOL_GAUGES = (
    ("poolctl_pool_length", "Items in the pool.", "length"),
    ("poolctl_pool_size", "Configured maximum items in the pool.", "size"),
    ("poolctl_pool_threshold", "Configured length at or below which the pool is filled.", "threshold"),
    ("poolctl_pool_acks", "Acks of popped items not yet consumed in SQL.", "acks"),
    ("poolctl_pool_dead", "Malformed items set aside in the dead-letter list.", "dead"),
    ("poolctl_pool_pop_rate", "Items popped per second over the last minute, by every poolctl consumer.", "pop_rate"),
    ("poolctl_pool_fill_rate", "Items pushed per second over the last minute, by every filler.", "fill_rate"),
)


class PoolCollector(Collector):
    """Reads every known pool's state from Redis when Prometheus scrapes."""

    def __init__(self, settings: Settings, store: RedisStore, pools: Callable[[], Sequence[PoolKeys]]) -> None:
        self.settings = settings
        self.store = store
        self.pools = pools

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("poolctl_redis_up", "1 when the last scrape could read Redis, else 0.")
        try:
            rows = read_pool_stats(self.settings, self.store, list(self.pools()))
        except ServiceUnavailable as exc:
            log.warning("metrics scrape could not read Redis: %s", exc.message)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for name, help_text, attribute in POOL_GAUGES:
            family = GaugeMetricFamily(name, help_text, labels=POOL_LABELS)
            for row in rows:
                value = getattr(row, attribute)
                if value is not None:
                    family.add_metric([row.pool_type, str(row.group)], float(value))
            yield family
        locked = GaugeMetricFamily("poolctl_pool_lock_held", "1 while a filler holds the pool's fill lock.",
                                   labels=POOL_LABELS)
        for row in rows:
            locked.add_metric([row.pool_type, str(row.group)], 0.0 if row.lock_owner is None else 1.0)
        yield locked


class FillMetrics:
    """The fill daemon's counters; the watch loop reports each pass and each failed pass here."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.passes = Counter("poolctl_fill_passes", "Fill passes completed.", registry=registry)
        self.fills = Counter("poolctl_fills", "Pool fills attempted, by outcome "
                             "(filled, full, locked, drained, lock_lost, overflow).",
                             POOL_LABELS + ["outcome"], registry=registry)
        self.items = Counter("poolctl_fill_items", "Items pushed into pools by this filler.", POOL_LABELS,
                             registry=registry)
        self.duration = Histogram("poolctl_fill_duration_seconds", "Time one pool fill took under its lock.",
                                  ["pool_type"], buckets=DURATION_BUCKETS_S, registry=registry)
        self.lock_lost = Counter("poolctl_fill_lock_lost", "Fills whose lock expired or was taken mid-fill.",
                                 POOL_LABELS, registry=registry)
        self.errors = Counter("poolctl_fill_errors", "Fill passes that failed, by the service that was down "
                              "(redis, sql).", ["service"], registry=registry)

    def pass_done(self, result: PassResult) -> None:
        self.passes.inc()
        for fill in result.fills:
            labels = (fill.pool_type, str(fill.group))
            self.fills.labels(*labels, fill.outcome).inc()
            if fill.pushed:
                self.items.labels(*labels).inc(fill.pushed)
            if fill.outcome != "locked":
                self.duration.labels(fill.pool_type).observe(fill.seconds)
            if fill.outcome == "lock_lost":
                self.lock_lost.labels(*labels).inc()

    def pass_failed(self, error: PoolctlError) -> None:
        service = "other"
        if isinstance(error, RedisUnavailable):
            service = "redis"
        elif isinstance(error, DatabaseUnavailable):
            service = "sql"
        self.errors.labels(service).inc()


class MetricsServer:
    """A running metrics endpoint; stop() shuts it down."""

    def __init__(self, server: Any, thread: Any, metrics: FillMetrics, url: str) -> None:
        self.server = server
        self.thread = thread
        self.metrics = metrics
        self.url = url

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(
    settings: Settings, store: RedisStore, pools: Callable[[], Sequence[PoolKeys]], host: str, port: int
) -> MetricsServer:
    """Start the HTTP endpoint in a background thread and return it; raises ConfigError when the port is taken."""
    registry = CollectorRegistry()
    registry.register(PoolCollector(settings, store, pools))
    ProcessCollector(registry=registry)
    metrics = FillMetrics(registry)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror}",
                          "Choose another --metrics-port, or stop the process that uses it") from None
    url = f"http://{host}:{server.server_port}/metrics"
    log.info("metrics served at %s", url)
    return MetricsServer(server, thread, metrics, url)
