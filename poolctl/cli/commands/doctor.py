"""`poolctl doctor`: check a deployment and name what to fix, one line per check."""

from __future__ import annotations

import typer

from typing import TYPE_CHECKING

from poolctl.cli.app import Runtime, app, command
from poolctl.errors import ExitCode

if TYPE_CHECKING:
    from poolctl.doctor import DoctorReport

STATUS_LABELS = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


@command(app, "doctor")
def doctor(rt: Runtime) -> None:
    """Check the configuration, Redis, the SQL server and every pool type's table, and name what to fix.

    Checks: both servers reachable and their versions (RPOP with count, SKIP
    LOCKED, descending indexes), Redis maxmemory-policy and persistence,
    tables and columns, the fill index (EXPLAIN without a filesort), text
    column character sets (4-byte characters) and config consistency. Exits
    with 1 when any check fails; warnings alone exit with 0.
    """
    from poolctl.doctor import doctor as run_doctor

    report = run_doctor(lambda: rt.settings, lambda settings: rt.store)
    print_checks(rt, report)


def print_checks(rt: Runtime, report: DoctorReport) -> None:
    """Print one line per check and a summary (or one JSON document); exit 1 when a check failed."""
    if rt.json_mode:
        rt.out.json({"ok": report.ok, "failed": report.failed, "warnings": report.warnings,
                     "checks": [check.to_dict() for check in report.checks]})
    else:
        width = max(len(check.name) for check in report.checks)
        for check in report.checks:
            line = f"{STATUS_LABELS[check.status]:<4}  {check.name:<{width}}  {check.message}"
            if check.hint and check.status in ("warn", "fail"):
                line += f". {check.hint}"
            rt.out.line(line)
        rt.out.line(f"{len(report.checks)} checks: {report.failed} failed, {report.warnings} warnings")
    if not report.ok:
        raise typer.Exit(int(ExitCode.FAILED))
