"""The fill daemon: repeated fill passes that keep up with consumption and survive outages.

Between passes the loop sleeps `fill.interval_s`, or less when a pool drains
fast enough to reach its threshold sooner. It estimates each pool's drain rate
from the lengths of consecutive passes and wakes at half the projected time to
threshold, but never more often than every `fill.min_interval_s`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from poolctl.acks import flush_acks
from poolctl.config import Settings
from poolctl.errors import DatabaseUnavailable, PoolctlError, RedisUnavailable, ServiceUnavailable
from poolctl.fill import Filler, PassResult
from poolctl.keys import PoolKeys
from poolctl.sql import Database
from poolctl.store import RedisStore

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0


class WatchEvents(Protocol):
    """Receives what the watch loop does, such as the metrics endpoint's counters."""

    def pass_done(self, result: PassResult) -> None: ...

    def pass_failed(self, error: PoolctlError) -> None: ...


@dataclass(slots=True)
class _Sample:
    length: int
    at: float


class Watcher:
    """Runs fill passes until stopped; one instance per `poolctl fill --watch` process."""

    def __init__(
        self,
        settings: Settings,
        store: RedisStore,
        db: Database,
        pool_types: Sequence[str] | None = None,
        group: int | None = None,
        stop: threading.Event | None = None,
        events: WatchEvents | None = None,
    ) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.events = events
        self.filler = Filler(settings, store, db, stop=self.stop)
        self.pool_types = list(pool_types) if pool_types else None
        self.group = group
        self.targets: list[PoolKeys] = []
        self._next_discover = 0.0
        self._samples: dict[PoolKeys, _Sample] = {}
        self._down: dict[str, str] = {}  # service name -> first error message, while it is down
        self.passes = 0

    def run(self) -> None:
        """Loop until the stop event is set, then flush acks one last time."""
        log.info("fill watch started (owner %s, interval %.1fs)", self.filler.token, self.settings.fill.interval_s)
        backoff = BACKOFF_START_S
        while not self.stop.is_set():
            try:
                result = self.run_once()
            except ServiceUnavailable as exc:
                self._service_down(exc)
                if self.events is not None:
                    self.events.pass_failed(exc)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            backoff = BACKOFF_START_S
            if self.events is not None:
                self.events.pass_done(result)
            self.stop.wait(self.next_wait(result))
        self._final_flush()
        log.info("fill watch stopped after %d passes", self.passes)

    def run_once(self) -> PassResult:
        """Rediscover groups when due, then run one pass over all known pools."""
        now = time.monotonic()
        if now >= self._next_discover:
            found = self.filler.discover(self.pool_types, self.group)
            known = set(self.targets)
            self.targets.extend(keys for keys in found if keys not in known)
            self._next_discover = now + self.settings.fill.discover_interval_s
        result = self.filler.run_pass(self.targets)
        self.passes += 1
        self._services_up()
        for key in result.wrong_type:
            log.error("pool %s is not a list; it is skipped until fixed (see poolctl stats)", key)
        return result

    def next_wait(self, result: PassResult) -> float:
        """Seconds until the next pass: the interval, or sooner for a pool that drains fast."""
        interval = self.settings.fill.interval_s
        floor = self.settings.fill.min_interval_s
        fills = {(fill.pool_type, fill.group): fill for fill in result.fills}
        wait = interval
        now = time.monotonic()
        for keys, length in result.lengths.items():
            spec = self.settings.pools[keys.pool_type]
            fill = fills.get((keys.pool_type, keys.group))
            if fill is not None and fill.outcome == "filled" and fill.length_after < spec.size:
                wait = floor  # still short of its size while SQL has rows: go again at once
            previous = self._samples.get(keys)
            self._samples[keys] = _Sample(fill.length_after if fill else length, now)
            if previous is None or length >= previous.length or now <= previous.at:
                continue
            rate = (previous.length - length) / (now - previous.at)
            wait = min(wait, max(length - spec.threshold, 0) / rate / 2)
        return max(floor, min(wait, interval))

    def _service_down(self, exc: ServiceUnavailable) -> None:
        name = "a service"
        if isinstance(exc, RedisUnavailable):
            name = "Redis"
        elif isinstance(exc, DatabaseUnavailable):
            name = "SQL"
        if name not in self._down:
            self._down[name] = exc.message
            log.warning("%s is unavailable, retrying with backoff: %s", name, exc.message)

    def _services_up(self) -> None:
        for name in list(self._down):
            del self._down[name]
            log.warning("%s is back; fill passes resumed", name)

    def _final_flush(self) -> None:
        flushed = 0
        try:
            lengths = self.filler.store.lengths(self.targets)
            for keys, length in zip(self.targets, lengths, strict=True):
                if length.acks > 0:
                    flushed += flush_acks(self.filler.store, self.filler.db, keys, self.settings.acks.batch)
        except ServiceUnavailable as exc:
            log.warning("final ack flush failed, acks stay in Redis for the next flush: %s", exc.message)
        if flushed:
            log.info("%d acks flushed before stopping", flushed)
