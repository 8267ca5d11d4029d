"""`poolctl reconcile`: find queued items that Redis no longer contains, and restore them with --apply."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from poolctl.cli.app import Runtime, app, command
from poolctl.cli.commands.fill import GroupOption, PoolOption
from poolctl.errors import ConfigError, PoolctlError

if TYPE_CHECKING:
    from poolctl.reconcile import ReconcileResult

COLUMNS = ["pool", "group", "queued", "in pool", "in acks", "recorded", "ambiguous", "lost", "restored", "outcome"]


@command(app, "reconcile")
def reconcile(
    rt: Runtime,
    pool: PoolOption = None,
    group: GroupOption = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Make missing items available again: recorded ones, and all of them after "
                           "Redis lost a pool's state.")
    ] = False,
    include_ambiguous: Annotated[
        bool, typer.Option("--include-ambiguous", help="With --apply, also restore ambiguous items, after a 2 s wait "
                           "for late status updates. An outside consumer may have served them.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Restore ambiguous items without asking.")] = False,
) -> None:
    """Find items that SQL has as queued but that are in no pool and no acks list.

    Recorded items were committed by a fill that never pushed them: safe to
    restore. Ambiguous items were pushed, and a consumer that pops without
    acks (the Go service) may have served them. Lost items went with Redis
    data. Each pool is handled under its fill lock. Without --apply nothing
    changes. Exits with 1 when a pool could not be reconciled.
    """
    from poolctl.reconcile import reconcile as run_reconcile

    if include_ambiguous and not apply:
        raise ConfigError("--include-ambiguous works only together with --apply", "Add --apply")
    if include_ambiguous and not yes:
        _confirm()
    result = run_reconcile(rt.settings, rt.store, rt.db, pool, group, apply, include_ambiguous)
    _print(rt, result)
    _advise(result)
    if result.skipped:
        names = ", ".join(f"{p.pool_type} group {p.group} ({p.outcome})" for p in result.skipped[:5])
        raise PoolctlError(
            f"{len(result.skipped)} pools were not reconciled: {names}",
            "Run reconcile again; flush stuck fill locks with `poolctl locks flush`, fix keys of the wrong type",
        )


def _print(rt: Runtime, result: ReconcileResult) -> None:
    if rt.json_mode:
        rt.out.json({"applied": result.applied, "restored": result.restored,
                     "pools": [pool.to_dict() for pool in result.pools]})
        return
    rows = [
        [p.pool_type, p.group, p.queued, p.in_pool, p.in_acks, len(p.recorded), len(p.ambiguous), len(p.lost),
         len(p.restored), p.outcome]
        for p in result.pools
    ]
    if rows:
        rt.out.table(COLUMNS, rows)
    else:
        sys.stderr.write("no queued items in SQL: nothing to reconcile\n")


def _advise(result: ReconcileResult) -> None:
    """Tell the operator on stderr what a dry run found that --apply would change."""
    if result.applied:
        return
    safe = sum(len(p.recorded) + len(p.lost) for p in result.pools)
    ambiguous = sum(len(p.ambiguous) for p in result.pools)
    if safe:
        sys.stderr.write(f"{safe} missing items are safe to restore: run again with --apply\n")
    if ambiguous:
        sys.stderr.write(
            f"{ambiguous} missing items are ambiguous (a consumer without acks may have served them): "
            "--apply --include-ambiguous restores them\n"
        )


def _confirm() -> None:
    if not sys.stdin.isatty():
        raise ConfigError("restoring ambiguous items needs confirmation", "Pass --yes to restore them without a prompt")
    question = "Ambiguous items may have been served by a consumer without acks; restoring them can serve them twice. Go on?"
    if not typer.confirm(question, err=True):
        raise typer.Exit(1)
