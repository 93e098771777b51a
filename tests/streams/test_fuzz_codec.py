"""hypothesis over every Kafka record decoder: arbitrary bytes and mutated valid records.

The consumers (stage 1 on requests, stage 2 on entitlement usage, the config view on config and
replicas, the admitter's replica discovery and state follower) must, for any record value:

- never let an exception escape (a record that raised would stop, then replay, the consumer);
- either apply the record or count it in ``BadRecords`` under a reason;
- never accept a non-finite number: what they store or publish is finite.

Inputs: raw bytes, JSON documents, and valid records with one value replaced (wrong types, huge or
negative numbers, "inf"/"nan" strings, the raw literals ``1e999`` and ``NaN`` spliced into the JSON
text), a key deleted, or the encoded bytes truncated. Bounded and reproducible: ``PROFILE`` fixes
the example count and derandomizes; each test is a few hundred decodes of small records, so the
whole module takes a few seconds.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from admitter.kafka.discovery import ReplicaDiscovery
from admitter.kafka.state_follower import StateFollower
from admitter.upstream.replicas import ReplicaSet
from capacity.live import PoolLive
from schemas.records import EntitlementState, PoolState, ReplicasReport, RequestEvent
from schemas.topics import config_key, config_value
from schemas.wire import BadRecords, decode, decode_request_events, encode
from streams.codec import RawMessage
from streams.config_table import ConfigView
from streams.records import UsageSummary
from streams.store import MemoryStore
from tests.factories import ent, pool
from tests.raw import all_finite
from tests.streams.helpers import decision, finish
from tests.streams.test_allocate import usage_summary
from tests.streams.test_stage1 import make_stage1
from tests.streams.test_stage2_config import Published, make_stage2, view

PROFILE = settings(max_examples=150, derandomize=True, database=None, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

RAW = "\x00raw:"  # a string value starting with this is spliced into the JSON text as a raw literal
SPECIAL = ["inf", "-inf", "nan", "NaN", "Infinity", "-Infinity", "1e999", "", " ", "\x00", "0x10", "1_000"]
RAW_LITERALS = ["1e999", "-1e999", "NaN", "Infinity", "-0", "1e308", "9" * 400]

json_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 1.7976931348623157e308, 5e-324, -0.0, 2.0**63, -1.0]),
    st.text(max_size=12), st.sampled_from(SPECIAL), st.sampled_from([RAW + s for s in RAW_LITERALS]),
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
# What a replaced value is: half the time a way of writing a non-finite or overflowing number (the
# class of fault issue 10 is about), else anything.
NON_FINITE = ["inf", "-inf", "nan", "NaN", "Infinity", "1e999", *(RAW + s for s in RAW_LITERALS), 1e308, -1e308]
replacements = st.one_of(st.sampled_from(NON_FINITE), json_values)


def _dumps(doc: Any) -> bytes:
    """JSON text of ``doc`` with the ``RAW`` markers replaced by their literal (``1e999``, ``NaN``)."""
    import json

    text = json.dumps(doc, ensure_ascii=False, allow_nan=False)
    for literal in RAW_LITERALS:
        text = text.replace(json.dumps(RAW + literal), literal)
    return text.encode("utf-8", "surrogatepass")


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.extend(_paths(v, (*prefix, i)))
    return out


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


@st.composite
def mutated(draw: st.DrawFn, valid: list[dict[str, Any]]) -> bytes:
    """A valid record with one change: a value replaced, a key dropped, or the bytes cut short."""
    doc = orjson.loads(orjson.dumps(draw(st.sampled_from(valid))))  # a deep copy
    paths = [p for p in _paths(doc) if p]
    numbers = [p for p in paths if isinstance(_at(doc, p), int | float) and not isinstance(_at(doc, p), bool)]
    path = draw(st.sampled_from(numbers if numbers and draw(st.booleans()) else paths))
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    how = draw(st.sampled_from(["replace", "replace", "replace", "drop", "truncate"]))
    if how == "drop" and isinstance(parent, dict):
        del parent[path[-1]]
    elif how != "truncate":
        parent[path[-1]] = draw(replacements)
    raw = _dumps(doc)
    if how == "truncate":
        raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    return raw


def records(valid: list[BaseModel | dict[str, Any]]) -> st.SearchStrategy[bytes]:
    docs = [v if isinstance(v, dict) else orjson.loads(encode(v)) for v in valid]
    return st.one_of(st.binary(max_size=200), json_values.map(_dumps), mutated(docs))


def decoded_or_counted(bad: BadRecords, before: int, result: object) -> None:
    if result is None:
        assert bad.total() > before, "a record was neither decoded nor counted as bad"
    else:
        assert bad.total() == before, "a decoded record was also counted as bad"
        assert all_finite(result), f"a non-finite number was accepted: {result!r}"


EVENTS = [decision("e1"), finish("e1"), decision("e1", outcome="refused", refused_dimension="kv", retry_after_s=1.0)]
ENTITLEMENT_STATE = EntitlementState(id="e1", pool="p", tier="elastic", seq=3, ts=100.0,
                                     limits={"throughput": 10.0, "kv": 100.0, "concurrency": 1.0},
                                     admitter_shares={"a1": {"throughput": 5.0, "kv": 50.0, "concurrency": 0.5}})
POOL_STATE = PoolState(id="p", seq=3, ts=100.0, ready_replicas=2, capacity={"throughput": 1.0, "kv": 2.0,
                       "concurrency": 3.0}, guarantees={}, demand={"elastic": {"throughput": 1.0}})
REPLICAS = ReplicasReport(pool="p", ready_replicas=2, ts=100.0, endpoints=["http://10.0.0.1:8000"])
USAGE = usage_summary("e1", (100.0, 1000.0, 1.0), (50.0, 500.0, 0.5), admitters={"a1": (1.0, 2.0, 3.0)})
BATCH = {"schema_version": 1, "type": "request_event_batch",
         "events": [orjson.loads(encode(e)) for e in EVENTS]}

MODELS: list[tuple[type[BaseModel], list[Any]]] = [
    (RequestEvent, EVENTS), (EntitlementState, [ENTITLEMENT_STATE]), (PoolState, [POOL_STATE]),
    (ReplicasReport, [REPLICAS]), (UsageSummary, [USAGE]),
]


@pytest.mark.parametrize(("model", "valid"), MODELS, ids=[m.__name__ for m, _ in MODELS])
def test_decode_any_record(model: type[BaseModel], valid: list[Any]) -> None:
    @PROFILE
    @given(value=records(valid))
    def run(value: bytes) -> None:
        bad = BadRecords()
        decoded_or_counted(bad, 0, decode(model, value, "t", bad))

    run()


@PROFILE
@given(value=records([*EVENTS, BATCH]))
def test_request_events_single_or_batched(value: bytes) -> None:
    bad = BadRecords()
    events, _batched = decode_request_events(value, "requests", bad)
    if not events:
        assert bad.total() > 0, "a record yielded no event and was not counted"
    for ev in events:
        assert all_finite(ev), f"a non-finite number was accepted: {ev!r}"


CONFIG_DOCS = [pool("p"), ent("e1"), ent("g1", tier="guaranteed", guarantee=(10.0, 100.0, 1.0))]


@PROFILE
@given(value=records([orjson.loads(config_value(d)) for d in CONFIG_DOCS]),
       key=st.sampled_from([b"TokenPool/p", b"Entitlement/e1", b"Entitlement/g1", b"x", None]))
def test_config_view_applies_or_counts(value: bytes, key: bytes | None) -> None:
    bad = BadRecords()
    config = ConfigView(bad, "cfg", "rep")
    config.apply_config(key, value)
    if not config.docs:
        assert bad.total() > 0, "a config record was neither applied nor counted"
    for doc in config.docs.values():
        assert all_finite(doc), f"a non-finite number was accepted: {doc!r}"
        assert config_key(doc).encode() == key


@PROFILE
@given(value=records([REPLICAS]), key=st.sampled_from([b"p", b"q", None]))
def test_replicas_reports_apply_or_count(value: bytes, key: bytes | None) -> None:
    bad = BadRecords()
    config = ConfigView(bad, "cfg", "rep")
    config.apply_replicas(key, value)
    assert config.replicas or bad.total() > 0
    for n in config.replicas.values():
        assert isinstance(n, int) and n >= 0
    sets = {"p": ReplicaSet(["http://127.0.0.1:1"])}
    discovery = ReplicaDiscovery("unused:9092", sets)
    discovery.handle(key, value)
    assert discovery.reports or discovery.bad.total() > 0
    for report in discovery.reports.values():
        assert all_finite(report)


def _run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


@PROFILE
@given(values=st.lists(records([*EVENTS, BATCH]), min_size=1, max_size=4))
def test_stage1_never_raises_and_keeps_finite_windows(values: list[bytes]) -> None:
    bad = BadRecords()
    stage = make_stage1(bad=bad)
    messages = [RawMessage(0, i, b"e1", v) for i, v in enumerate(values)]
    _run(lambda: stage.process(messages))
    windows = stage.windows
    assert isinstance(windows, MemoryStore)
    for key in list(windows.data):
        rec = windows.get(key)
        assert rec is not None
        assert all_finite(rec.totals_record()), f"window {key}: {rec.totals_record()!r}"


@PROFILE
@given(values=st.lists(records([USAGE, usage_summary("e2", (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))]),
                       min_size=1, max_size=4))
def test_stage2_never_raises_and_publishes_finite_states(values: list[bytes]) -> None:
    config = view(pool("p"), ent("e1"), ent("e2"))
    published = Published()
    stage = make_stage2(config, published)

    async def go() -> None:
        await stage.process([RawMessage(0, i, b"p", v) for i, v in enumerate(values)])
        await stage.tick("p", 0, now=100.5)

    _run(go)
    for topic, key, value in published.records:
        doc = orjson.loads(value)  # orjson refuses non-finite numbers, and encode writes them as null
        model = EntitlementState if topic == "es" else PoolState
        state = model.model_validate(doc)
        assert all_finite(state), f"{topic}/{key}: {doc}"
        assert "null" not in value.decode() or _nulls_are_optional(doc), f"{topic}/{key}: {value!r}"


def _nulls_are_optional(doc: Any) -> bool:
    """encode() writes a non-finite float as null; only fields that may be null may hold one."""
    return doc.get("desired_replicas", 0) is None or "null" not in orjson.dumps(
        {k: v for k, v in doc.items() if k != "desired_replicas"}).decode()


@pytest.mark.parametrize("where", [("trailing", "start"), ("tumbling", "kv_seconds"), ("totals", "kv_seconds")])
@pytest.mark.parametrize("spelled", ["inf", "-inf", "nan", "Infinity"])
def test_summary_with_a_non_finite_window_is_counted_not_decoded(where: tuple[str, str], spelled: str) -> None:
    """Found by test_decode_any_record[UsageSummary]: the window and totals parts accepted "inf"."""
    doc = orjson.loads(encode(USAGE))
    doc[where[0]][where[1]] = spelled
    bad = BadRecords()
    assert decode(UsageSummary, orjson.dumps(doc), "usage", bad) is None
    assert bad.counts[("usage", "invalid")] == 1


class _Target:
    """What the state follower drives: a pool's live state (``limits_changed`` has nothing to do here)."""

    def __init__(self, live: PoolLive) -> None:
        self.live = live

    def limits_changed(self) -> None:
        pass


async def test_state_follower_applies_or_counts_and_keeps_limits_finite() -> None:
    """The admitter's consumer of the state topics; no broker (``handle`` is fed as the consumer would)."""
    follower = StateFollower("127.0.0.1:1", "a1", initial_wait=0.0, retry_backoff=0.05)
    live = PoolLive(pool("p"), [ent("e1")], now=0.0)
    await follower.start({"p": _Target(live)})
    try:
        @PROFILE
        @given(value=records([ENTITLEMENT_STATE, POOL_STATE]), entitlement_topic=st.booleans())
        def run(value: bytes, entitlement_topic: bool) -> None:
            topic = follower.entitlement_topic if entitlement_topic else follower.pool_topic
            before, applied = follower.bad.total(), sum(follower.records.values())
            follower.handle(topic, b"e1" if entitlement_topic else b"p", value)
            assert follower.bad.total() > before or sum(follower.records.values()) > applied
            e = live.entitlements["e1"]
            for x in (e.limit_tp, e.limit_kv, e.limit_conc, live.cap_tp, live.cap_kv, live.cap_conc):
                assert math.isfinite(x) and x >= 0, (e.limit_tp, e.limit_kv, e.limit_conc, live.cap_tp)

        run()
    finally:
        await follower.stop()
