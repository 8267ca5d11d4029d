"""Output of the command line: data on stdout, logs and errors on stderr.

On a terminal, tables are Rich tables; when piped, they are plain columns with
no colour or box drawing. With --json, stdout carries exactly one JSON
document per command (one per line for watch modes) and nothing else.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def cell_width(text: str) -> int:
    """Return the terminal columns text takes: CJK characters take two."""
    from rich.cells import cell_len

    return cell_len(text)


class Output:
    """Writes a command's results in text, table or JSON form."""

    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode
        self.tty = sys.stdout.isatty()

    def json(self, payload: Any) -> None:
        sys.stdout.write(json.dumps(payload, ensure_ascii=False, default=str) + "\n")
        sys.stdout.flush()

    def line(self, text: str = "") -> None:
        sys.stdout.write(text + "\n")

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None,
              styles: Sequence[str | None] | None = None) -> None:
        """Write rows under column headings: a Rich table on a terminal, aligned plain text otherwise."""
        cells = [["" if value is None else str(value) for value in row] for row in rows]
        if self.tty:
            self._rich_table(columns, cells, title, styles)
        else:
            self._plain_table(columns, cells)

    def _rich_table(self, columns: Sequence[str], cells: list[list[str]], title: str | None,
                    styles: Sequence[str | None] | None) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, header_style="bold")
        for column in columns:
            table.add_column(column, justify="right" if column in NUMERIC_HINTS else "left")
        for index, row in enumerate(cells):
            table.add_row(*row, style=styles[index] if styles else None)
        Console().print(table)

    def _plain_table(self, columns: Sequence[str], cells: list[list[str]]) -> None:
        widths = [cell_width(column) for column in columns]
        for row in cells:
            widths = [max(width, cell_width(value)) for width, value in zip(widths, row, strict=True)]
        for row in [list(columns), *cells]:
            padded = [value + " " * (width - cell_width(value)) for value, width in zip(row, widths, strict=True)]
            sys.stdout.write("  ".join(padded).rstrip() + "\n")


# Columns right-aligned in Rich tables.
NUMERIC_HINTS = {
    "length", "size", "threshold", "fill %", "acks", "dead", "available", "queued", "consumed",
    "before", "after", "pushed", "seconds", "ttl s", "group", "rows", "flushed",
}


def error_line(message: str) -> None:
    sys.stderr.write(f"poolctl: error: {message}\n")


def setup_logging(verbose: int, quiet: bool) -> None:
    """Send poolctl's logs to stderr: INFO by default, DEBUG with -v, WARNING with -q."""
    level = logging.INFO
    if quiet:
        level = logging.WARNING
    elif verbose:
        level = logging.DEBUG
    root = logging.getLogger("poolctl")
    root.setLevel(level)
    root.handlers.clear()
    root.propagate = False
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, log_time_format="%H:%M:%S")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
