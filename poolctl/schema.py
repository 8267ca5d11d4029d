"""`db init`: create the pool tables with their fill index, and load sample rows."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from poolctl.config import Settings
from poolctl.sample import sample_rows
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


def _chunk_ends(count: int) -> Iterator[int]:
    yield from range(min(SAMPLE_CHUNK, count), count, SAMPLE_CHUNK)
    yield count


def _take(rows: Iterator[tuple[int, int, str]], count: int) -> Iterator[tuple[int, int, str]]:
    for _ in range(count):
        yield next(rows)
