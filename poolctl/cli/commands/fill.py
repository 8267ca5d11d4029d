"""`poolctl fill [--watch]`: one fill pass for cron, or the fill daemon."""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Annotated

import typer

from poolctl.cli.app import Runtime, app, command
from poolctl.errors import ConfigError, ExitCode, WrongKeyType

log = logging.getLogger("poolctl.cli")

PoolOption = Annotated[
    list[str] | None,
    typer.Option("--pool", "-p", help="Pool type to act on; repeat for several. Default: every configured pool type.",
                 show_default=False),
]
GroupOption = Annotated[
    int | None, typer.Option("--group", "-g", help="Group to act on. Default: every group with rows.", show_default=False)
]


@command(app, "fill")
def fill(
    rt: Runtime,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Repeat passes until SIGINT or SIGTERM (the daemon).")] = False,
    pool: PoolOption = None,
    group: GroupOption = None,
    interval: Annotated[
        float | None,
        typer.Option("--interval", min=0.01, help="Seconds between passes with --watch. Overrides fill.interval_s.",
                     show_default=False),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", min=0, max=65535, help="With --watch: serve Prometheus metrics on this TCP "
                     "port at /metrics (0 picks a free port).", show_default=False),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Address the metrics endpoint listens on.")
    ] = "127.0.0.1",
) -> None:
    """Top up every pool at or below its threshold to its size, from SQL.

    Without --watch: one pass over every pool, then exit (for cron). With
    --watch: repeat passes, rediscover groups, flush acks and ride out Redis
    and SQL outages until SIGINT or SIGTERM.
    """
    if interval is not None:
        rt.overrides["fill"] = {"interval_s": interval}
    if metrics_port is not None and not watch:
        raise ConfigError("--metrics-port needs --watch", "Run `poolctl fill --watch --metrics-port PORT`")
    if watch:
        _watch(rt, pool, group, metrics_port, metrics_host)
    else:
        _one_pass(rt, pool, group)


def _one_pass(rt: Runtime, pool: list[str] | None, group: int | None) -> None:
    from poolctl.fill import Filler

    filler = Filler(rt.settings, rt.store, rt.db)
    targets = filler.discover(pool, group)
    result = filler.run_pass(targets)
    if rt.json_mode:
        rt.out.json(
            {
                "pools": [
                    {
                        "pool_type": fill.pool_type, "group": fill.group, "length_before": fill.length_before,
                        "length_after": fill.length_after, "pushed": fill.pushed, "outcome": fill.outcome,
                        "restored": fill.restored, "seconds": round(fill.seconds, 3),
                    }
                    for fill in result.fills
                ],
                "pools_checked": len(targets),
                "pushed": result.pushed,
                "restored": result.restored,
                "acks_flushed": result.acks_flushed,
                "wrong_type": result.wrong_type,
                "seconds": round(result.seconds, 3),
            }
        )
    elif result.fills:
        rows = [[f.pool_type, f.group, f.length_before, f.length_after, f.pushed, f.outcome] for f in result.fills]
        rt.out.table(["pool", "group", "before", "after", "pushed", "outcome"], rows)
    log.info(
        "fill pass: %d pools checked, %d filled, %d items pushed, %d restored, %d acks flushed in %.2fs",
        len(targets), sum(1 for f in result.fills if f.pushed), result.pushed, result.restored, result.acks_flushed,
        result.seconds,
    )
    if result.wrong_type:
        raise WrongKeyType(
            f"{len(result.wrong_type)} Redis keys hold the wrong type, their pools were skipped: "
            f"{', '.join(result.wrong_type[:5])}",
            "Inspect them with redis-cli TYPE, then rename or delete them; `poolctl audit` lists every one",
        )


def _watch(rt: Runtime, pool: list[str] | None, group: int | None, metrics_port: int | None, metrics_host: str) -> None:
    from poolctl.watch import Watcher

    stop = threading.Event()
    watcher = Watcher(rt.settings, rt.store, rt.db, pool_types=pool, group=group, stop=stop)
    watcher.filler.discover(pool, group)  # reject an unknown pool type or group before starting
    server = None
    if metrics_port is not None:
        from poolctl.metrics import serve_metrics

        server = serve_metrics(rt.settings, rt.store, lambda: list(watcher.targets), metrics_host, metrics_port)
        watcher.events = server.metrics

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            # Second signal: leave at once. A batch committed but not pushed
            # stays recorded in its claiming set, and reconcile restores it.
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(int(ExitCode.FAILED))
        log.info("%s received: finishing the batch in hand, then stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        watcher.run()
    finally:
        if server is not None:
            server.stop()
