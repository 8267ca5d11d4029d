"""`poolctl import TYPE --group G FILE...`: load items from text, CSV or JSON Lines files into SQL."""

from __future__ import annotations

import logging
import os
import sys
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from poolctl.cli.app import Runtime, app, command
from poolctl.errors import ConfigError

if TYPE_CHECKING:
    from poolctl.importer import ImportResult, Progress, RejectedLine, Source


class InputFormat(str, Enum):
    auto = "auto"
    text = "text"
    csv = "csv"
    jsonl = "jsonl"


@command(app, "import")
def import_command(
    rt: Runtime,
    pool_type: Annotated[str, typer.Argument(metavar="TYPE", help="Pool type to load into, e.g. titles.", show_default=False)],
    files: Annotated[
        list[str] | None,
        typer.Argument(metavar="FILE...", help="Files to load; - or none reads standard input.", show_default=False),
    ] = None,
    group: Annotated[int, typer.Option("--group", "-g", help="Group the items belong to.", show_default=False)] = ...,  # type: ignore[assignment]
    batch: Annotated[
        int | None,
        typer.Option("--batch", "-b", min=0, help="Batch of the new rows. Default: the group's highest batch + 1, "
                     "so fills serve them first.", show_default=False),
    ] = None,
    input_format: Annotated[
        InputFormat,
        typer.Option("--format", "-f", help="text (one item per line), csv (with a header) or jsonl. "
                     "auto: by extension (.csv, .jsonl, .ndjson), else text."),
    ] = InputFormat.auto,
    column: Annotated[
        str | None,
        typer.Option("--column", help="CSV column or JSON field with the text. Default: text, else the "
                     "pool type's text column name.", show_default=False),
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Load the good lines and list the rejected ones, instead of loading nothing.")
    ] = False,
) -> None:
    """Load items into a pool type's table as available rows, in one transaction.

    Lines that are not valid UTF-8, too long for the column, or hold characters
    the column's character set cannot store (4-byte characters in utf8mb3) are
    rejected with their line numbers. Then nothing is loaded, unless
    --skip-bad is given. Blank lines are skipped and counted.
    """
    from poolctl.importer import ImportRejected, import_items, source_for

    names = files or ["-"]
    if names == ["-"] and sys.stdin.isatty():
        raise ConfigError("no input: give files, or pipe lines into standard input", "poolctl import titles -g 3 titles.txt")
    chosen = None if input_format is InputFormat.auto else input_format.value
    sources = [source_for(name, chosen) for name in names]
    try:
        with _progress_bar(rt, sources) as progress:
            result = import_items(rt.settings, rt.db, pool_type, group, sources, batch, skip_bad, column, progress)
    except ImportRejected as exc:
        if not rt.json_mode:
            from poolctl.importer import RejectedLine

            for item in exc.details["rejected"] if exc.details else []:
                sys.stderr.write(_rejected_line(RejectedLine(**item)) + "\n")
        raise
    _print_result(rt, result, names)


def _print_result(rt: Runtime, result: ImportResult, names: list[str]) -> None:
    if rt.json_mode:
        rt.out.json(import_document(result))
        return
    sources = ", ".join("standard input" if name == "-" else name for name in names)
    rt.out.line(f"loaded {result.loaded:,} items into {result.pool_type} group {result.group} batch {result.batch} "
                f"from {sources} in {result.seconds:.1f}s ({result.blank:,} blank lines skipped)")
    if result.rejected:
        rt.out.line(f"skipped {len(result.rejected):,} rejected lines:")
        for rejected in result.rejected:
            rt.out.line("  " + _rejected_line(rejected))


def import_document(result: ImportResult) -> dict[str, Any]:
    """Return the --json shape of a finished import."""
    return {
        "pool_type": result.pool_type, "group": result.group, "batch": result.batch, "loaded": result.loaded,
        "blank": result.blank, "skipped": [rejected.to_dict() for rejected in result.rejected],
        "seconds": round(result.seconds, 3),
    }


def _rejected_line(rejected: RejectedLine) -> str:
    source = "<stdin>" if rejected.source == "-" else rejected.source
    return f"{source}:{rejected.line}: {rejected.reason}: {rejected.excerpt!r}"


class _progress_bar:  # noqa: N801  (used as a context manager, like a function)
    """A Rich progress bar on stderr while the import reads its input; nothing when stderr is not a terminal."""

    def __init__(self, rt: Runtime, sources: list[Source]) -> None:
        self.enabled = sys.stderr.isatty() and logging.getLogger("poolctl").isEnabledFor(logging.INFO)
        sizes = [os.path.getsize(source.name) for source in sources if source.name != "-" and os.path.isfile(source.name)]
        self.total = sum(sizes) if len(sizes) == len(sources) else None
        self.progress: Any = None

    def __enter__(self) -> Progress | None:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)

        self.progress = Progress(
            TextColumn("importing"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False,
        )
        self.progress.start()
        task = self.progress.add_task("import", total=self.total)

        def advance(done: int) -> None:
            self.progress.update(task, completed=done)

        return advance

    def __exit__(self, *exc_info: object) -> None:
        if self.progress is not None:
            self.progress.stop()
