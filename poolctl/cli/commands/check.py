"""`poolctl check`: exit 0 when every pool is above its threshold, for cron jobs and probes."""

from __future__ import annotations

import typer

from poolctl.cli.app import Runtime, app, command
from poolctl.cli.commands.fill import GroupOption, PoolOption
from poolctl.errors import ExitCode


@command(app, "check")
def check(rt: Runtime, pool: PoolOption = None, group: GroupOption = None) -> None:
    """Exit 0 when every pool is above its threshold, 5 when some are low, 4 when Redis or SQL is down.

    Checks the pools of every group with available or queued rows. Prints one
    line per low pool and a summary line (or, with --json, one document).
    """
    from poolctl.health import check as check_health

    report = check_health(rt.settings, rt.store, rt.db, pool, group)
    low = report.low
    if rt.json_mode:
        rt.out.json({
            "status": "ok" if report.ok else "low",
            "checked": len(report.pools),
            "low": [{"pool_type": row.pool_type, "group": row.group, "length": row.length, "threshold": row.threshold}
                    for row in low],
        })
    else:
        for row in low:
            length = "not a list" if row.length is None else f"length {row.length}"
            rt.out.line(f"low: {row.pool_type} group {row.group}, {length}, threshold {row.threshold}")
        rt.out.line(f"{len(report.pools)} pools checked, {len(low)} low")
    if low:
        raise typer.Exit(int(ExitCode.POOLS_LOW))
