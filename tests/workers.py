"""Processes that the concurrency and fault tests start: a consumer that records what it got.

Run as `python tests/workers.py consume OUT_FILE POOL_TYPE GROUPS TARGET [fallback]`;
settings come from POOLCTL_* environment variables like any poolctl process.
"""

from __future__ import annotations

import random
import sys
import time

from poolctl.consumer import PoolConsumer


def consume(out_path: str, pool_type: str, groups: list[int], target: int, fallback: bool) -> None:
    """Pop until target items were delivered or every group stays empty for two seconds."""
    rng = random.Random()
    delivered = 0
    idle_since: float | None = None
    with PoolConsumer() as consumer, open(out_path, "w", buffering=1) as out:
        while delivered < target:
            group = rng.choice(groups)
            if fallback and rng.random() < 0.2:
                found = [item] if (item := consumer.pop_with_fallback(pool_type, group)) else []
            else:
                found = consumer.pop_many(pool_type, group, rng.randint(1, 5))
            for item in found:
                out.write(f"{item.id} {item.source}\n")
            delivered += len(found)
            if found:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > 2.0:
                break
            else:
                time.sleep(0.005)


if __name__ == "__main__":
    command, out_file, pool, groups_arg, target_arg, *rest = sys.argv[1:]
    if command != "consume":
        raise SystemExit(f"unknown worker command {command}")
    consume(out_file, pool, [int(g) for g in groups_arg.split(",")], int(target_arg), fallback="fallback" in rest)
