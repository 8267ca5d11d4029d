"""Import: load items from text, CSV or JSON Lines files into a pool type's table, in bulk.

Every line is checked before it is inserted: valid UTF-8, not too long for the
text column, and only characters the column's character set can hold (a
utf8mb3 column cannot hold 4-byte characters). The whole import is one
transaction. When a line is rejected, reading goes on to name every bad line,
and then the transaction is rolled back so that nothing is loaded. With
skip_bad the good lines are loaded and the rejected ones listed.

Imported rows are available in one group and one batch. The default batch is
the group's highest batch plus one, so fills serve the new rows first.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from poolctl.config import Settings
from poolctl.errors import ConfigError, DataError
from poolctl.sql import Database, TextColumn

log = logging.getLogger(__name__)

Format = Literal["text", "csv", "jsonl"]
FORMATS: tuple[Format, ...] = ("text", "csv", "jsonl")
EXTENSIONS: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
STDIN = "-"

# Progress is reported every this many lines, and once at the end.
PROGRESS_EVERY = 10_000
# Rejected lines keep this many characters of their text for the report.
EXCERPT_CHARS = 40

Progress = Callable[[int], None]  # bytes read so far, over all sources

_SURROGATE = re.compile("[\ud800-\udfff]")  # left by surrogateescape where the bytes were not UTF-8
_OUTSIDE_BMP = re.compile("[\U00010000-\U0010ffff]")  # characters that take 4 bytes in UTF-8

# MariaDB character sets by the Python codec that accepts the same characters.
# utf8mb3 (alias utf8) has its own check. A charset not listed here is left to
# the server, whose strict mode rejects text it cannot store.
CHARSET_CODECS = {"latin1": "cp1252", "ascii": "ascii", "ucs2": "utf-16", "gbk": "gbk", "gb2312": "gb2312",
                  "big5": "big5", "sjis": "shift_jis", "ujis": "euc_jp", "euckr": "euc_kr", "koi8r": "koi8_r"}
FULL_UNICODE = {"utf8mb4", "utf16", "utf16le", "utf32", "binary"}


@dataclass(frozen=True, slots=True)
class Source:
    """One input: a file path, or "-" for standard input, and its format."""

    name: str
    format: Format


@dataclass(frozen=True, slots=True)
class RejectedLine:
    """A line that was not loaded: where it is, why, and the start of its text."""

    source: str
    line: int
    reason: str
    excerpt: str

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source, "line": self.line, "reason": self.reason, "excerpt": self.excerpt}


@dataclass(slots=True)
class ImportResult:
    """Counts of one import: rows loaded and blank lines, and the lines rejected."""

    pool_type: str
    group: int
    batch: int
    loaded: int = 0
    blank: int = 0
    rejected: list[RejectedLine] = field(default_factory=list)
    seconds: float = 0.0


class ImportRejected(DataError):
    """Lines were rejected and skip_bad was off, so nothing was loaded."""

    code = "rejected_lines"


def source_for(name: str, format_name: str | None = None) -> Source:
    """Return a Source, taking the format from the file extension when none is given (text by default)."""
    if format_name is not None:
        if format_name not in FORMATS:
            raise ConfigError(f"invalid format {format_name!r}", f"Use one of {', '.join(FORMATS)}")
        return Source(name, format_name)  # type: ignore[arg-type]
    return Source(name, EXTENSIONS.get(Path(name).suffix.lower(), "text"))


def import_items(
    settings: Settings,
    db: Database,
    pool_type: str,
    group: int,
    sources: Sequence[Source],
    batch: int | None = None,
    skip_bad: bool = False,
    column: str | None = None,
    progress: Progress | None = None,
) -> ImportResult:
    """Load every line of the sources as an available row of one group; see the module docstring.

    Raises ImportRejected (nothing loaded) when lines were rejected and
    skip_bad is off, and ConfigError for a missing file or CSV column.
    """
    spec = settings.pool(pool_type)
    db.check_table(pool_type)
    for source in sources:
        if source.name != STDIN and not Path(source.name).is_file():
            raise ConfigError(f"input file {source.name} not found", "Check the path")
    started = time.monotonic()
    result = ImportResult(pool_type, group, next_batch(db, pool_type, group) if batch is None else batch)
    checker = LineChecker(db.text_column(pool_type))
    fields = (column,) if column else ("text", spec.text_column)
    reader = _Reader(sources, fields, progress)

    def rows() -> Iterator[tuple[int, int, str]]:
        for source, line, text, problem in reader.records():
            if text is None and problem is None:
                result.blank += 1
                continue
            reason = problem or checker.problem(text or "")
            if reason is not None:
                result.rejected.append(RejectedLine(source, line, reason, _excerpt(text or "")))
                continue
            if skip_bad or not result.rejected:  # after a rejection without skip_bad, only read on
                yield (group, result.batch, text or "")
        if result.rejected and not skip_bad:
            raise ImportRejected(
                f"{len(result.rejected)} lines rejected, nothing was loaded",
                "Fix the lines listed, or pass --skip-bad to load the others",
                details={"rejected": [rejected.to_dict() for rejected in result.rejected]},
            )

    result.loaded = db.insert_rows(pool_type, rows())
    result.seconds = time.monotonic() - started
    log.info(
        "import into %s group %d batch %d: %d rows loaded, %d lines rejected, %d blank lines in %.1fs",
        pool_type, group, result.batch, result.loaded, len(result.rejected), result.blank, result.seconds,
    )
    return result


def next_batch(db: Database, pool_type: str, group: int) -> int:
    """Return the group's highest batch plus one, or 1 for a group with no rows."""
    table = db.table(pool_type)
    found = db.query(table.sql("SELECT MAX({batch}) FROM {table} WHERE {group} = {p}"), [group])
    highest = found[0][0] if found else None
    return 1 if highest is None else int(highest) + 1


