"""Fixtures every test folder may use.

A real ClickHouse engine (chDB, in-process) for the history tests: chDB opens one data directory per
process, so every test in this pytest process shares one directory (session scope) and gets a
database of its own, migrated from the repo's files. A test that needs a directory of its own runs
the code that opens it in a subprocess.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.history.migrate import migrate
from streams.history.settings import StoreSettings
from streams.history.store import HistoryStore, open_store
from tests.history_store import store_settings_for

_numbers = itertools.count()


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def store_settings(chdb_dir: Path) -> StoreSettings:
    """chDB, or the server ``TOKENPOOLS_TEST_CLICKHOUSE_URL`` names (``tests/history_store.py``)."""
    return store_settings_for(chdb_dir, f"tokenpools_test_{os.getpid()}_{next(_numbers)}")


@pytest.fixture
def store(store_settings: StoreSettings) -> Iterator[HistoryStore]:
    s = open_store(store_settings)
    migrate(s, store_settings)
    yield s
    s.command(f"DROP DATABASE IF EXISTS {store_settings.database}")
    s.close()
