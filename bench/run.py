"""Run the benchmark suite: `python -m bench.run [--quick | --smoke] [--only NAME] [--json PATH] [--results PATH]`.

The table goes to stdout, progress to stderr. Exit status: 0 when every
benchmark ran (whether or not it met its target), 1 when one failed with an
error, 2 for a usage error, 130 when interrupted. The run's database and
Redis keys are removed in every case.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from bench import fill, idle, keepup, memory, plans, pop, startup
from bench.core import SCALES, Result, Scale
from bench.env import BenchEnv, mask_password
from bench.report import describe_machine, json_document, markdown, notes, text_table, update_results_file, write_json

log = logging.getLogger("bench")

BENCHMARKS: dict[str, Callable[[BenchEnv, Scale], list[Result]]] = {
    "fill": fill.run,
    "keepup": keepup.run,
    "pop": pop.run,
    "idle": idle.run,
    "plans": plans.run,
    "startup": startup.run,
    "memory": memory.run,
}


def at_least(minimum: int) -> Callable[[str], int]:
    """Return an argparse type that accepts an integer of at least minimum."""

    def count(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return count


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Measure poolctl against hand-written baselines on MariaDB and Redis. Every run creates its own "
        "database and Redis key prefix and removes them at the end.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="Smaller data and fewer rounds: about one minute.")
    size.add_argument("--smoke", action="store_true",
                      help="Tiny data, one round, no warm-up: checks that everything runs; the figures mean nothing.")

    parser.add_argument("--only", action="append", metavar="NAME",
                        help=f"Run only these benchmarks (repeat, or separate with commas): {', '.join(BENCHMARKS)}.")
    parser.add_argument("--rounds", type=at_least(1), metavar="N", help="Measured rounds per benchmark, overriding the mode's.")
    parser.add_argument("--warmup", type=at_least(0), metavar="N", help="Warm-up rounds per benchmark, overriding the mode's.")
    parser.add_argument("--json", type=Path, metavar="PATH", help="Also write the results as JSON to this file.")
    parser.add_argument("--results", type=Path, metavar="PATH",
                        help="Write the machine and the table into this Markdown file (e.g. bench/RESULTS.md), "
                        "between its bench:begin and bench:end markers.")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="Write a cProfile file per timed code path to DIR (the last round's). Profiling slows "
                        "the profiled side, so ratios from such a run are not comparable.")

    parser.add_argument("--mysql-url", default="mysql://root@127.0.0.1:3306",
                        help="MariaDB server to create the run's database on (default: %(default)s).")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0",
                        help="Redis server for the run's keys (default: %(default)s).")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log debug lines and tracebacks.")
    args = parser.parse_args(argv)

    selected = [name.strip() for value in (args.only or []) for name in value.split(",") if name.strip()]
    unknown = sorted(set(selected) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    args.selected = [name for name in BENCHMARKS if name in selected] if selected else list(BENCHMARKS)
    return args


def describe_command(args: argparse.Namespace) -> str:
    """Return the command line that reproduces the figures: the options that change them, without output paths."""
    parts = ["python", "-m", "bench.run"]
    if args.quick:
        parts.append("--quick")
    if args.smoke:
        parts.append("--smoke")
    if args.selected != list(BENCHMARKS):
        parts += ["--only", ",".join(args.selected)]
    for option in ("rounds", "warmup"):
        if getattr(args, option) is not None:
            parts += [f"--{option}", str(getattr(args, option))]
    if args.profile:
        parts.append("--profile DIR")
    return " ".join(parts)


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S"))
    for name in ("bench", "poolctl"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    logging.getLogger("bench").setLevel(logging.DEBUG if verbose else logging.INFO)
    # poolctl logs every fill at INFO; at that rate the log would drown the progress lines.
    logging.getLogger("poolctl").setLevel(logging.DEBUG if verbose else logging.WARNING)


def drop_poolctl_environment() -> None:
    """Remove POOLCTL_* variables: they take precedence over the run's config files and could point elsewhere."""
    found = sorted(name for name in os.environ if name.startswith("POOLCTL_"))
    for name in found:
        del os.environ[name]
    if found:
        log.warning("ignoring %s: the benchmark configures poolctl itself", ", ".join(found))


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_benchmarks(env: BenchEnv, scale: Scale, selected: list[str], verbose: bool) -> list[Result]:
    results: list[Result] = []
    for name in selected:
        log.info("benchmark %s: started (%s mode)", name, scale.mode)
        started = time.monotonic()
        try:
            rows = BENCHMARKS[name](env, scale)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            if verbose:
                log.error("benchmark %s failed:\n%s", name, traceback.format_exc())
            else:
                log.error("benchmark %s failed: %s: %s (run with -v for the traceback)", name, type(exc).__name__, exc)
            rows = [Result(benchmark=name, name=name, unit="", error=f"{type(exc).__name__}: {exc}")]
        log.info("benchmark %s: done in %.1fs", name, time.monotonic() - started)
        results.extend(rows)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    drop_poolctl_environment()
    mode = "full"
    if args.smoke:
        mode = "smoke"
    elif args.quick:
        mode = "quick"
    scale = SCALES[mode].with_rounds(args.rounds, args.warmup)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, raise_interrupt)

    command = describe_command(args)
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    started = time.monotonic()
    env = BenchEnv(args.mysql_url, args.redis_url, args.profile)
    log.info("MariaDB %s, Redis %s", mask_password(args.mysql_url), mask_password(args.redis_url))
    try:
        env.open()
        machine = describe_machine(env)
        results = run_benchmarks(env, scale, args.selected, args.verbose)
    except KeyboardInterrupt:
        log.error("interrupted; removing the run's database and Redis keys")
        return 130
    finally:
        env.close()
    seconds = time.monotonic() - started
    if mode == "smoke":  # sizes too small to mean anything: the run only proves that every benchmark works
        for result in results:
            result.judged = False

    print(text_table(results))
    print()
    for line in notes(results):
        print(line)
    if args.json:
        write_json(args.json, json_document(results, machine, env, mode, seconds, started_at))
    if args.results:
        update_results_file(args.results, markdown(results, machine, command, seconds, mode))
    return 1 if any(result.error for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
