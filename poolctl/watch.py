"""The fill daemon: repeated fill passes that keep up with consumption and survive outages.

Between passes the loop reads every pool's length, in one round trip, every
`fill.min_interval_s` (less often when that read itself is slow: it never
takes more than a tenth of the time). From those lengths it keeps each pool's
drain rate, and it starts the next pass as soon as a pool reaches its
threshold, or holds less than `fill.lead_s` seconds of pops at its drain rate:
for such a pool the pass raises the threshold to that many items. Without
such a pool the next pass comes after `fill.interval_s`. A pool that drains at
10,000 items/s is so topped up while it still holds 5,000, instead of after it
ran dry waiting for the next interval.

The pass at each interval flushes all pending acks. Passes in between flush
only pools with more than two ack batches waiting, so that the daemon does
not race the consumers' own flushes.

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


# A drain rate estimate moves this far towards each new measurement.
RATE_WEIGHT = 0.5
# Lengths between passes are read at most this share of the time.
POLL_SHARE = 0.1


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
        self._rates: dict[PoolKeys, float] = {}  # items popped per second, estimated from the lengths read
        self._next_flush = 0.0  # when the next pass flushes every pool's pending acks
        self._poll_s = settings.fill.min_interval_s
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
            self._wait_for_next_pass(self.next_wait(result))
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
        flush_all = now >= self._next_flush
        if flush_all:
            self._next_flush = now + self.settings.fill.interval_s
        result = self.filler.run_pass(
            self.targets, thresholds=self.thresholds(),
            flush_min_acks=1 if flush_all else 2 * self.settings.acks.batch + 1,
        )
        self.passes += 1
        after = time.monotonic()
        fills = {(fill.pool_type, fill.group): fill for fill in result.fills}
        for keys, length in result.lengths.items():
            fill = fills.get((keys.pool_type, keys.group))
            self._observe(keys, fill.length_after if fill is not None and fill.pushed else length, after)
        self._report(result)
        return result

    def thresholds(self) -> dict[PoolKeys, int]:
        """Return the raised threshold of each pool that drains fast: the items it pops in fill.lead_s."""
        raised = {}
        for keys, rate in self._rates.items():
            spec = self.settings.pools[keys.pool_type]
            lead = int(rate * self.settings.fill.lead_s)
            if lead > spec.threshold:
                raised[keys] = min(lead, spec.size - 1)
        return raised

    def _observe(self, keys: PoolKeys, length: int, now: float) -> None:
        """Record a pool's length, updating its drain rate while it shrinks and letting it decay while it rests."""
        previous = self._samples.get(keys)
        self._samples[keys] = _Sample(length, now)
        if previous is None or now <= previous.at:
            return
        rate = self._rates.get(keys, 0.0)
        if length < previous.length:
            measured = (previous.length - length) / (now - previous.at)
            self._rates[keys] = measured if rate == 0.0 else rate + RATE_WEIGHT * (measured - rate)
        elif length == previous.length and rate:
            rate *= 1 - RATE_WEIGHT
            if rate < 1.0:
                self._rates.pop(keys, None)
            else:
                self._rates[keys] = rate
        # A longer pool was filled in between, which gives no drain rate.

    def _wait_for_next_pass(self, wait: float) -> None:
        """Sleep up to wait seconds, reading the pool lengths meanwhile; return early when a pool needs a fill."""
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= self._poll_s or not self.targets:
                self.stop.wait(max(remaining, 0.0))
                return
            if self.stop.wait(self._poll_s):
                return
            started = time.monotonic()
            try:
                lengths = self.filler.store.lengths(self.targets)
            except ServiceUnavailable:
                return  # the pass reports it and backs off
            now = time.monotonic()
            self._poll_s = max(self.settings.fill.min_interval_s, (now - started) / POLL_SHARE)
            due = False
            raised = self.thresholds()
            for keys, length in zip(self.targets, lengths, strict=True):
                if length.pool < 0:
                    continue  # a key of the wrong type: the pass reports it
                self._observe(keys, length.pool, now)
                threshold = max(self.settings.pools[keys.pool_type].threshold, raised.get(keys, 0))
                due = due or length.pool <= threshold
            if due:
                return

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
        """Seconds until the next pass: soon for a pool a fill left short of its size, else the interval."""
        for fill in result.fills:
            if fill.outcome == "filled" and fill.length_after < self.settings.pools[fill.pool_type].size:
                return self.settings.fill.min_interval_s  # still short while SQL has rows: go again soon
        return self.settings.fill.interval_s

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
