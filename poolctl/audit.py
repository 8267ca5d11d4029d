"""Audit: check, read-only, that the contents of Redis agree with SQL.

Errors break an invariant that poolctl promises:

  wrong_type      a key of a pool has another Redis type than poolctl keeps there
  duplicate       an id sits twice in one pool, in two pools of a pool type, or in a pool and acks
  not_queued      a pooled id whose row is not queued: available (a fill can hand it out
                  a second time), consumed (it was served already), or gone
  wrong_group     a pooled id whose row belongs to another group
  over_size       a pool holds more items than its size
  malformed       a pool holds entries that are not valid items
  missing         queued rows that are in no pool and no acks list (run reconcile)
  acks_invalid    acks entries that are not ids
  acks_orphaned   acked ids whose rows are available or gone
  acks_stuck      acks pending with no flush for longer than acks_stuck_after_s
  lock_without_ttl a fill lock that never expires

Warnings need attention but break nothing yet:

  in_flight       queued rows missing while the pool's fill lock is held: a fill may be
                  between its commit and its push
  acks_flushed    acks of rows already consumed (a flush stopped before it trimmed them)
  dead_letters    entries set aside in a dead-letter list
  no_sentinel     a pool with queued rows and no sentinel: Redis lost its state, or poolctl
                  never filled it
  charset         a text column whose character set cannot store 4-byte characters

The audit takes no locks, so fills and pops keep running, and a check read
while an item moves can see it in two places or in none. Every check that
finds something runs a second time after AUDIT_RECHECK_S, and only what both
runs found is reported.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from poolctl.config import Settings
from poolctl.doctor import FULL_UNICODE_CHARSETS
from poolctl.keys import PoolKeys
from poolctl.sql import Database
from poolctl.store import PoolDetails, PoolSnapshot, RedisStore

AUDIT_RECHECK_S = 0.5
# Pending acks with no flush for this long are stuck. Consumers flush every
# acks.interval_s (at their next pop) and `poolctl fill --watch` every pass,
# but a cron `poolctl fill` may flush only once a minute.
ACKS_STUCK_AFTER_S = 300.0
# At most this many ids are listed per finding; the count is always exact.
IDS_SHOWN = 100


@dataclass(slots=True)
class Finding:
    """One thing the audit found wrong, in one pool or one pool type."""

    severity: str  # error or warning
    check: str
    message: str  # "{count}" in it stands for count
    pool_type: str | None = None
    group: int | None = None
    key: str | None = None
    ids: list[int] = field(default_factory=list)
    count: int = 0
    row_state: str | None = None  # for not_queued: available, consumed, gone or "status N"

    def identity(self) -> tuple[str, str | None, int | None, str | None, str | None]:
        return (self.check, self.pool_type, self.group, self.key, self.row_state)

    @property
    def text(self) -> str:
        return self.message.replace("{count}", str(self.count))

    def to_dict(self) -> dict[str, object]:
        return {
            "severity": self.severity, "check": self.check, "pool_type": self.pool_type, "group": self.group,
            "key": self.key, "row_state": self.row_state, "count": self.count, "ids": self.ids[:IDS_SHOWN],
            "message": self.text,
        }


@dataclass(slots=True)
class AuditResult:
    """Everything one audit found."""

    findings: list[Finding] = field(default_factory=list)
    pools_checked: int = 0
    seconds: float = 0.0

    @property
    def errors(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


def audit(
    settings: Settings,
    store: RedisStore,
    db: Database,
    pool_types: Sequence[str] | None = None,
    acks_stuck_after_s: float = ACKS_STUCK_AFTER_S,
    group: int | None = None,
) -> AuditResult:
    """Check every pool of the given pool types (default: all) against SQL, or only one group's; never writes."""
    started = time.monotonic()
    types = list(pool_types) if pool_types else list(settings.pools)
    for pool_type in types:
        settings.pool(pool_type)  # raises UnknownPoolType
    result = AuditResult()
    first = _audit_once(settings, store, db, types, acks_stuck_after_s, result, group)
    if any(finding.severity == "error" or finding.ids for finding in first):
        time.sleep(AUDIT_RECHECK_S)
        second = _audit_once(settings, store, db, types, acks_stuck_after_s, AuditResult(), group)
        first = _confirmed(first, second)
    result.findings = sorted(first, key=lambda f: (f.severity != "error", f.pool_type or "", f.group or 0, f.check))
    result.seconds = time.monotonic() - started
    return result


