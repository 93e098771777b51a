"""What the sink's exactly-once rests on, measured on the real engine (chDB): a block retried with its
token adds nothing to the raw table or to a rollup, and a block that reached the raw table but not a
rollup (a crash between the two) is completed in the rollup by the retry."""

from __future__ import annotations

import time

from schemas.records import Amounts, Outcome, Phase, RequestEvent
from schemas.specs import Tier
from streams.history.migrate import available
from streams.history.rows import Located, request_block
from streams.history.settings import StoreSettings
from streams.history.store import HistoryStore

NOW = float(int(time.time()) - 600)


def block(n: int) -> dict[str, list[object]]:
    events = [RequestEvent(request_id=f"r{i}", phase=Phase.FINISH, outcome=Outcome.COMPLETED, ts=NOW + i,
                           admitter_id="a", tenant="t", entitlement="e", pool="p", tier=Tier.ELASTIC,
                           prompt_tokens=10, output_tokens=i, reserved=Amounts(throughput=1), ttft_s=0.1,
                           latency_s=1.0) for i in range(n)]
    return request_block([(ev, Located("requests", 0, i)) for i, ev in enumerate(events)])


def figures(store: HistoryStore) -> tuple[int, int, int]:
    q = store.query_write_side
    return (int(q("SELECT count() FROM request_events").rows[0][0]),
            int(q("SELECT sum(events) FROM request_rollup_1m").rows[0][0] or 0),
            int(q("SELECT sum(events) FROM request_rollup_1h").rows[0][0] or 0))


def test_a_retried_block_adds_nothing_anywhere(store: HistoryStore) -> None:
    for _ in range(3):
        store.insert("request_events", block(50), token="requests/0/0-49")
    assert figures(store) == (50, 50, 50)


def test_the_token_is_what_deduplicates(store: HistoryStore) -> None:
    """The same rows under another token count again: the check above could fail."""
    store.insert("request_events", block(50), token="requests/0/0-49")
    store.insert("request_events", block(50), token="requests/0/50-99")
    assert figures(store) == (100, 100, 100)


def test_a_retry_completes_a_rollup_the_crash_missed(store: HistoryStore, store_settings: StoreSettings) -> None:
    """Raw table in, minute rollup not (its view missing at the time, as if the process died between the two)."""
    store.command("DROP VIEW request_rollup_1m_mv")
    store.insert("request_events", block(40), token="requests/0/0-39")
    assert figures(store) == (40, 0, 40)
    rollups = next(m for m in available() if m.name == "rollups")
    view = next(s for s in rollups.statements(store_settings) if "MATERIALIZED VIEW" in s)
    store.command(view)
    store.insert("request_events", block(40), token="requests/0/0-39")
    assert figures(store) == (40, 40, 40)


def narrow_figures(store: HistoryStore) -> tuple[int, int]:
    """TTFTs in the latency rollup and finish events in the tenant rollup (0008_narrow_rollups)."""
    q = store.query_write_side
    return (int(q("SELECT sum(ttft_n) FROM latency_rollup_1h").rows[0][0] or 0),
            int(q("SELECT sum(finishes) FROM tenant_rollup_1m").rows[0][0] or 0))


def test_a_retried_block_adds_nothing_to_the_narrow_rollups(store: HistoryStore) -> None:
    for _ in range(3):
        store.insert("request_events", block(50), token="requests/0/0-49")
    assert narrow_figures(store) == (50, 50)
    store.insert("request_events", block(50), token="requests/0/50-99")  # another token counts again
    assert narrow_figures(store) == (100, 100)


def test_a_retry_completes_a_narrow_rollup_the_crash_missed(store: HistoryStore,
                                                            store_settings: StoreSettings) -> None:
    store.command("DROP VIEW tenant_rollup_1m_mv")
    store.insert("request_events", block(40), token="requests/0/0-39")
    assert narrow_figures(store) == (40, 0)
    narrow = next(m for m in available() if m.name == "narrow_rollups")
    view = next(s for s in narrow.statements(store_settings) if "tenant_rollup_1m_mv" in s)
    store.command(view)
    store.insert("request_events", block(40), token="requests/0/0-39")
    assert narrow_figures(store) == (40, 40)
    assert figures(store) == (40, 40, 40)
