"""`db init` and `db check`: create the pool tables with their fill index, load sample rows, check a schema."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from poolctl.config import PoolTypeSettings, Settings
from poolctl.doctor import FULL_UNICODE_CHARSETS, Check, DoctorReport, table_checks
from poolctl.errors import DataError
from poolctl.sample import FOUR_BYTE_EXAMPLE, sample_rows
from poolctl.sql import Database, QueryPlan

log = logging.getLogger(__name__)

# Rows handed to the database per insert call; also the progress step.
SAMPLE_CHUNK = 50_000

Progress = Callable[[str, int], None]  # (pool type, rows inserted so far)


@dataclass(slots=True)
class TableInit:
    """The outcome of `db init` for one pool type."""

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
    charset = db.text_column(pool_type).charset
    if charset is not None and charset.lower() not in FULL_UNICODE_CHARSETS:
        raise DataError(
            f"column {spec.table}.{spec.text_column} uses {charset}, which cannot store the 4-byte characters "
            f"that sample texts contain, such as {FOUR_BYTE_EXAMPLE} (U+{ord(FOUR_BYTE_EXAMPLE):X}); nothing was inserted",
            f"Convert the table to utf8mb4 (ALTER TABLE {spec.table} CONVERT TO CHARACTER SET utf8mb4)",
        )


def check_database(settings: Settings, db: Database, pool_types: list[str] | None = None) -> DoctorReport:
    """Check each pool type's table as `poolctl doctor` does, and that every row has a configured status.

    The table checks are doctor's: columns present, fill index used without a
    sort, and a text character set that stores 4-byte characters.
    """
    checks: list[Check] = []
    for pool_type in pool_types or list(settings.pools):
        settings.pool(pool_type)  # raises UnknownPoolType
        found = list(table_checks(db, pool_type))
        checks.extend(found)
        if found[0].status == "ok":
            checks.append(_status_check(settings, db, pool_type))
    return DoctorReport(checks)


def _status_check(settings: Settings, db: Database, pool_type: str) -> Check:
    spec = settings.pools[pool_type]
    others = sum(counts.other for counts in db.state_counts(pool_type).values())
    if not others:
        return Check(f"status {pool_type}", "ok", f"every row of {spec.table} is available, queued or consumed")
    status = settings.status
    return Check(
        f"status {pool_type}", "fail",
        f"{others} rows of {spec.table} have a {spec.status_column} that is none of available ({status.available}), "
        f"queued ({status.queued}) and consumed ({status.consumed}); fill and pop ignore them",
        "Check [status] in the config, or fix the rows",
    )


def _chunk_ends(count: int) -> Iterator[int]:
    yield from range(min(SAMPLE_CHUNK, count), count, SAMPLE_CHUNK)
    yield count


def _take(rows: Iterator[tuple[int, int, str]], count: int) -> Iterator[tuple[int, int, str]]:
    for _ in range(count):
        yield next(rows)