def _confirmed(first: list[Finding], second: list[Finding]) -> list[Finding]:
    """Keep the findings of the first run that the second run found too; for findings with ids, only their common ids."""
    again = {finding.identity(): finding for finding in second}
    kept = []
    for finding in first:
        other = again.get(finding.identity())
        if other is None:
            continue
        if finding.ids:
            common = sorted(set(finding.ids) & set(other.ids))
            if not common:
                continue
            finding.ids = common
            finding.count = len(common)
        kept.append(finding)
    return kept


def _audit_once(
    settings: Settings,
    store: RedisStore,
    db: Database,
    types: list[str],
    acks_stuck_after_s: float,
    result: AuditResult,
    only_group: int | None,
) -> list[Finding]:
    findings: list[Finding] = []
    in_redis = store.pools_in_redis() if only_group is None else set()
    for pool_type in types:
        if only_group is None:
            groups = set(db.state_counts(pool_type)) | {group for found_type, group in in_redis if found_type == pool_type}
        else:
            groups = {only_group}
        pools = [store.keys(pool_type, group) for group in sorted(groups)]
        result.pools_checked += len(pools)
        findings.extend(_check_pool_type(settings, store, db, pool_type, pools, acks_stuck_after_s, only_group))
        findings.extend(_check_charset(db, pool_type, settings))
    return findings


def _check_pool_type(
    settings: Settings,
    store: RedisStore,
    db: Database,
    pool_type: str,
    pools: list[PoolKeys],
    acks_stuck_after_s: float,
    only_group: int | None = None,
) -> list[Finding]:
    findings = []
    damaged = set()
    for keys, key, found in store.wrong_types(pools):
        damaged.add(keys)
        findings.append(Finding(
            "error", "wrong_type", f"Redis key {key} holds a {found}, which poolctl does not keep there; "
            f"inspect it (redis-cli TYPE {key}), then rename or delete it", pool_type, keys.group, key,
        ))
    readable = [keys for keys in pools if keys not in damaged]
    # Redis before SQL: see the module docstring for how the two runs absorb
    # items that move in between.
    snapshots = {keys: store.read_pool(keys) for keys in readable}
    details = dict(zip(readable, store.pool_details(readable), strict=True))
    queued = db.queued_groups(pool_type)
    if only_group is not None:  # the other groups' queued rows are in pools this run does not read
        queued = {item: group for item, group in queued.items() if group == only_group}

    findings.extend(_check_placement(settings, db, pool_type, snapshots, queued))
    queued_groups = set(queued.values())
    for keys in readable:
        findings.extend(
            _check_pool(settings, keys, snapshots[keys], details[keys], keys.group in queued_groups, acks_stuck_after_s)
        )
    findings.extend(_check_missing({keys.group: keys for keys in readable}, snapshots, details, queued, pool_type))
    return findings


def _check_placement(
    settings: Settings, db: Database, pool_type: str, snapshots: dict[PoolKeys, PoolSnapshot], queued: dict[int, int]
) -> list[Finding]:
    """Find ids held twice, pooled ids whose row is not queued or in another group, and invalid acks."""
    findings = []
    places: dict[int, list[str]] = defaultdict(list)
    for keys, snapshot in snapshots.items():
        for item in snapshot.pool_ids:
            places[item].append(keys.pool)
        for item in _ids(snapshot.acks):
            places[item].append(keys.acks)
    twice = sorted(item for item, where in places.items() if len(where) > 1)
    if twice:
        findings.append(Finding(
            "error", "duplicate", f"{{count}} ids of pool type {pool_type} are held more than once in its pools and "
            "acks lists; each of them can be handed out twice", pool_type, ids=twice, count=len(twice),
        ))

    unknown = sorted(item for item in places if item not in queued)
    rows = db.groups_and_statuses(pool_type, unknown) if unknown else {}
    for keys, snapshot in snapshots.items():
        findings.extend(_check_pooled_rows(settings, keys, snapshot, queued, rows))
    return findings


