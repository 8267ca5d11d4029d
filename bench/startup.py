"""Start-up: `poolctl pop TYPE --group G` as a fresh process against a bare interpreter importing redis and pymysql.

Both run with the interpreter of the running environment (its `poolctl`
console script, its python), from an empty folder, with POOLCTL_CONFIG
pointing at the benchmark's config. Each `poolctl pop` pops one real item
and flushes its ack on exit, as a script calling it would.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

from poolctl.fill import Filler
from poolctl.sql import connect_database
from poolctl.store import RedisStore

from bench.core import Result, Scale, Target, run_rounds
from bench.data import create_tables, drop_tables, generate_rows
from bench.env import BenchEnv, poolctl_command

log = logging.getLogger("bench")

POOL_TYPE = "titles"
TABLE = "startup_titles"
GROUP = 1
PROCESS_TIMEOUT_S = 60.0


def run(env: BenchEnv, scale: Scale) -> list[Result]:
    rounds = scale.warmup + scale.startup_rounds
    size = max(100, 2 * rounds)
    settings, config = env.settings(
        "startup", {POOL_TYPE: {"table": TABLE, "text_column": "title", "text_type": "short", "size": size,
                                "threshold": size - 1, "batch": size}}
    )
    create_tables(settings)
    generate_rows(env, TABLE, "group_id, batch_id, status, title", f"{GROUP}, 1, 1, CONCAT('标题', seq)", size)
    store = RedisStore.from_settings(settings)
    db = connect_database(settings)
    try:
        filler = Filler(settings, store, db)
        filler.run_pass(filler.discover([POOL_TYPE]))
    finally:
        db.close()
        store.client.close()

    child_env = env.child_env(config)
    pop_argv = [*poolctl_command(), "pop", POOL_TYPE, "--group", str(GROUP)]
    import_argv = [sys.executable, "-c", "import redis, pymysql"]
    cli_import_argv = [sys.executable, "-c", "import poolctl.cli.app, poolctl.cli.commands.pop"]
    _compile_package()
    try:
        values = run_rounds(
            "startup",
            {
                "pop": lambda: _time_process(pop_argv, child_env, env.workdir),
                "import": lambda: _time_process(import_argv, child_env, env.workdir),
                "cli_import": lambda: _time_process(cli_import_argv, child_env, env.workdir),
            },
            scale.warmup, scale.startup_rounds,
        )
    finally:
        drop_tables(env, [TABLE])
        env.delete_keys(settings.redis.key_prefix)

    baseline = 'python -c "import redis, pymysql"'
    return [
        Result("startup", "startup.pop", "ms", values["pop"], baseline=baseline, baseline_samples=values["import"],
               target=Target("<=", 2.0), detail=f"`{Path(pop_argv[0]).name} {' '.join(pop_argv[1:])}` as a new process, "
               "popping one item"),
        Result("startup", "startup.cli_import", "ms", values["cli_import"], baseline=baseline,
               baseline_samples=values["import"],
               detail='python -c "import poolctl.cli.app, poolctl.cli.commands.pop": the imports alone, no connection'),
    ]


def _compile_package() -> None:
    """Write poolctl's bytecode, as installing it from a wheel does.

    An editable install leaves it to the first run, and with
    PYTHONDONTWRITEBYTECODE set (as on this machine) every run would compile
    poolctl's sources again, while redis and pymysql, installed from wheels,
    load compiled. Timing that would measure the compiler, not poolctl.
    """
    import compileall

    import poolctl

    if not compileall.compile_dir(Path(poolctl.__file__).parent, quiet=1):
        raise RuntimeError("compiling poolctl's bytecode failed")


def _time_process(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    completed = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               timeout=PROCESS_TIMEOUT_S, check=False)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {completed.returncode}: {completed.stderr.decode(errors='replace')}")
    return seconds * 1000
