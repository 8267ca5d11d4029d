"""Helpers for tests that run whole poolctl processes: environment, workers, the final drain and its ledger."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from poolctl.config import Settings
from poolctl.consumer import PoolConsumer
from poolctl.fill import Filler
from poolctl.sql import Database
from poolctl.store import RedisStore

TESTS = Path(__file__).parent
WORKERS = TESTS / "workers.py"
FAULT_DRIVER = TESTS / "fault_driver.py"


def write_config(path: Path, size: int, threshold: int, batch: int) -> Path:
    """Write a config with one pool type, titles, so that no other table is needed."""
    path.write_text(
        "[pools.titles]\n"
        'table = "titles"\ntext_column = "title"\ntext_type = "short"\n'
        f"size = {size}\nthreshold = {threshold}\nbatch = {batch}\n"
    )
    return path


def process_env(config: Path, database_url: str, redis_url: str, key_prefix: str, **settings: str) -> dict[str, str]:
    """Return the environment of a poolctl process: the caller's, minus its POOLCTL_* variables, plus these."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("POOLCTL_")}
    env.update(
        POOLCTL_CONFIG=str(config),
        POOLCTL_DATABASE_URL=database_url,
        POOLCTL_REDIS_URL=redis_url,
        POOLCTL_REDIS_KEY_PREFIX=key_prefix,
    )
    env.update({f"POOLCTL_{name.upper()}": value for name, value in settings.items()})
    return env


def start(args: list[str], env: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    """Start a process with stderr going to log_file (a pipe could fill up and block a chatty daemon)."""
    with log_file.open("ab") as log:
        return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.DEVNULL, stderr=log)


def start_daemon(env: dict[str, str], log_file: Path, interval: str = "0.05") -> subprocess.Popen[bytes]:
    return start(["-m", "poolctl", "fill", "--watch", "--interval", interval], env, log_file)


def stop_daemon(daemon: subprocess.Popen[bytes], log_file: Path) -> None:
    daemon.send_signal(signal.SIGTERM)
    returncode = daemon.wait(timeout=60)
    assert returncode == 0, f"fill --watch exited {returncode}:\n{log_file.read_text()[-3000:]}"


def read_deliveries(paths: list[Path]) -> Counter[int]:
    """Count how often each id was delivered, over the output files of all consumers."""
    delivered: Counter[int] = Counter()
    for path in paths:
        if path.exists():
            delivered.update(int(line.split()[0]) for line in path.read_text().splitlines() if line.strip())
    return delivered


def drain(settings: Settings, store: RedisStore, db: Database, pool_type: str) -> list[int]:
    """Fill and pop until SQL has nothing available and every pool is empty; return the ids popped.

    Reconcile must have run before: a queued item in no pool would stay
    queued, and the ledger reports it as lost.
    """
    filler = Filler(settings, store, db)
    consumer = PoolConsumer(settings, store=store, db=db)
    targets = filler.discover([pool_type])
    popped: list[int] = []
    for _ in range(10_000):
        filler.run_pass(targets)
        found = [item.id for keys in targets for item in consumer.pop_many(pool_type, keys.group, 500)]
        popped.extend(found)
        if not found and not db.groups(pool_type, settings.status.available):
            break
    consumer.flush_acks()
    filler.run_pass(targets)  # flushes acks that other consumers left in Redis
    return popped


@dataclass
class Ledger:
    """Every row's fate at the end of a fault test."""

    rows: int
    delivered: Counter[int]
    statuses: dict[int, int]
    consumed_value: int
    notes: list[str] = field(default_factory=list)

    @property
    def duplicates(self) -> list[int]:
        return sorted(item for item, times in self.delivered.items() if times > 1)

    @property
    def lost(self) -> list[int]:
        """Rows never delivered, or not consumed in SQL after the drain."""
        return sorted(
            item for item, status in self.statuses.items()
            if item not in self.delivered or status != self.consumed_value
        )

    @property
    def unknown(self) -> list[int]:
        """Delivered ids that are no row of the table."""
        return sorted(item for item in self.delivered if item not in self.statuses)

    def summary(self) -> str:
        return (f"rows {self.rows}, delivered {sum(self.delivered.values())}, distinct {len(self.delivered)}, "
                f"duplicates {len(self.duplicates)}, lost {len(self.lost)}")


def wait_for(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)
