"""Stage 2 never publishes a non-finite limit (issue 10, defect 1).

Summaries that would carry NaN or infinity are refused on decode (``schemas.records``), so these
tests hand stage 2 its inputs directly, as a bug upstream would: the tick is rejected, nothing is
published or persisted, and the rejection is counted on /metrics.
"""

from __future__ import annotations

import math

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas.wire import BadRecords, decode
from streams.allocate import EntitlementInput, PoolTick, allocate_pool
from streams.codec import RawMessage
from streams.records import UsageSummary
from tests.factories import ent, pool
from tests.streams.test_allocate import usage_summary
from tests.streams.test_stage2_config import Published, make_stage2, view

P = pool("p", replicas=1, per=(1000.0, 10000.0, 10.0))


@pytest.mark.parametrize("bad", [math.inf, math.nan, -math.inf])
def test_a_non_finite_input_publishes_nothing_and_keeps_the_debt(bad: float) -> None:
    ents = [ent("a", "elastic"), ent("b", "elastic")]
    prev = PoolTick(seq=4, ts=99.0, debt={"a": 2.5})
    inputs = {"a": EntitlementInput(demand=(bad, 0, 0)), "b": EntitlementInput(demand=(100, 100, 1))}
    out = allocate_pool(P, ents, inputs, prev, 1, now=100.0)
    assert out.rejected == "non_finite_input"
    assert out.entitlements == [] and out.pool is None
    assert out.tick == prev  # the next tick continues from the last good one


def test_finite_inputs_still_publish() -> None:
    ents = [ent("a", "elastic"), ent("b", "elastic")]
    inputs = {"a": EntitlementInput(demand=(2000, 0, 0)), "b": EntitlementInput(demand=(2000, 0, 0))}
    out = allocate_pool(P, ents, inputs, PoolTick(), 1, now=100.0)
    assert out.rejected is None and out.pool is not None
    # Two equal weights, both wanting twice the pool: half of 1000 tok/s each.
    assert [s.limits.throughput for s in out.entitlements] == pytest.approx([500.0, 500.0])


def _metric(text: bytes, name: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            if s.name == name:
                out[s.labels["pool"], s.labels["reason"]] = s.value
    return out


async def test_stage2_counts_a_rejected_tick_and_publishes_nothing() -> None:
    config = view(pool("p"), ent("a", "elastic"), ent("b", "elastic"))
    published = Published()
    stage = make_stage2(config, published)
    good = {"a": EntitlementInput(demand=(100, 100, 1)), "b": EntitlementInput(demand=(100, 100, 1))}
    await stage.tick("p", 0, now=100.0, inputs=good)
    first = list(published.records)
    assert len(first) == 3  # two entitlement states, one pool state
    kept = stage.ticks.get("p")
    assert kept is not None and kept.seq == 1

    bad = {"a": EntitlementInput(usage=(math.nan, 0, 0)), "b": EntitlementInput(demand=(100, 100, 1))}
    out = await stage.tick("p", 0, now=101.0, inputs=bad)
    assert out is not None and out.rejected == "non_finite_input"
    assert published.records == first
    assert stage.ticks.get("p") == kept
    text = stage.metrics.render()
    assert _metric(text, "tokenpools_streams_rejected_ticks_total") == {("p", "non_finite_input"): 1.0}

    await stage.tick("p", 0, now=102.0, inputs=good)
    assert len(published.records) == 6 and stage.ticks.get("p").seq == 2


@pytest.mark.parametrize("value", ["inf", "nan", -1.0])
def test_a_summary_with_a_non_finite_or_negative_demand_is_skipped_on_decode(value: object) -> None:
    record = orjson.loads(usage_summary("a", (1, 1, 1), (1, 1, 1)).model_dump_json())
    record["trailing"]["demand"]["throughput"] = value
    bad = BadRecords()
    assert decode(UsageSummary, orjson.dumps(record), "usage", bad) is None
    assert bad.counts == {("usage", "invalid"): 1}


async def test_stage2_process_counts_such_a_summary() -> None:
    config = view(pool("p"), ent("a", "elastic"))
    stage = make_stage2(config, Published())
    record = orjson.loads(usage_summary("a", (1, 1, 1), (1, 1, 1)).model_dump_json())
    record["admitter_demand"] = {"x": {"throughput": "Infinity"}}
    await stage.process([RawMessage(0, 0, b"p", orjson.dumps(record))])
    assert stage.bad.counts == {("usage", "invalid"): 1}
    assert list(stage.inputs.items()) == []
