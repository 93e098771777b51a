"""Numbered schema migrations, applied once each and recorded in ``schema_migrations``.

The files are ``schemas/clickhouse/NNNN_name.sql`` (package data): statements separated by ``;`` at a
line end, with ``$retention_days`` and ``$dedup_window`` filled from the store settings (integers
bounded by the settings model, so substituting them is not an injection path; DDL takes no query
parameters). A migration is recorded with the SHA-256 of its file *before* substitution, so changing
the retention does not look like an edited migration. Editing an applied migration is refused: add
a new one. Retention is reconciled on every run (``ALTER TABLE ... MODIFY TTL``) so a changed
``retention_days`` takes effect without a migration.

Every statement is idempotent (``IF NOT EXISTS``), so a run interrupted between a statement and its
record is finished by the next one.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from importlib import resources
from string import Template

from streams.history.settings import StoreSettings
from streams.history.store import HistoryStore

log = logging.getLogger("tokenpools.history.migrate")

MIGRATIONS_TABLE = "schema_migrations"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Tables whose rows expire after retention_days, and the column their TTL reads.
TTL_TABLES: dict[str, str] = {
    "request_events": "toDateTime(ts)", "entitlement_state": "toDateTime(ts)", "pool_state": "toDateTime(ts)",
    "pool_tier_state": "toDateTime(ts)", "replicas": "toDateTime(ts)", "dead_letters": "toDateTime(received_at)",
    "request_rollup_1m": "minute", "request_rollup_1h": "hour", "pipeline_windows": "toDateTime(window_start)",
    "latency_rollup_1h": "hour", "tenant_rollup_1m": "minute",
}


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def statements(self, settings: StoreSettings) -> list[str]:
        rendered = Template(self.text).substitute(
            retention_days=int(settings.retention_days), dedup_window=int(settings.dedup_window))
        out = []
        for chunk in re.split(r";\s*$", rendered, flags=re.MULTILINE):
            body = "\n".join(line for line in chunk.splitlines() if not line.strip().startswith("--")).strip()
            if body:
                out.append(body)
        return out


def available() -> list[Migration]:
    """Every migration file, in version order (a gap or a repeated number is a packaging bug)."""
    found: list[Migration] = []
    for entry in resources.files("schemas.clickhouse").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


@dataclass(frozen=True, slots=True)
class MigrateReport:
    applied: list[str]
    already: list[str]


class MigrationError(Exception):
    pass


def migrate(store: HistoryStore, settings: StoreSettings) -> MigrateReport:
    """Apply what is not applied yet, check what is, and set every table's retention."""
    store.command(
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version UInt32, name String, checksum String, "
        "applied_at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY version")
    rows = store.query_write_side(f"SELECT version, name, checksum FROM {MIGRATIONS_TABLE} ORDER BY version").rows
    recorded = {int(v): (str(n), str(c)) for v, n, c in rows}
    applied, already = [], []
    for m in available():
        label = f"{m.version:04d}_{m.name}"
        if m.version in recorded:
            _, checksum = recorded[m.version]
            if checksum != m.checksum:
                raise MigrationError(f"migration {label} changed after it was applied; put the change in a new "
                                     "migration instead of editing this one")
            already.append(label)
            continue
        for statement in m.statements(settings):
            store.command(statement)
        store.insert(MIGRATIONS_TABLE, {"version": [m.version], "name": [m.name], "checksum": [m.checksum],
                                        "applied_at": [int(time.time() * 1000)]}, token=f"migration/{m.version}")
        log.info("applied migration %s", label)
        applied.append(label)
    unknown = sorted(set(recorded) - {m.version for m in available()})
    if unknown:
        raise MigrationError(f"the store has migrations this version does not know ({unknown}); "
                             "it was migrated by a newer tokenpools")
    if already:  # tables created just now already carry this retention in their DDL
        set_retention(store, settings.retention_days)
    return MigrateReport(applied, already)


def set_retention(store: HistoryStore, days: int) -> None:
    """Every expiring table keeps ``days`` days (whole day parts dropped; existing parts not rewritten)."""
    for table, column in TTL_TABLES.items():
        store.command(f"ALTER TABLE {table} MODIFY TTL {column} + toIntervalDay({int(days)}) "
                      "SETTINGS materialize_ttl_after_modify = 0")
