"""Result rows, run sizes and round runners shared by every benchmark."""

from __future__ import annotations

import cProfile
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("bench")


@dataclass(frozen=True, slots=True)
class Scale:
    """Data sizes and round counts of one run mode."""

    mode: str
    warmup: int
    rounds: int  # rounds of the benchmarks whose rounds take seconds
    fast_rounds: int  # rounds of the benchmarks whose rounds take milliseconds
    fill_titles: int
    fill_bodies: int
    fill_groups: int
    keepup_rate: int  # items per second that all consumers together request
    keepup_seconds: float
    keepup_rounds: int
    pop_rounds: int  # rounds of the pop benchmark, whose ratios move with the Redis round trip
    pop_single: int  # items popped one at a time per round
    pop_many: int  # items popped 100 at a time per round
    idle_pools: tuple[int, int]
    plans_large: int
    plans_small: int
    startup_rounds: int
    memory_bodies: int
    memory_body_bytes: int

    def with_rounds(self, rounds: int | None, warmup: int | None) -> Scale:
        """Return a copy with every round count, or the warm-up count, replaced."""
        values = asdict(self)
        if rounds is not None:
            values.update(rounds=rounds, fast_rounds=rounds, keepup_rounds=rounds, pop_rounds=rounds,
                          startup_rounds=rounds)
        if warmup is not None:
            values.update(warmup=warmup)
        return Scale(**values)


FULL = Scale(
    mode="full", warmup=1, rounds=4, fast_rounds=15,
    fill_titles=200_000, fill_bodies=40_000, fill_groups=8,
    keepup_rate=10_000, keepup_seconds=15.0, keepup_rounds=3,
    pop_rounds=8, pop_single=20_000, pop_many=200_000,
    idle_pools=(2_000, 20_000),
    plans_large=10_000_000, plans_small=100_000,
    startup_rounds=15,
    memory_bodies=20_000, memory_body_bytes=50 * 1024,
)
QUICK = Scale(
    mode="quick", warmup=1, rounds=2, fast_rounds=7,
    fill_titles=20_000, fill_bodies=4_000, fill_groups=4,
    keepup_rate=10_000, keepup_seconds=3.0, keepup_rounds=1,
    pop_rounds=3, pop_single=4_000, pop_many=40_000,
    idle_pools=(2_000, 20_000),
    plans_large=1_000_000, plans_small=100_000,
    startup_rounds=5,
    memory_bodies=2_000, memory_body_bytes=50 * 1024,
)
# Only proves that every benchmark runs end to end: its figures mean nothing.
SMOKE = Scale(
    mode="smoke", warmup=0, rounds=1, fast_rounds=1,
    fill_titles=2_000, fill_bodies=300, fill_groups=2,
    keepup_rate=2_000, keepup_seconds=1.0, keepup_rounds=1,
    pop_rounds=1, pop_single=500, pop_many=2_000,
    idle_pools=(200, 2_000),
    plans_large=50_000, plans_small=10_000,
    startup_rounds=1,
    memory_bodies=200, memory_body_bytes=50 * 1024,
)
SCALES = {scale.mode: scale for scale in (FULL, QUICK, SMOKE)}


@dataclass(frozen=True, slots=True)
class Target:
    """The pass condition of a row: the ratio of medians, or the worst round, compared with a limit."""

    op: Literal[">=", "<="]
    limit: float
    of: Literal["ratio", "max"] = "ratio"

    def label(self) -> str:
        return f"{self.of} {self.op} {self.limit:g}"

    def is_met(self, value: float) -> bool:
        return value >= self.limit if self.op == ">=" else value <= self.limit


@dataclass(slots=True)
class Result:
    """One row of the table: a measured value per round, its baseline, and pass, fail or info."""

    benchmark: str
    name: str
    unit: str
    samples: list[float] = field(default_factory=list)
    baseline: str = ""  # description of the baseline, for the notes
    baseline_samples: list[float] = field(default_factory=list)
    target: Target | None = None  # None, with check None too: an info row
    check: bool | None = None  # set by rows that pass or fail on a check, not a number (query plans)
    check_label: str = ""
    detail: str = ""
    error: str = ""
    judged: bool = True  # False in a --smoke run, whose figures mean nothing

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def baseline_median(self) -> float | None:
        return statistics.median(self.baseline_samples) if self.baseline_samples else None

    @property
    def ratio(self) -> float | None:
        if self.median is None or not self.baseline_median:
            return None
        return self.median / self.baseline_median

    @property
    def target_label(self) -> str:
        if self.check is not None:
            return self.check_label
        return self.target.label() if self.target else ""

    @property
    def passed(self) -> bool | None:
        """True or False for a target row; None for an info row, a row whose benchmark failed, or a smoke run."""
        if self.error or not self.judged:
            return None
        if self.check is not None:
            return self.check
        if self.target is None:
            return None
        if self.target.of == "ratio":
            value = self.ratio
        else:
            value = max(self.samples) if self.samples else None
        if value is None:
            return None
        return self.target.is_met(value)

    @property
    def outcome(self) -> str:
        if self.error:
            return "ERROR"
        if not self.judged and (self.target is not None or self.check is not None):
            return "not judged"
        if self.passed is None:
            return "info"
        return "PASS" if self.passed else "FAIL"

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "name": self.name,
            "unit": self.unit,
            "samples": self.samples,
            "median": self.median,
            "min": min(self.samples) if self.samples else None,
            "max": max(self.samples) if self.samples else None,
            "baseline": self.baseline,
            "baseline_samples": self.baseline_samples,
            "baseline_median": self.baseline_median,
            "ratio": self.ratio,
            "target": self.target_label or None,
            "outcome": self.outcome,
            "passed": self.passed,
            "detail": self.detail,
            "error": self.error or None,
        }


class Stopwatch:
    """Times one block with perf_counter; profiles it with cProfile when given a file to write."""

    def __init__(self, profile_path: Path | None = None) -> None:
        self.profile_path = profile_path
        self.seconds = 0.0

    @contextmanager
    def running(self) -> Iterator[Stopwatch]:
        profiler = cProfile.Profile() if self.profile_path else None
        if profiler is not None:
            profiler.enable()
        started = time.perf_counter()
        try:
            yield self
        finally:
            self.seconds = time.perf_counter() - started
            if profiler is not None and self.profile_path is not None:
                profiler.disable()
                profiler.dump_stats(self.profile_path)


Measure = Callable[[], float]


def run_rounds(label: str, variants: dict[str, Measure], warmup: int, rounds: int) -> dict[str, list[float]]:
    """Run every variant once per round and return each one's values from the rounds after the warm-up.

    The order of the variants rotates from round to round, so that a drift
    in the shared servers (another user's load, a cache warming up) does not
    always land on the same variant.
    """
    names = list(variants)
    values: dict[str, list[float]] = {name: [] for name in names}
    for index in range(warmup + rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            value = variants[name]()
            if index >= warmup:
                values[name].append(value)
            log.debug("%s %s: %.4g", label, name, value)
        if index < warmup:
            log.info("%s: warm-up round %d of %d done", label, index + 1, warmup)
        else:
            log.info("%s: round %d of %d done", label, index - warmup + 1, rounds)
    return values
