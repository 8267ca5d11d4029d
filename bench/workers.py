"""Child processes of the benchmarks; each prints one JSON object on stdout.

    python -m bench.workers drain POOL_TYPE GROUP RATE SECONDS START_AT CHUNK
    python -m bench.workers memory POOL_TYPE

Settings come from POOLCTL_CONFIG, as for any poolctl process.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from poolctl.config import load_settings
from poolctl.consumer import PoolConsumer
from poolctl.fill import Filler
from poolctl.sql import connect_database
from poolctl.store import RedisStore

STATUS_FILE = Path("/proc/self/status")
CLEAR_REFS_FILE = Path("/proc/self/clear_refs")
# Writing 5 to clear_refs resets the process's peak RSS (VmHWM) to its current RSS (Linux 4.0 and later).
RESET_PEAK_RSS = "5"
SAMPLE_INTERVAL_S = 0.002
EMPTY_POP_PAUSE_S = 0.001


def drain(pool_type: str, group: int, rate: float, seconds: float, start_at: float, chunk: int) -> dict[str, Any]:
    """Pop chunk items at a time, paced to rate items per second, for seconds from the Unix time start_at.

    Pops are paced by the items requested, not the items received, so a
    consumer that got too few does not pop faster afterwards to catch up:
    like a web server, it loses those requests. A pop that returns fewer
    items than requested counts as short (none: empty); they are counted per
    second of the run.
    """
    consumer = PoolConsumer(load_settings())
    consumer.store.ping()
    consumer.db.ping()  # open the SQL connection before the clock starts
    time.sleep(max(0.0, start_at - time.time()))

    items = pops = 0
    shortfalls = [0] * (int(seconds) + 1)
    started = time.perf_counter()
    end = started + seconds
    while (now := time.perf_counter()) < end:
        due = started + pops * chunk / rate
        if now < due:
            time.sleep(min(due - now, end - now))
            continue
        got = consumer.pop_many(pool_type, group, chunk)
        pops += 1
        items += len(got)
        if len(got) < chunk:
            shortfalls[int(now - started)] += 1
        if not got:
            time.sleep(EMPTY_POP_PAUSE_S)
    elapsed = time.perf_counter() - started
    consumer.close()
    return {"items": items, "pops": pops, "seconds": elapsed, "shortfalls_per_second": shortfalls}


def _status_kib(field: str) -> int:
    for line in STATUS_FILE.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in {STATUS_FILE}")


class RssSampler(threading.Thread):
    """Records the highest VmRSS seen, read every SAMPLE_INTERVAL_S while it runs.

    The thread needs the GIL to sample, so a peak inside one long C call can
    be missed: VmHWM, where it can be reset, catches those.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kib = _status_kib("VmRSS")
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(SAMPLE_INTERVAL_S):
            self.peak_kib = max(self.peak_kib, _status_kib("VmRSS"))
            self.samples += 1

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def memory(pool_type: str) -> dict[str, Any]:
    """Fill every pool of pool_type in one pass; report RSS when idle (connected, imported) and at the peak."""
    settings = load_settings()
    store = RedisStore.from_settings(settings)
    db = connect_database(settings)
    store.ping()
    db.ping()
    filler = Filler(settings, store, db)
    targets = filler.discover([pool_type])
    gc.collect()

    idle_kib = _status_kib("VmRSS")
    try:
        CLEAR_REFS_FILE.write_text(RESET_PEAK_RSS)
        hwm_reset = True
    except OSError:
        hwm_reset = False
    sampler = RssSampler()
    sampler.start()
    started = time.perf_counter()
    result = filler.run_pass(targets)
    seconds = time.perf_counter() - started
    sampler.stop()
    hwm_kib = _status_kib("VmHWM") if hwm_reset else 0

    db.close()
    store.client.close()
    return {
        "idle_kib": idle_kib,
        "peak_kib": max(hwm_kib, sampler.peak_kib),
        "hwm_kib": hwm_kib if hwm_reset else None,
        "sampled_peak_kib": sampler.peak_kib,
        "samples": sampler.samples,
        "pushed": result.pushed,
        "seconds": seconds,
        "batch": settings.pools[pool_type].batch,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers")
    commands = parser.add_subparsers(dest="command", required=True)
    drain_parser = commands.add_parser("drain")
    drain_parser.add_argument("pool_type")
    drain_parser.add_argument("group", type=int)
    drain_parser.add_argument("rate", type=float)
    drain_parser.add_argument("seconds", type=float)
    drain_parser.add_argument("start_at", type=float)
    drain_parser.add_argument("chunk", type=int)
    memory_parser = commands.add_parser("memory")
    memory_parser.add_argument("pool_type")
    args = parser.parse_args(argv)

    if args.command == "drain":
        report = drain(args.pool_type, args.group, args.rate, args.seconds, args.start_at, args.chunk)
    else:
        report = memory(args.pool_type)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
