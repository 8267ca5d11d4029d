"""`poolctl audit`: check that Redis and SQL agree; exit code 0 means that every invariant holds."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from poolctl.cli.app import Runtime, app, command
from poolctl.cli.commands.fill import GroupOption, PoolOption
from poolctl.errors import ExitCode

if TYPE_CHECKING:
    from poolctl.audit import AuditResult

IDS_PRINTED = 10


@command(app, "audit")
def audit(
    rt: Runtime,
    pool: PoolOption = None,
    group: GroupOption = None,
    acks_max_age: Annotated[
        float, typer.Option("--acks-max-age", min=0.0, help="Seconds that pending acks may wait for a flush before "
                            "they count as stuck.")
    ] = 300.0,
) -> None:
    """Check, read-only, that Redis and SQL agree: exit 0 when every invariant holds, 1 when one is broken.

    Errors: an id held twice, a pooled id not queued in SQL, a pool above
    its size, or malformed entries. Also queued items in no pool and no acks
    list, invalid or stuck acks, a fill lock without TTL, a key of the wrong
    type.
    Warnings (exit 0): dead letters, a missing sentinel, acks already
    consumed, a text column that cannot store 4-byte characters.
    """
    from poolctl.audit import audit as run_audit

    if group is not None:
        from poolctl.stats import require_group

        require_group(rt.settings, rt.db, pool, group)
    result = run_audit(rt.settings, rt.store, rt.db, pool, acks_max_age, group)
    _print(rt, result)
    summary = (f"{len(result.errors)} errors, {len(result.warnings)} warnings in {result.pools_checked} pools "
               f"({result.seconds:.2f}s)")
    if not rt.json_mode:  # the verdict is data too: scripts and people read it on stdout
        rt.out.line(f"audit: {'every invariant holds' if result.ok else 'invariants broken'}: {summary}")
    if not result.ok:
        sys.stderr.write(f"poolctl: audit: invariants broken: {summary}\n")
        raise typer.Exit(int(ExitCode.FAILED))


def _print(rt: Runtime, result: AuditResult) -> None:
    if rt.json_mode:
        rt.out.json({
            "ok": result.ok, "pools_checked": result.pools_checked, "errors": len(result.errors),
            "warnings": len(result.warnings), "findings": [finding.to_dict() for finding in result.findings],
            "seconds": round(result.seconds, 3),
        })
        return
    for finding in result.findings:
        where = f"{finding.pool_type} group {finding.group}" if finding.group is not None else finding.pool_type or "-"
        line = f"{finding.severity:<7} {finding.check:<16} {where}: {finding.text}"
        if finding.ids:
            shown = ", ".join(str(item) for item in finding.ids[:IDS_PRINTED])
            more = f" and {len(finding.ids) - IDS_PRINTED} more" if len(finding.ids) > IDS_PRINTED else ""
            line += f" [ids: {shown}{more}]"
        rt.out.line(line)
