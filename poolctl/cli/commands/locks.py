"""`poolctl locks [flush]`: list fill locks, or flush stuck ones."""

from __future__ import annotations

import sys
from enum import Enum
from typing import TYPE_CHECKING, Annotated

import typer

from poolctl.cli.app import Runtime, app, command
from poolctl.cli.commands.fill import GroupOption, PoolOption
from poolctl.errors import ConfigError

if TYPE_CHECKING:
    from poolctl.store import LockInfo


class Action(str, Enum):
    list = "list"
    flush = "flush"


@command(app, "locks")
def locks(
    rt: Runtime,
    action: Annotated[Action, typer.Argument(help="list (the default) or flush.")] = Action.list,
    pool: PoolOption = None,
    group: GroupOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Flush without asking.")] = False,
) -> None:
    """List fill locks with their owner and remaining TTL, or flush them.

    A flush removes each lock only while it still has the owner that was
    listed, so a lock that a live filler took in the meantime stays.
    """
    from poolctl.locks import flush_locks, list_locks

    found = list_locks(rt.store, pool, group)
    if action is Action.list:
        _print_locks(rt, found)
        return
    if found and not yes:
        _confirm(found)
    result = flush_locks(rt.store, found)
    if rt.json_mode:
        rt.out.json({"removed": [_lock_dict(lock) for lock in result.removed],
                     "skipped": [_lock_dict(lock) for lock in result.skipped]})
        return
    for lock in result.removed:
        rt.out.line(f"removed {lock.key} (owner {lock.owner})")
    for lock in result.skipped:
        rt.out.line(f"kept {lock.key}: its owner changed or it expired since it was listed")
    if not found:
        rt.out.line("no fill locks to flush")


def _print_locks(rt: Runtime, found: list[LockInfo]) -> None:
    if rt.json_mode:
        rt.out.json({"locks": [_lock_dict(lock) for lock in found]})
    elif found:
        rows = [[lock.pool_type, lock.group, lock.owner, "-" if lock.ttl_s is None else f"{lock.ttl_s:.1f}"] for lock in found]
        rt.out.table(["pool", "group", "owner", "ttl s"], rows)
    else:
        sys.stderr.write("no fill locks held\n")


def _confirm(found: list[LockInfo]) -> None:
    if not sys.stdin.isatty():
        raise ConfigError(f"flushing {len(found)} fill locks needs confirmation", "Pass --yes to flush without a prompt")
    for lock in found:
        sys.stderr.write(f"  {lock.key}  owner {lock.owner}\n")
    if not typer.confirm(f"Flush these {len(found)} fill locks?", err=True):
        raise typer.Exit(1)


def _lock_dict(lock: LockInfo) -> dict[str, object]:
    return {"pool_type": lock.pool_type, "group": lock.group, "key": lock.key, "owner": lock.owner, "ttl_s": lock.ttl_s}
