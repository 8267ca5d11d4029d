"""A filler or consumer that kills itself with SIGKILL at a chosen step: the fault tests start it.

    python tests/fault_driver.py fill STEP SEED
    python tests/fault_driver.py consume OUT_FILE POOL_TYPE GROUPS SEED

Settings come from POOLCTL_* environment variables like any poolctl process.
The driver patches poolctl's own methods to kill the process; poolctl itself
has no fault-injection switch. Kill points of a fill:

  claim   after the ids are recorded in the claiming set, before the claim commits
  commit  after the claim committed, before the push
  push    at a random moment from 0 to 3 ms after the push script is sent, so
          before, during or after Redis runs it

A consumer pops 1 to 40 items with random pauses, writes each delivered id
to OUT_FILE, and is killed before it ever flushes its acks.

Exit code 3 means the kill point was never reached (every pool was full or
locked by another filler); otherwise the process dies by SIGKILL.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from typing import Any

from poolctl.config import load_settings
from poolctl.consumer import PoolConsumer
from poolctl.fill import Filler
from poolctl.sql import connect_database
from poolctl.store import RedisStore

NOT_REACHED = 3
FILL_ATTEMPTS = 30


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def die_later(seconds: float) -> None:
    threading.Timer(seconds, die).start()


def fill(step: str, rng: random.Random) -> None:
    settings = load_settings()
    store = RedisStore.from_settings(settings)
    db = connect_database(settings)
    kill_at = rng.randint(1, 3)  # the how-many-th batch dies
    calls = 0

    def counted() -> bool:
        nonlocal calls
        calls += 1
        return calls == kill_at

    if step == "claim":
        record = store.record_claim

        def record_then_die(*args: Any, **kwargs: Any) -> bool:
            owned = record(*args, **kwargs)
            if owned and counted():
                time.sleep(rng.uniform(0, 0.01))
                die()
            return owned

        store.record_claim = record_then_die  # type: ignore[method-assign]
    elif step == "commit":
        claim = db.claim

        def claim_then_die(*args: Any, **kwargs: Any) -> Any:
            rows = claim(*args, **kwargs)
            if rows and counted():
                time.sleep(rng.uniform(0, 0.01))
                die()
            return rows

        db.claim = claim_then_die  # type: ignore[method-assign]
    elif step == "push":
        push = store.push

        def push_and_die(*args: Any, **kwargs: Any) -> int:
            if counted():
                die_later(rng.uniform(0, 0.003))
                length = push(*args, **kwargs)
                time.sleep(1.0)  # the timer fires here at the latest
                return length
            return push(*args, **kwargs)

        store.push = push_and_die  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown kill step {step}")

    filler = Filler(settings, store, db)
    targets = filler.discover()
    for _ in range(FILL_ATTEMPTS):
        rng.shuffle(targets)
        filler.run_pass(targets, flush=False)
        time.sleep(0.05)
    raise SystemExit(NOT_REACHED)


def consume(out_path: str, pool_type: str, groups: list[int], rng: random.Random) -> None:
    target = rng.randint(1, 40)
    delivered = 0
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    consumer = PoolConsumer(load_settings())
    for _ in range(2000):
        items = consumer.pop_many(pool_type, rng.choice(groups), rng.randint(1, 5))
        if items:
            # Written before the kill point, so the test has every item this consumer received.
            os.write(out, "".join(f"{item.id}\n" for item in items).encode())
            delivered += len(items)
        if delivered >= target:
            time.sleep(rng.uniform(0, 0.01))
            die()
        time.sleep(rng.uniform(0, 0.003))
    raise SystemExit(NOT_REACHED)


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    if role == "fill":
        step, seed = args
        fill(step, random.Random(int(seed)))
    elif role == "consume":
        out_file, pool, groups_arg, seed = args
        consume(out_file, pool, [int(g) for g in groups_arg.split(",")], random.Random(int(seed)))
    else:
        raise SystemExit(f"unknown role {role}")