def _check_pooled_rows(
    settings: Settings, keys: PoolKeys, snapshot: PoolSnapshot, queued: dict[int, int], rows: dict[int, tuple[int, int]]
) -> list[Finding]:
    status = settings.status
    findings = []
    names = {status.available: "available", status.consumed: "consumed"}
    not_queued: dict[str, list[int]] = defaultdict(list)
    wrong_group = []
    for item in sorted(set(snapshot.pool_ids)):
        if item in queued:
            if queued[item] != keys.group:
                wrong_group.append(item)
            continue
        state = "gone" if item not in rows else names.get(rows[item][1], f"status {rows[item][1]}")
        not_queued[state].append(item)
    for state, ids in sorted(not_queued.items()):
        danger = {"available": "a fill can queue it again and it is handed out twice",
                  "consumed": "it was served already and is handed out again"}.get(state, "it is handed out anyway")
        findings.append(Finding(
            "error", "not_queued", f"{keys.pool} holds {{count}} items whose rows are {state} in SQL, not queued: {danger}",
            keys.pool_type, keys.group, keys.pool, ids, len(ids), row_state=state,
        ))
    if wrong_group:
        findings.append(Finding(
            "error", "wrong_group", f"{keys.pool} holds {{count}} items whose rows belong to another group",
            keys.pool_type, keys.group, keys.pool, wrong_group, len(wrong_group),
        ))

    acked = _ids(snapshot.acks)
    not_ids = len(snapshot.acks) - len(acked)
    bad_acks = sorted(item for item in acked if item not in queued and (item not in rows or rows[item][1] == status.available))
    flushed = sorted(item for item in acked if item in rows and rows[item][1] == status.consumed)
    if not_ids:
        findings.append(Finding(
            "error", "acks_invalid", f"{keys.acks} holds {{count}} entries that are not ids; "
            "the next flush moves them to the dead-letter list", keys.pool_type, keys.group, keys.acks, count=not_ids,
        ))
    if bad_acks:
        findings.append(Finding(
            "error", "acks_orphaned", f"{keys.acks} holds {{count}} ids whose rows are available or gone in SQL; "
            "a consumer got these items, and a fill can hand them out again",
            keys.pool_type, keys.group, keys.acks, bad_acks, len(bad_acks),
        ))
    if flushed:
        findings.append(Finding(
            "warning", "acks_flushed", f"{keys.acks} still holds {{count}} ids that SQL has as consumed "
            "(a flush stopped before trimming them); the next flush removes them",
            keys.pool_type, keys.group, keys.acks, flushed, len(flushed),
        ))
    return findings


