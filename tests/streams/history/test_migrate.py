"""Migrations on real ClickHouse (chDB): applied once, recorded, checked, retention reconciled."""

from __future__ import annotations

import pytest

from streams.history import migrate as migrate_mod
from streams.history.migrate import MigrationError, available, migrate
from streams.history.settings import StoreSettings
from streams.history.store import HistoryStore


def test_second_run_applies_nothing(store: HistoryStore, store_settings: StoreSettings) -> None:
    again = migrate(store, store_settings)
    assert again.applied == []
    assert len(again.already) == len(available())
    recorded = store.query("SELECT count(), uniqExact(version) FROM schema_migrations").rows[0]
    assert recorded == (len(available()), len(available()))


def test_every_table_sets_the_dedup_window(store: HistoryStore, store_settings: StoreSettings) -> None:
    """A table without the window would count a retried block again (DESIGN.md section 6)."""
    rows = store.query(
        "SELECT name, engine_full FROM system.tables WHERE database = currentDatabase() AND engine LIKE '%MergeTree'"
    ).rows
    assert len(rows) >= 10
    missing = [name for name, engine in rows if name != "schema_migrations"
               and f"non_replicated_deduplication_window = {store_settings.dedup_window}" not in engine]
    assert missing == []


def test_edited_migration_is_refused(store: HistoryStore, store_settings: StoreSettings,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = available()
    edited = [migrate_mod.Migration(m.version, m.name, m.text + "\n-- edited\n") if m.version == 1 else m
              for m in real]
    monkeypatch.setattr(migrate_mod, "available", lambda: edited)
    with pytest.raises(MigrationError, match="0001_request_events changed after it was applied"):
        migrate(store, store_settings)


def test_retention_is_reconciled(store: HistoryStore, store_settings: StoreSettings) -> None:
    changed = store_settings.model_copy(update={"retention_days": 7})
    migrate(store, changed)
    engine = store.query("SELECT engine_full FROM system.tables WHERE database = currentDatabase() "
                         "AND name = 'request_events'").rows[0][0]
    assert "toIntervalDay(7)" in engine