class LineChecker:
    """Finds why a text cannot be stored in a text column, or None when it can."""

    def __init__(self, column: TextColumn) -> None:
        self.column = column
        charset = (column.charset or "utf8mb4").lower()
        self.charset = charset
        self.bmp_only = charset in ("utf8mb3", "utf8")
        codec = CHARSET_CODECS.get(charset)
        self.codec = codecs.lookup(codec).name if codec and charset not in FULL_UNICODE else None

    def problem(self, text: str) -> str | None:
        if not text:
            return "empty text"
        if _SURROGATE.search(text):
            return "not valid UTF-8"
        if self.column.max_chars is not None and len(text) > self.column.max_chars:
            return f"{len(text)} characters, column holds at most {self.column.max_chars}"
        # A UTF-8 character takes at most 4 bytes, so most texts skip the encoding.
        if self.column.max_bytes is not None and len(text) * 4 > self.column.max_bytes:
            size = len(text.encode("utf-8"))
            if size > self.column.max_bytes:
                return f"{size} bytes, column holds at most {self.column.max_bytes}"
        if self.bmp_only:
            found = _OUTSIDE_BMP.search(text)
            if found:
                return (f"character U+{ord(found.group()):04X} takes 4 bytes, "
                        f"which the {self.charset} column cannot hold")
        elif self.codec is not None:
            try:
                text.encode(self.codec)
            except UnicodeEncodeError as exc:
                return f"character U+{ord(text[exc.start]):04X} cannot be stored in the {self.charset} column"
        return None


class _CountingReader(io.RawIOBase):
    """A raw stream that counts the bytes read through it, for the progress bar."""

    def __init__(self, inner: BinaryIO, counter: list[int]) -> None:
        self.inner = inner
        self.counter = counter

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self.inner is not sys.stdin.buffer:
            self.inner.close()
        super().close()

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.inner.read(len(buffer))
        buffer[: len(data)] = data
        self.counter[0] += len(data)
        return len(data)


# One record: source name, line number, text (None for a blank line) and the reason it is rejected, if any.
Record = tuple[str, int, str | None, str | None]


class _Reader:
    """Reads records from every source in turn, reporting progress by bytes read."""

    def __init__(self, sources: Sequence[Source], fields: Sequence[str], progress: Progress | None) -> None:
        self.sources = sources
        self.fields = fields
        self.progress = progress
        self.counter = [0]

    def records(self) -> Iterator[Record]:
        count = 0
        for source in self.sources:
            with self._open(source) as stream:
                parse = {"text": self._text, "jsonl": self._jsonl, "csv": self._csv}[source.format]
                for record in parse(source.name, stream):
                    yield record
                    count += 1
                    if self.progress is not None and count % PROGRESS_EVERY == 0:
                        self.progress(self.counter[0])
        if self.progress is not None:
            self.progress(self.counter[0])

    def _open(self, source: Source) -> io.BufferedReader:
        inner = sys.stdin.buffer if source.name == STDIN else open(source.name, "rb")  # noqa: SIM115
        return io.BufferedReader(_CountingReader(inner, self.counter), buffer_size=1 << 16)

    def _lines(self, stream: io.BufferedReader) -> Iterator[tuple[int, str]]:
        for number, raw in enumerate(stream, start=1):
            text = raw.decode("utf-8", errors="surrogateescape")
            if number == 1:
                text = text.removeprefix("\ufeff")
            yield number, text.rstrip("\r\n")

    def _text(self, name: str, stream: io.BufferedReader) -> Iterator[Record]:
        for number, text in self._lines(stream):
            yield (name, number, text, None) if text.strip() else (name, number, None, None)

    def _jsonl(self, name: str, stream: io.BufferedReader) -> Iterator[Record]:
        for number, line in self._lines(stream):
            if not line.strip():
                yield name, number, None, None
                continue
            if _SURROGATE.search(line):
                yield name, number, line, "not valid UTF-8"
                continue
            yield (name, number, *self._json_text(line))

    def _json_text(self, line: str) -> tuple[str | None, str | None]:
        try:
            value = json.loads(line)
        except ValueError as exc:
            return line, f"not JSON: {exc.msg}"
        if isinstance(value, str):
            return value, None
        if not isinstance(value, dict):
            return line, "not a JSON string or object"
        for name in self.fields:
            if name in value:
                text = value[name]
                return (text, None) if isinstance(text, str) else (line, f"field {name!r} is not a string")
        return line, f"no field {' or '.join(repr(name) for name in dict.fromkeys(self.fields))}"

    def _csv(self, name: str, stream: io.BufferedReader) -> Iterator[Record]:
        text_stream = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text_stream)
        header = next(reader, None)
        if header is None:
            return
        index = next((header.index(field) for field in self.fields if field in header), None)
        if index is None:
            expected = " or ".join(repr(field) for field in dict.fromkeys(self.fields))
            raise ConfigError(f"{name}: the CSV header has no column {expected}: {header}",
                              "Name the text column with --column")
        previous_end = reader.line_num
        for row in reader:
            line = previous_end + 1  # a quoted field can span lines: report where the record starts
            previous_end = reader.line_num
            if not row or not any(value.strip() for value in row):
                yield name, line, None, None
            elif len(row) != len(header):
                yield name, line, ",".join(row), f"{len(row)} fields, the header has {len(header)}"
            else:
                yield name, line, row[index], None


def _excerpt(text: str) -> str:
    cleaned = _SURROGATE.sub("\ufffd", text)
    return cleaned if len(cleaned) <= EXCERPT_CHARS else cleaned[: EXCERPT_CHARS - 1] + "…"
