"""`poolctl stats`: every pool's length, fill level, acks, lock, SQL counts, rates and time until empty."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from poolctl.cli.app import Runtime, app, command, error_envelope
from poolctl.cli.commands.fill import GroupOption, PoolOption
from poolctl.cli.output import console, error_line, rich_table
from poolctl.errors import ServiceUnavailable

if TYPE_CHECKING:
    from poolctl.stats import PoolStats

COLUMNS = [
    "pool", "group", "length", "size", "threshold", "fill %", "acks", "dead", "lock",
    "available", "queued", "consumed", "pop/s", "fill/s", "empty in", "attention",
]


@command(app, "stats")
def stats(
    rt: Runtime,
    pool: PoolOption = None,
    group: GroupOption = None,
    watch: Annotated[
        bool,
        typer.Option("--watch", "-w", help="Refresh until interrupted: in place on a terminal, "
                     "one snapshot per interval when piped or with --json."),
    ] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.2, help="Seconds between refreshes with --watch.")] = 2.0,
) -> None:
    """Show every pool: length, size, threshold, fill %, pending acks, dead letters, lock, SQL counts and rates.

    Pop and fill rates are items per second over the last minute, counted in
    Redis by every poolctl process. "empty in" is the time until the pool is
    empty at the pop rate minus the fill rate. Rows that need attention are
    coloured on a terminal and list their reasons (low, empty, running_dry,
    no_available_rows, ...).
    """
    if group is not None:
        from poolctl.stats import require_group

        require_group(rt.settings, rt.db, pool, group)
    if not watch:
        _print_snapshot(rt, _snapshot(rt, pool, group))
        return
    _stop_on_sigterm()
    try:
        if rt.out.tty and not rt.json_mode:
            _watch_live(rt, pool, group, interval)
        else:
            _watch_stream(rt, pool, group, interval)
    except KeyboardInterrupt:
        return  # Ctrl-C is how a watch ends


def _snapshot(rt: Runtime, pool: Sequence[str] | None, group: int | None) -> tuple[datetime, list[PoolStats]]:
    from poolctl.stats import collect_stats

    now = time.time()
    rows = collect_stats(rt.settings, rt.store, rt.db, pool, group, now=now)
    return datetime.fromtimestamp(now, tz=timezone.utc), rows


def _print_snapshot(rt: Runtime, snapshot: tuple[datetime, list[PoolStats]]) -> None:
    taken_at, rows = snapshot
    if rt.json_mode:
        rt.out.json(stats_document(taken_at, rows))
        return
    cells, styles = table_rows(rows)
    rt.out.table(COLUMNS, cells, styles=styles)


def stats_document(taken_at: datetime, rows: Sequence[PoolStats]) -> dict[str, Any]:
    """Return the --json shape: {"time", "pools": [...]}."""
    return {"time": taken_at.isoformat(timespec="seconds"), "pools": [row.to_dict() for row in rows]}


def table_rows(rows: Sequence[PoolStats]) -> tuple[list[list[object]], list[str | None]]:
    from poolctl.stats import SEVERE_REASONS

    cells: list[list[object]] = []
    styles: list[str | None] = []
    for row in rows:
        if row.lock_owner and row.lock_ttl_s is not None:
            lock = f"{row.lock_owner} ({row.lock_ttl_s:.0f}s)"
        else:
            lock = row.lock_owner or "-"
        length = "not a list" if row.length is None else row.length
        fill = "-" if row.fill_percent is None else f"{row.fill_percent:.1f}"
        cells.append([
            row.pool_type, row.group, length, row.size, row.threshold, fill, _dash(row.acks), _dash(row.dead), lock,
            _dash(row.available), _dash(row.queued), _dash(row.consumed), f"{row.pop_rate:.1f}", f"{row.fill_rate:.1f}",
            format_duration(row.empty_in_s), ",".join(row.attention) or "-",
        ])
        style = None
        if any(reason in SEVERE_REASONS for reason in row.attention):
            style = "bold red"
        elif row.attention:
            style = "yellow"
        styles.append(style)
    return cells, styles


def format_duration(seconds: float | None) -> str:
    """Return a short duration such as 45s, 12m or 3.5h; "-" for None."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _ticks(interval: float) -> Iterator[None]:
    """Yield once per interval, measured from the start of each tick so that slow snapshots do not drift."""
    while True:
        started = time.monotonic()
        yield
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


def _watch_stream(rt: Runtime, pool: Sequence[str] | None, group: int | None, interval: float) -> None:
    """Print one snapshot per interval: a JSON line, or a plain table followed by a blank line."""
    for _ in _ticks(interval):
        try:
            snapshot = _snapshot(rt, pool, group)
        except ServiceUnavailable as exc:
            # Keep watching through an outage; each failed snapshot reports why.
            error_line(str(exc))
            if rt.json_mode:
                rt.out.json(error_envelope(exc.code, exc.message, exc.hint))
            continue
        _print_snapshot(rt, snapshot)
        if not rt.json_mode:
            rt.out.line()
        rt.out.flush()


def _watch_live(rt: Runtime, pool: Sequence[str] | None, group: int | None, interval: float) -> None:
    """Redraw one table in place on the terminal until interrupted."""
    from rich.live import Live

    with Live(console=console(), auto_refresh=False, vertical_overflow="visible") as live:
        for _ in _ticks(interval):
            live.update(_live_view(rt, pool, group, interval), refresh=True)


def _live_view(rt: Runtime, pool: Sequence[str] | None, group: int | None, interval: float) -> Any:
    from rich.console import Group
    from rich.text import Text

    try:
        taken_at, rows = _snapshot(rt, pool, group)
    except ServiceUnavailable as exc:
        stamp = datetime.now(tz=timezone.utc).astimezone().strftime("%H:%M:%S")
        return Text(f"poolctl stats  {stamp}  {exc}", style="bold red")
    attention = sum(1 for row in rows if row.attention)
    stamp = taken_at.astimezone().strftime("%H:%M:%S")
    header = Text(f"poolctl stats  {stamp}  every {interval:g}s  {len(rows)} pools, {attention} need attention  "
                  "(Ctrl-C to stop)")
    cells, styles = table_rows(rows)
    return Group(header, rich_table(COLUMNS, cells, styles=styles))


def _stop_on_sigterm() -> None:
    """Make SIGTERM end a watch like Ctrl-C, so that the terminal is restored."""

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)


def _dash(value: int | None) -> object:
    return "-" if value is None else value

