"""`poolctl stats`: every pool's length, fill level, acks, lock and SQL counts."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from poolctl.cli.app import Runtime, app, command
from poolctl.cli.commands.fill import GroupOption, PoolOption

if TYPE_CHECKING:
    from poolctl.stats import PoolStats

COLUMNS = ["pool", "group", "length", "size", "threshold", "fill %", "acks", "dead", "lock", "available", "queued", "consumed"]


@command(app, "stats")
def stats(
    rt: Runtime,
    pool: PoolOption = None,
    group: GroupOption = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until interrupted.")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.2, help="Seconds between refreshes with --watch.")] = 2.0,
) -> None:
    """Show a table of every pool: length, size, threshold, fill %, pending acks, dead letters, lock, SQL counts.

    Rows of pools at or below their threshold are marked low.
    """
    if not watch:
        _show(rt, pool, group)
        return
    while True:
        _show(rt, pool, group)
        time.sleep(interval)


def _show(rt: Runtime, pool: Sequence[str] | None, group: int | None) -> None:
    from poolctl.stats import collect_stats

    rows = collect_stats(rt.settings, rt.store, rt.db, pool, group)
    if rt.json_mode:
        rt.out.json({"pools": [row.to_dict() for row in rows]})
        return
    table = []
    styles: list[str | None] = []
    for row in rows:
        lock = f"{row.lock_owner} ({row.lock_ttl_s:.0f}s)" if row.lock_owner and row.lock_ttl_s is not None else row.lock_owner or "-"
        length = "not a list" if row.length is None else row.length
        fill = "-"
        if row.fill_percent is not None:
            fill = f"{row.fill_percent:.1f}" + (" low" if row.low else "")
        table.append([row.pool_type, row.group, length, row.size, row.threshold, fill, _dash(row.acks), _dash(row.dead),
                      lock, row.available, row.queued, row.consumed])
        styles.append(_style(row))
    rt.out.table(COLUMNS, table, styles=styles)


def _style(row: PoolStats) -> str | None:
    """Return the Rich style that makes a row needing attention stand out: red when empty or broken."""
    if row.length is None or row.length == 0:
        return "red"
    if row.low:
        return "yellow"
    return None


def _dash(value: int | None) -> object:
    return "-" if value is None else value
