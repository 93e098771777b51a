"""Rows from records: each block names exactly the columns of its table, in the table's order."""

from __future__ import annotations

import time

import pytest

from schemas.records import Amounts, EntitlementState, Outcome, Phase, PoolState, ReplicasReport, RequestEvent
from schemas.specs import Tier
from streams.history import rows
from streams.history.rows import REQUEST_COLUMNS, Located
from streams.history.store import HistoryStore

NOW = time.time()
HERE = Located("t", 0, 5, int(NOW * 1000))


def table_columns(store: HistoryStore, table: str) -> list[str]:
    return [r[0] for r in store.query(
        "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {t:String} ORDER BY position",
        {"t": table}).rows]


def finish() -> RequestEvent:
    return RequestEvent(request_id="r", phase=Phase.FINISH, outcome=Outcome.COMPLETED, ts=NOW, admitter_id="a",
                        tenant="t", entitlement="e", pool="p", tier=Tier.SPOT, prompt_tokens=7, output_tokens=5,
                        reserved=Amounts(kv=0, concurrency=0), ttft_s=0.5, latency_s=1.3)


def test_request_block_is_the_table(store: HistoryStore) -> None:
    block = rows.request_block([(finish(), HERE)])
    assert list(block) == list(REQUEST_COLUMNS) == table_columns(store, "request_events")


@pytest.mark.parametrize("table, block", [
    ("entitlement_state", lambda: rows.entitlement_state_block([(EntitlementState(
        id="e", pool="p", tier=Tier.ELASTIC, seq=1, ts=NOW, limits=Amounts()), HERE)])),
    ("pool_state", lambda: rows.pool_state_blocks([(PoolState(
        id="p", seq=1, ts=NOW, ready_replicas=1, capacity=Amounts(), guarantees=Amounts(),
        demand={Tier.SPOT: Amounts()}), HERE)]).pools),
    ("pool_tier_state", lambda: rows.pool_state_blocks([(PoolState(
        id="p", seq=1, ts=NOW, ready_replicas=1, capacity=Amounts(), guarantees=Amounts(),
        demand={Tier.SPOT: Amounts()}), HERE)]).tiers),
    ("replicas", lambda: rows.replicas_block([(ReplicasReport(pool="p", ready_replicas=2), HERE)])),
])
def test_state_blocks_are_their_tables(store: HistoryStore, table: str, block: object) -> None:
    assert list(block()) == table_columns(store, table)  # type: ignore[operator]


def test_held_resources_as_the_pipeline_integrates_them() -> None:
    """No KV reserved: the tokens held; no sequences reserved: one (streams.windows does the same)."""
    block = rows.request_block([(finish(), HERE)])
    assert block["kv_seconds"] == [pytest.approx(12 * 1.3)]
    assert block["seq_seconds"] == [pytest.approx(1.3)]
    assert block["tpot_s"] == [pytest.approx(0.8 / 4)]
    assert block["ts"] == [round(NOW * 1000)]
