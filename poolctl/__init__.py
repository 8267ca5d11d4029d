"""poolctl: keep Redis LIST cache pools filled from SQL and hand each item to exactly one consumer.

Library use:

    from poolctl import PoolConsumer, load_settings

    with PoolConsumer(load_settings()) as consumer:
        item = consumer.pop_with_fallback("titles", 3)

Module map (each module has one job):
    config    Settings and their precedence (flags > env > TOML > defaults)
    keys      every Redis key name and the lock owner token
    items     the item and its pool JSON
    lua       the Lua scripts behind each atomic Redis step
    store     Redis operations: lengths, locks, push, pop with ack
    sql       the SQL contract and its SQLite and MariaDB/MySQL backends
    fill      one fill pass and one pool fill under a lock
    watch     the fill daemon loop
    acks      flushing acks from Redis to SQL
    consumer  PoolConsumer, the library consumers use
    reconcile queued items missing from Redis, found and made available again
    audit     `audit`: read-only checks of the invariants between Redis and SQL
    stats     per-pool state across Redis and SQL, with pop and fill rates
    health    `check`: whether every pool is above its threshold
    doctor    `doctor`: checks of a deployment, one finding per check
    importer  `import`: bulk loading of text, CSV and JSON Lines into SQL
    metrics   Prometheus metrics of `fill --watch` (imports prometheus_client)
    locks     listing and flushing fill locks
    schema    db init and db check: tables, index, sample rows and their checks
    sample    sample Chinese texts
    cli       the `poolctl` command, a thin layer over the modules above
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Item", "PoolConsumer", "Settings", "load_settings", "errors"]

if TYPE_CHECKING:
    from poolctl import errors
    from poolctl.config import Settings, load_settings
    from poolctl.consumer import PoolConsumer
    from poolctl.items import Item

_LAZY = {
    "PoolConsumer": ("poolctl.consumer", "PoolConsumer"),
    "Item": ("poolctl.items", "Item"),
    "Settings": ("poolctl.config", "Settings"),
    "load_settings": ("poolctl.config", "load_settings"),
}


def __getattr__(name: str) -> Any:
    # Lazy, so that `poolctl --help` and a one-shot pop import only what they use.
    if name == "errors":
        import poolctl.errors

        return poolctl.errors
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'poolctl' has no attribute {name!r}")
