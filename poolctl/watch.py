"""The fill daemon: repeated fill passes that keep up with consumption and survive outages.

Between passes the loop sleeps `fill.interval_s`, or less when a pool drains
fast enough to reach its threshold sooner. It estimates each pool's drain rate
from the lengths of consecutive passes and wakes at half the projected time to
threshold, but never more often than every `fill.min_interval_s`.

When Redis or SQL cannot be reached, the loop logs one warning, then probes
the service with a backoff from BACKOFF_START_S doubling up to BACKOFF_MAX_S,
and logs one line when it responds again. Fill passes resume once every
service is back. A pool whose state Redis lost is reconciled by its next fill
(see poolctl.fill), and the loop reports that once per pass.
"""

from __future__ import annotations

import logging
import random
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
BACKOFF_MAX_S = 10.0
# Each backoff wait is scaled by a random factor in 1 +- BACKOFF_JITTER, so that
# several fillers do not all retry at the same moment.
BACKOFF_JITTER = 0.2


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
        self._down: dict[str, float] = {}  # service name -> when it went down (monotonic), while it is down
        self._wrong_type: set[str] = set()  # keys already reported as holding the wrong type
        self.passes = 0

    def run(self) -> None:
        """Loop until the stop event is set, then flush acks one last time."""
        log.info("fill watch started (owner %s, interval %.1fs)", self.filler.token, self.settings.fill.interval_s)
        backoff = BACKOFF_START_S
        while not self.stop.is_set():
            try:
                self._probe_down_services()
                result = self.run_once()
            except ServiceUnavailable as exc:
                self._service_down(exc)
                if self.events is not None:
                    self.events.pass_failed(exc)
                self.stop.wait(backoff * random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER))
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
        self._report(result)
        return result

    def _report(self, result: PassResult) -> None:
        recovered = [fill for fill in result.fills if fill.sentinel_missing]
        if recovered:
            restored = sum(fill.restored for fill in recovered)
            log.log(
                logging.WARNING if restored else logging.INFO,
                "%d pools had no sentinel: Redis lost their state (a restart without persistence or a flush), "
                "or poolctl never filled them; reconciled before filling, %d missing items restored",
                len(recovered), restored,
            )
        crashed = [fill for fill in result.fills if fill.restored and not fill.sentinel_missing]
        if crashed:
            log.warning(
                "%d pools held items that a crashed or expired fill had claimed; %d of them restored",
                len(crashed), sum(fill.restored for fill in crashed),
            )
        for key in sorted(set(result.wrong_type) - self._wrong_type):
            log.error("Redis key %s has the wrong type; its pool is skipped until it is fixed (see poolctl audit)", key)
        for key in sorted(self._wrong_type - set(result.wrong_type)):
            log.info("Redis key %s has the right type again; its pool is filled again", key)
        self._wrong_type = set(result.wrong_type)

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
            self._down[name] = time.monotonic()
            log.warning("%s is unavailable, fill passes paused and retried with backoff: %s", name, exc.message)

    def _probe_down_services(self) -> None:
        """Check each service that was down; log each one that responds again, raise for the first that does not."""
        probes = {"Redis": self.filler.store.ping, "SQL": self.filler.db.ping}
        for name in list(self._down):
            probe = probes.get(name)
            if probe is not None:
                probe()
            log.warning("%s is back after %.1fs; fill passes resumed", name, time.monotonic() - self._down.pop(name))

    def _final_flush(self) -> None:
        flushed = 0
        try:
            lengths = self.filler.store.lengths(self.targets)
            for keys, length in zip(self.targets, lengths, strict=True):
                if length.acks > 0:
                    flushed += len(flush_acks(self.filler.store, self.filler.db, keys, self.settings.acks.batch))
        except ServiceUnavailable as exc:
            log.warning("final ack flush failed, acks stay in Redis for the next flush: %s", exc.message)
        if flushed:
            log.info("%d acks flushed before stopping", flushed)
