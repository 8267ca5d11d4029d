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
from datetime import datetime, timezone
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

    def flush(self) -> None:
        sys.stdout.flush()

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None,
              styles: Sequence[str | None] | None = None) -> None:
        """Write rows under column headings: a Rich table on a terminal, aligned plain text otherwise."""
        if self.tty:
            console().print(rich_table(columns, rows, title, styles))
        else:
            self._plain_table(columns, _cells(rows))

    def _plain_table(self, columns: Sequence[str], cells: list[list[str]]) -> None:
        widths = [cell_width(column) for column in columns]
        for row in cells:
            widths = [max(width, cell_width(value)) for width, value in zip(widths, row, strict=True)]
        for row in [list(columns), *cells]:
            padded = [value + " " * (width - cell_width(value)) for value, width in zip(row, widths, strict=True)]
            sys.stdout.write("  ".join(padded).rstrip() + "\n")


def console() -> Any:
    """Return a Rich console on stdout. Rich measures CJK characters as two columns and wraps by cells."""
    from rich.console import Console

    return Console(highlight=False)


def rich_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None,
               styles: Sequence[str | None] | None = None) -> Any:
    """Build a Rich table; imported lazily so that commands that print no table never load Rich."""
    from rich.table import Table

    cells = _cells(rows)
    keep, hidden = _fit_columns(list(columns), cells, console().width)
    table = Table(title=title, header_style="bold",
                  caption=f"hidden to fit the terminal: {', '.join(hidden)} (widen it, or use --json)" if hidden else None)
    for index in keep:
        table.add_column(columns[index], justify="right" if columns[index] in NUMERIC_HINTS else "left")
    for index, row in enumerate(cells):
        table.add_row(*[row[column] for column in keep], style=styles[index] if styles else None)
    return table


def _fit_columns(columns: list[str], cells: list[list[str]], width: int) -> tuple[list[int], list[str]]:
    """Return the indexes of the columns to show in width terminal cells, and the names of those hidden.

    Rich would squeeze every column of a wide table into a few cells each
    ("t…"); dropping the least needed columns (DROP_FIRST) keeps the rest readable.
    """
    natural = [max([cell_width(column)] + [cell_width(row[index]) for row in cells]) + 3
               for index, column in enumerate(columns)]  # + padding and one border per column
    keep = list(range(len(columns)))
    hidden = []
    for name in DROP_FIRST:
        if sum(natural[index] for index in keep) + 1 <= width:
            break
        if name in columns and columns.index(name) in keep:
            keep.remove(columns.index(name))
            hidden.append(name)
    return keep, hidden


# Columns a Rich table leaves out first when the terminal is too narrow for all.
DROP_FIRST = [
    "consumed", "queued", "available", "lock", "dead", "fill/s", "threshold", "size", "acks", "pop/s", "fill %",
]


def _cells(rows: Sequence[Sequence[Any]]) -> list[list[str]]:
    return [["" if value is None else str(value) for value in row] for row in rows]


# Columns right-aligned in Rich tables.
NUMERIC_HINTS = {
    "length", "size", "threshold", "fill %", "acks", "dead", "available", "queued", "consumed",
    "before", "after", "pushed", "seconds", "ttl s", "group", "rows", "flushed",
    "pop/s", "fill/s", "empty in", "line",
}


def error_line(message: str) -> None:
    sys.stderr.write(f"poolctl: error: {message}\n")


def setup_logging(verbosity: int, log_format: str = "text") -> None:
    """Send poolctl's logs to stderr at the level verbosity sets.

    Verbosity is the count of -v minus the count of -q: 1 or more DEBUG,
    0 INFO, -1 WARNING, -2 or less ERROR. The json format writes one JSON
    object per line for log shippers; text uses Rich on a terminal.
    """
    level = logging.ERROR
    if verbosity > 0:
        level = logging.DEBUG
    elif verbosity == 0:
        level = logging.INFO
    elif verbosity == -1:
        level = logging.WARNING
    root = logging.getLogger("poolctl")
    root.setLevel(level)
    root.handlers.clear()
    root.propagate = False
    handler: logging.Handler
    if log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLogFormatter())
    elif sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        # RichHandler's own console writes to stdout, which carries data only.
        handler = RichHandler(console=Console(stderr=True), show_path=False, log_time_format="%H:%M:%S")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)


class JsonLogFormatter(logging.Formatter):
    """Formats a log record as one JSON object: time (UTC, ISO 8601), level, logger, message, and exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def use_utf8_stdout() -> None:
    """Write stdout as UTF-8 whatever the locale is, because the data contract (text and JSON) is UTF-8."""
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    if encoding != "utf8" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(encoding="utf-8")
