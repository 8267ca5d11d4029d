"""`poolctl pop TYPE --group G`: pop items for shells and scripts."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from poolctl.cli.app import Runtime, app, command
from poolctl.errors import PoolctlError, PoolEmpty, RedisUnavailable, ServiceUnavailable, UnknownGroup
from poolctl.items import Item

log = logging.getLogger("poolctl.cli")

MAX_COUNT = 10_000


@command(app, "pop")
def pop(
    rt: Runtime,
    pool_type: Annotated[str, typer.Argument(metavar="TYPE", help="Pool type, e.g. titles.", show_default=False)],
    group: Annotated[int, typer.Option("--group", "-g", help="Group to pop from.", show_default=False)],
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=MAX_COUNT, help="How many items to pop.")] = 1,
    fallback: Annotated[
        bool, typer.Option("--fallback", help="Take items straight from SQL when the pool is empty or Redis is down.")
    ] = False,
) -> None:
    """Pop items and print their text, one per line; each item is recorded as consumed.

    Exits with 3 when the pool is empty (and, with --fallback, SQL has no
    available row either) and 4 when a service it needs is unreachable,
    also when --fallback found Redis down and SQL without an available row.
    """
    from poolctl.consumer import PoolConsumer

    rt.settings.pool(pool_type)
    # Closing the consumer flushes its acks, so the items are consumed in SQL
    # before this command exits. If SQL is down or its table is missing, the
    # acks wait in Redis with a warning. The items are printed before that
    # flush, so that no failure after the pop can take them from the user.
    items: list[Item] = []
    with PoolConsumer(rt.settings, store=rt.store) as consumer:
        try:
            if fallback:
                while len(items) < count and (item := consumer.pop_with_fallback(pool_type, group)) is not None:
                    items.append(item)
            else:
                items = consumer.pop_many(pool_type, group, count)
        except PoolctlError as exc:
            if not items:
                raise
            # The items already popped are the user's now: hand them out, as
            # one document, and report the failure that stopped the rest.
            log.warning("pool %s group %d: %d of %d items popped, then: %s", pool_type, group, len(items), count, exc)
            count = len(items)
        if items:
            _print_items(rt, pool_type, group, items)
    if not items:
        if consumer.redis_unreachable:
            # The pool was not read, so it is not known to be empty.
            raise RedisUnavailable(
                f"{pool_type} group {group}: Redis at {rt.store.masked_url} is unreachable and SQL has no available "
                "row for the fallback", "Start Redis or fix redis.url (--redis-url, POOLCTL_REDIS_URL)",
            )
        _raise_empty(rt, pool_type, group, fallback)
    if len(items) < count:
        log.warning("pool %s group %d: %d of %d items popped, then it was empty", pool_type, group, len(items), count)


def _print_items(rt: Runtime, pool_type: str, group: int, items: list[Item]) -> None:
    if rt.json_mode:
        rt.out.json(
            {
                "pool_type": pool_type,
                "group": group,
                "items": [{"id": item.id, "text": item.text, "source": item.source} for item in items],
            }
        )
    else:
        for item in items:
            rt.out.line(item.text)
    rt.out.flush()


def _raise_empty(rt: Runtime, pool_type: str, group: int, fallback: bool) -> None:
    try:
        exists = rt.db.group_exists(pool_type, group)
    except ServiceUnavailable:
        exists = True  # cannot tell; report the empty pool
    if not exists:
        table = rt.settings.pool(pool_type).table
        raise UnknownGroup(f"group {group} has no rows in table {table} (pool type {pool_type})", "Check the group id")
    where = "pool and SQL are" if fallback else "pool is"
    hint = "Run `poolctl fill`, or retry with --fallback" if not fallback else "Load more rows into SQL"
    raise PoolEmpty(f"{pool_type} group {group}: the {where} empty", hint)
