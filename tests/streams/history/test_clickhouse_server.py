"""The history on a ClickHouse server, through CLICKHOUSE_URL as an operator would give it.

Needs a server: set ``TOKENPOOLS_TEST_CLICKHOUSE_URL`` (http://user:password@host:8123). None can be
installed on the CI machine (Debian's clickhouse-server is 18.16, too old for this schema), so there
it skips; with the variable set, every other history test also runs on that server
(``tests/history_store.py``).
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from schemas.records import Amounts, Outcome, Phase, RequestEvent
from schemas.specs import Tier
from streams.history.migrate import migrate
from streams.history.rows import Located, request_block
from streams.history.settings import HistorySettings
from streams.history.store import open_store
from tests.history_store import SERVER_ENV

pytestmark = pytest.mark.skipif(not os.environ.get(SERVER_ENV), reason=f"needs a ClickHouse server: set {SERVER_ENV}")


def test_migrate_insert_and_dedup_through_clickhouse_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKHOUSE_URL", os.environ[SERVER_ENV])
    database = f"tokenpools_url_{uuid.uuid4().hex[:8]}"
    settings = HistorySettings(store={"database": database})
    assert not settings.store.embedded
    store = open_store(settings.store)
    try:
        migrate(store, settings.store)
        ev = RequestEvent(request_id="r", phase=Phase.FINISH, outcome=Outcome.COMPLETED, ts=time.time(),
                          admitter_id="a", tenant="t", entitlement="e", pool="p", tier=Tier.ELASTIC,
                          reserved=Amounts(), ttft_s=0.2, latency_s=1.0, output_tokens=3)
        for _ in range(3):
            store.insert("request_events", request_block([(ev, Located("requests", 0, 0))]), token="requests/0/0-0")
        assert store.scalar("SELECT count() FROM request_events") == 1
        assert store.scalar("SELECT sum(events) FROM request_rollup_1m") == 1
        assert store.scalar("SELECT sum(events) FROM request_rollup_1h") == 1
    finally:
        store.command(f"DROP DATABASE IF EXISTS {database}")
        store.close()
