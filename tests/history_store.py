"""Where the history tests keep their store: chDB by default, a ClickHouse server when one is given.

Set ``TOKENPOOLS_TEST_CLICKHOUSE_URL`` (http://user:password@host:8123) and every history test runs on
that server instead of chDB, each in a database of its own, dropped afterwards: the check that the
schema, the sink and the questions run unchanged on a server. No server can be installed on the CI
machine (Debian's clickhouse-server is 18.16, too old), so CI runs them on chDB.
"""

from __future__ import annotations

import os
from pathlib import Path

from streams.history.settings import StoreSettings

SERVER_ENV = "TOKENPOOLS_TEST_CLICKHOUSE_URL"


def store_settings_for(chdb_dir: Path, database: str) -> StoreSettings:
    server = os.environ.get(SERVER_ENV)
    if server:
        return StoreSettings(url=server, database=database)
    return StoreSettings(data_dir=chdb_dir, database=database)
