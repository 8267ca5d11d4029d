"""`db init` and `db check`: create the pool tables with their fill index, load sample rows, check a schema."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from poolctl.config import PoolTypeSettings, Settings
from poolctl.errors import DataError, SchemaError
from poolctl.sample import FOUR_BYTE_EXAMPLE, sample_rows
from poolctl.sql import Database, QueryPlan
from poolctl.sql.base import BMP_ONLY_CHARSETS

log = logging.getLogger(__name__)

# Rows handed to the database per insert call; also the progress step.
SAMPLE_CHUNK = 50_000

Progress = Callable[[str, int], None]  # (pool type, rows inserted so far)


@dataclass(slots=True)
class TableInit:
    """What `db init` did for one pool type."""

    pool_type: str
    table: str
    created: bool
    plan: QueryPlan
    inserted: int = 0
    seconds: float = 0.0

    @property
    def index_ok(self) -> bool:
        return self.plan.uses_index and not self.plan.filesort


def init_database(
    settings: Settings,
    db: Database,
    samples: Mapping[str, int] | None = None,
    groups: int = 20,
    batches: int = 5,
    seed: int | None = None,
    progress: Progress | None = None,
) -> list[TableInit]:
    """Create every configured table that is missing, then insert sample rows per pool type."""
    results = []
    for pool_type, spec in settings.pools.items():
        created = db.create_table(pool_type)
        db.check_table(pool_type)
        result = TableInit(pool_type, spec.table, created, db.explain_claim(pool_type))
        if not result.index_ok:
            log.warning(
                "table %s: the fill query is not served by an index without a sort (%s); "
                "add an index on (%s, %s, %s DESC, %s)",
                spec.table, result.plan.detail, spec.group_column, spec.status_column, spec.batch_column, spec.id_column,
            )
        count = (samples or {}).get(pool_type, 0)
        if count:
            _check_sample_charset(db, pool_type, spec)
            started = time.monotonic()
            rows = sample_rows(spec, count, groups, batches, seed)
            for chunk_end in _chunk_ends(count):
                result.inserted += db.insert_rows(pool_type, _take(rows, chunk_end - result.inserted))
                if progress:
                    progress(pool_type, result.inserted)
            result.seconds = time.monotonic() - started
            log.info("table %s: %d sample rows inserted in %.1fs", spec.table, result.inserted, result.seconds)
        results.append(result)
    return results


def _check_sample_charset(db: Database, pool_type: str, spec: PoolTypeSettings) -> None:
    # Checked before the first insert: samples go in over several transactions,
    # and a failure halfway would leave part of them behind.
    charset = db.text_charset(pool_type)
    if charset is not None and charset.lower() in BMP_ONLY_CHARSETS:
        raise DataError(
            f"column {spec.table}.{spec.text_column} uses {charset}, which cannot store the 4-byte characters "
            f"that sample texts contain, such as {FOUR_BYTE_EXAMPLE} (U+{ord(FOUR_BYTE_EXAMPLE):X}); nothing was inserted",
            f"Convert the table to utf8mb4 (ALTER TABLE {spec.table} CONVERT TO CHARACTER SET utf8mb4)",
        )


@dataclass(slots=True)
class TableCheck:
    """The result of `db check` for one pool type's table; problems is empty when all is well."""

    pool_type: str
    table: str
    charset: str | None = None
    plan: QueryPlan | None = None
    problems: list[str] = field(default_factory=list)


def check_database(settings: Settings, db: Database, pool_types: list[str] | None = None) -> list[TableCheck]:
    """Check each pool type's table: columns present, fill index used, text character set, status values."""
    results = []
    for pool_type in pool_types or list(settings.pools):
        spec = settings.pool(pool_type)
        check = TableCheck(pool_type, spec.table)
        results.append(check)
        try:
            db.check_table(pool_type)
        except SchemaError as exc:
            check.problems.append(str(exc))
            continue
        check.plan = db.explain_claim(pool_type)
        if not check.plan.uses_index or check.plan.filesort:
            check.problems.append(
                f"the fill query is not served by an index without a sort ({check.plan.detail}); add an index on "
                f"({spec.group_column}, {spec.status_column}, {spec.batch_column} DESC, {spec.id_column})"
            )
        check.charset = db.text_charset(pool_type)
        if check.charset is not None and check.charset.lower() in BMP_ONLY_CHARSETS:
            check.problems.append(
                f"column {spec.table}.{spec.text_column} uses {check.charset}, which cannot store 4-byte characters "
                f"(emoji, CJK Extension B); convert it: ALTER TABLE {spec.table} CONVERT TO CHARACTER SET utf8mb4"
            )
        others = sum(counts.other for counts in db.state_counts(pool_type).values())
        if others:
            status = settings.status
            check.problems.append(
                f"{others} rows of {spec.table} have a {spec.status_column} that is none of available "
                f"({status.available}), queued ({status.queued}) and consumed ({status.consumed}); fill and pop "
                "ignore them. Check [status] in the config"
            )
    return results


def _chunk_ends(count: int) -> Iterator[int]:
    yield from range(min(SAMPLE_CHUNK, count), count, SAMPLE_CHUNK)
    yield count


def _take(rows: Iterator[tuple[int, int, str]], count: int) -> Iterator[tuple[int, int, str]]:
    for _ in range(count):
        yield next(rows)