def _check_pool(
    settings: Settings,
    keys: PoolKeys,
    snapshot: PoolSnapshot,
    details: PoolDetails,
    has_queued: bool,
    acks_stuck_after_s: float,
) -> list[Finding]:
    """Check one pool's size, entries, dead letters, acks age, lock and sentinel."""
    findings = []
    size = settings.pools[keys.pool_type].size
    length = len(snapshot.pool_ids) + snapshot.malformed
    if length > size:
        findings.append(Finding(
            "error", "over_size", f"{keys.pool} holds {length} items, above its size {size}",
            keys.pool_type, keys.group, keys.pool, count=length - size,
        ))
    if snapshot.malformed:
        findings.append(Finding(
            "error", "malformed", f"{keys.pool} holds {snapshot.malformed} entries that are not valid items; "
            f"pops move them to {keys.dead}", keys.pool_type, keys.group, keys.pool, count=snapshot.malformed,
        ))
    if details.dead:
        findings.append(Finding(
            "warning", "dead_letters", f"{keys.dead} holds {details.dead} malformed entries set aside from the pool "
            f"or its acks; inspect them (redis-cli LRANGE {keys.dead} 0 -1), then delete the key",
            keys.pool_type, keys.group, keys.dead, count=details.dead,
        ))
    findings.extend(_check_acks_age(keys, details, acks_stuck_after_s))
    if details.lock_owner is not None and details.lock_ttl_ms == -1:
        findings.append(Finding(
            "error", "lock_without_ttl", f"fill lock {keys.lock} of {details.lock_owner} has no TTL and never expires; "
            "remove it with `poolctl locks flush`", keys.pool_type, keys.group, keys.lock,
        ))
    if not snapshot.has_sentinel and has_queued:
        findings.append(Finding(
            "warning", "no_sentinel", f"{keys.sentinel} is missing: Redis lost this pool's state, or poolctl never "
            "filled it; the next fill or `poolctl reconcile --apply` restores its missing items",
            keys.pool_type, keys.group, keys.sentinel,
        ))
    return findings


def _check_acks_age(keys: PoolKeys, details: PoolDetails, acks_stuck_after_s: float) -> list[Finding]:
    if not details.acks or details.acks_since_ms is None:
        return []
    waited_s = time.time() - details.acks_since_ms / 1000
    if waited_s <= acks_stuck_after_s:
        return []
    return [Finding(
        "error", "acks_stuck", f"{keys.acks} holds {details.acks} acks and had no flush for {waited_s:.0f}s; "
        "is `poolctl fill --watch` running and can it reach SQL?", keys.pool_type, keys.group, keys.acks,
        count=details.acks,
    )]


def _check_missing(
    pools: dict[int, PoolKeys],
    snapshots: dict[PoolKeys, PoolSnapshot],
    details: dict[PoolKeys, PoolDetails],
    queued: dict[int, int],
    pool_type: str,
) -> list[Finding]:
    """Find queued rows that are in no pool and no acks list of the pool type."""
    held = set()
    for snapshot in snapshots.values():
        held.update(snapshot.pool_ids)
        held.update(_ids(snapshot.acks))
    missing_by_group: dict[int, list[int]] = defaultdict(list)
    for item, group in queued.items():
        if item not in held:
            missing_by_group[group].append(item)

    findings = []
    for group, ids in sorted(missing_by_group.items()):
        ids.sort()
        keys = pools.get(group)
        if keys is None:
            continue  # a pool with a damaged key: reported as wrong_type
        snapshot = snapshots[keys]
        if details[keys].lock_owner is not None:
            findings.append(Finding(
                "warning", "in_flight", f"{{count}} queued items of {keys.pool} are in no list while "
                f"{details[keys].lock_owner} holds its fill lock; a fill may be about to push them",
                pool_type, group, keys.pool, ids, len(ids),
            ))
            continue
        cause = " (Redis lost them with the pool's state)" if not snapshot.has_sentinel else ""
        findings.append(Finding(
            "error", "missing", f"{{count}} queued items of {keys.pool} are in no pool and no acks list{cause}; "
            "run `poolctl reconcile` to see which are safe to restore, and `--apply` to restore them",
            pool_type, group, keys.pool, ids, len(ids),
        ))
    return findings


def _check_charset(db: Database, pool_type: str, settings: Settings) -> list[Finding]:
    charset = db.text_column(pool_type).charset
    if charset is None or charset.lower() in FULL_UNICODE_CHARSETS:
        return []
    spec = settings.pools[pool_type]
    return [Finding(
        "warning", "charset", f"column {spec.table}.{spec.text_column} uses {charset}, which cannot store 4-byte "
        f"characters (emoji, CJK Extension B); convert it: ALTER TABLE {spec.table} CONVERT TO CHARACTER SET utf8mb4",
        pool_type,
    )]


def _ids(values: Sequence[bytes]) -> list[int]:
    ids = []
    for value in values:
        try:
            ids.append(int(value))
        except ValueError:
            continue
    return ids

