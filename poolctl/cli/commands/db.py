"""`poolctl db init` and `poolctl db check`: create the schema and load sample rows, or check a schema."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from poolctl.cli.app import Runtime, app, command
from poolctl.errors import ConfigError

db_app = typer.Typer(help="Create and check the SQL schema.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(db_app, name="db")


@command(db_app, "init")
def init(
    rt: Runtime,
    sample: Annotated[
        list[str] | None,
        typer.Option("--sample", "-s", metavar="N|TYPE=N",
                     help="Load N sample rows into every pool type's table, or N into one (repeatable).", show_default=False),
    ] = None,
    groups: Annotated[int, typer.Option("--groups", min=1, help="Sample rows are spread over groups 1..N.")] = 20,
    batches: Annotated[int, typer.Option("--batches", min=1, help="Sample rows are spread over batches 1..N.")] = 5,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed, for repeatable samples.", show_default=False)] = None,
) -> None:
    """Create every configured table that is missing, with the index the fill query needs.

    Existing tables are kept and checked. With --sample, Chinese sample texts
    are inserted as available rows (titles 15-40 characters, bodies 300-3000).
    """
    from poolctl.schema import init_database

    samples = _parse_samples(sample or [], list(rt.settings.pools))
    rt.create_database = True
    progress = _progress_printer() if samples and sys.stderr.isatty() and not rt.json_mode else None
    results = init_database(rt.settings, rt.db, samples, groups, batches, seed, progress)
    if progress:
        sys.stderr.write("\n")
    if rt.json_mode:
        rt.out.json(
            {
                "tables": [
                    {"pool_type": r.pool_type, "table": r.table, "created": r.created, "index_ok": r.index_ok,
                     "plan": r.plan.detail, "inserted": r.inserted, "seconds": round(r.seconds, 3)}
                    for r in results
                ]
            }
        )
        return
    rows = [[r.pool_type, r.table, "created" if r.created else "exists", "ok" if r.index_ok else "NO (see log)", r.inserted]
            for r in results]
    rt.out.table(["pool", "table", "table state", "fill index", "rows"], rows)


@command(db_app, "check")
def check(rt: Runtime) -> None:
    """Check every configured table: columns, fill index, text character set and status values.

    The table checks are those of `poolctl doctor`, without Redis. Exits with
    1 when a check fails, such as a text column in utf8mb3 that cannot store
    4-byte characters (emoji, CJK Extension B).
    """
    from poolctl.cli.commands.doctor import print_checks
    from poolctl.schema import check_database

    print_checks(rt, check_database(rt.settings, rt.db))


def _parse_samples(values: list[str], pool_types: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        name, sep, number = value.rpartition("=")
        targets = [name] if sep else pool_types
        try:
            count = int(number)
        except ValueError:
            raise ConfigError(f"invalid --sample {value!r}: not a number", "Use --sample 1000 or --sample titles=1000") from None
        if count < 0:
            raise ConfigError(f"invalid --sample {value!r}: negative", "Use a count of 0 or more")
        for target in targets:
            if target not in pool_types:
                raise ConfigError(f"invalid --sample {value!r}: unknown pool type {target!r}",
                                  f"Configured pool types: {', '.join(pool_types)}")
            counts[target] = count
    return counts


def _progress_printer():  # type: ignore[no-untyped-def]
    def show(pool_type: str, inserted: int) -> None:
        sys.stderr.write(f"\r{pool_type}: {inserted:,} rows inserted ")
        sys.stderr.flush()

    return show
