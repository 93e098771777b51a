"""Numbers and names in specs and wire records (issue 10, defects 1 and 6).

Every numeric field of every spec is finite and bounded, so that no value a user can write makes
the capacity model overflow; every wire record is finite, and the limits a state record carries
are never negative. Names (metadata.name, tenants, pool references) are RFC 1123 subdomains.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from capacity.admission import Verdict, decide
from capacity.live import PoolLive
from capacity.tick import tick
from schemas.export import render
from schemas.loader import ConfigError, load_config
from schemas.records import EntitlementState, PoolState, ReplicasReport, RequestEvent
from schemas.specs import (
    MAX_AMOUNT,
    MAX_REPLICAS,
    MAX_SECONDS,
    MAX_TOKEN_WEIGHT,
    MAX_TOKENS,
    MAX_WEIGHT,
    MIN_FRACTION,
    MIN_PER_REPLICA,
    MIN_SECONDS,
    MIN_WEIGHT,
    Entitlement,
    TokenPool,
)
from schemas.wire import BadRecords, decode
from schemas.workload import WorkloadSpec
from tokenpools.cli import app

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"

POOL = """\
apiVersion: tokenpools.dev/v1alpha1
kind: TokenPool
metadata: {name: small}
spec:
  model: m
  perReplica: {throughput: 1000, kv: 10000, concurrency: 10}
  replicas: {min: 1, max: 2}
"""


def entitlement_yaml(weight: str = "1", tenant: str = "t", name: str = "w") -> str:
    return f"""\
apiVersion: tokenpools.dev/v1alpha1
kind: Entitlement
metadata: {{name: {name}}}
spec:
  pool: small
  tenant: {tenant}
  tier: elastic
  weight: {weight}
  burst: {{throughput: 200, kv: 6000, concurrency: 20}}
"""


def entitlement_doc(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"pool": "p", "tenant": "t", "tier": "elastic",
                            "burst": {"throughput": 1, "kv": 1, "concurrency": 1}}
    return {"metadata": {"name": "e"}, "spec": base | spec}


def pool_doc(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": "m", "perReplica": {"throughput": 1000, "kv": 10000, "concurrency": 10}}
    return {"metadata": {"name": "p"}, "spec": base | spec}


def error_of(model: type[BaseModel], doc: dict[str, Any]) -> tuple[str, str]:
    """The one error's location (dotted, camelCase) and message."""
    with pytest.raises(ValidationError) as exc:
        model.model_validate(doc)
    errors = exc.value.errors()
    assert len(errors) == 1, errors
    return ".".join(str(p) for p in errors[0]["loc"]), errors[0]["msg"]


# -- numbers in specs ---------------------------------------------------------------------------------

NON_FINITE = [math.inf, -math.inf, math.nan, "inf", "Infinity", "-inf", "nan", "1e999"]


@pytest.mark.parametrize("value", NON_FINITE)
def test_weight_refuses_every_spelling_of_infinity_and_nan(value: object) -> None:
    loc, msg = error_of(Entitlement, entitlement_doc(weight=value))
    assert loc == "spec.weight"
    assert msg == "Value error, must be a finite number at least 0.001 and at most 1e+06"


# (document builder, path to set, a value just past the bound, the range the message must state)
OUT_OF_RANGE = [
    (entitlement_doc, ("weight",), 1e-300, "at least 0.001 and at most 1e+06"),
    (entitlement_doc, ("weight",), 1e7, "at least 0.001 and at most 1e+06"),
    (entitlement_doc, ("burst", "kv"), 1.1e12, "at least 0 and at most 1e+12"),
    (entitlement_doc, ("burst", "throughput"), 1e308, "at least 0 and at most 1e+12"),
    (entitlement_doc, ("burstWindowSeconds",), 1e-9, "at least 0.001 and at most 1e+07 seconds"),
    (entitlement_doc, ("slo", "ttftSeconds"), math.inf, "at least 0.001 and at most 1e+07 seconds"),
    (pool_doc, ("perReplica", "concurrency"), math.inf, "at least 0 and at most 1e+12"),
    (pool_doc, ("targetUtilisation", "throughput"), 1e-300, "at least 0.01 and at most 1"),
    (pool_doc, ("replicas", "max"), 100_001, "an integer at least 1 and at most 100000"),
    (pool_doc, ("replicas", "max"), "inf", "an integer at least 1 and at most 100000"),
    (pool_doc, ("replicas", "initial"), 10**400, "an integer at least 0 and at most 100000"),
    (pool_doc, ("contextLength",), 10**9, "an integer at least 1 and at most 100000000"),
    (pool_doc, ("tokenWeights", "output"), 1e-300, "at least 0.001 and at most 1000"),
    (pool_doc, ("reclaimBuffer",), 1.0, "at least 0 and less than 1"),
    (pool_doc, ("tickSeconds",), 5e-324, "at least 0.001 and at most 1e+07 seconds"),
    (pool_doc, ("debt", "halfLifeSeconds"), math.nan, "at least 0.001 and at most 1e+07 seconds"),
    (pool_doc, ("debt", "sharpness"), 0, "greater than 0 and at most 10"),
    (pool_doc, ("queue", "maxWaitSeconds"), math.inf, "at least 0 and at most 1e+07 seconds"),
    (pool_doc, ("scaling", "headroom"), math.nan, "at least 0 and at most 10"),
    (pool_doc, ("scaling", "spotBudgetReplicas"), 10**6, "an integer at least 0 and at most 100000"),
    (pool_doc, ("scaling", "forecastHalfLifeSeconds"), 0, "at least 0.001 and at most 1e+07 seconds"),
]


def _set(doc: dict[str, Any], path: tuple[str, ...], value: object) -> dict[str, Any]:
    node = doc["spec"]
    for key in path[:-1]:
        node = node.setdefault(key, {"ttftSeconds": 1} if key == "slo" else {})
    node[path[-1]] = value
    return doc


@pytest.mark.parametrize(("build", "path", "value", "words"), OUT_OF_RANGE,
                         ids=[f"{'.'.join(p)}={v!r}"[:40] for _, p, v, _ in OUT_OF_RANGE])
def test_out_of_range_numbers_are_refused_with_the_range(build, path, value, words) -> None:
    model = Entitlement if build is entitlement_doc else TokenPool
    doc = build()
    if path == ("replicas", "initial"):
        doc["spec"]["replicas"] = {"min": 0, "max": 2}
    loc, msg = error_of(model, _set(doc, path, value))
    assert loc == "spec." + ".".join(path)
    assert words in msg


def test_a_replica_must_serve_something() -> None:
    loc, msg = error_of(TokenPool, pool_doc(perReplica={"throughput": 1000, "kv": 0.5, "concurrency": 10}))
    assert loc == "spec" and "perReplica.kv must be at least 1" in msg


def _number_properties(schema: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every numeric property in a JSON Schema, with where it is."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(schema, dict):
        if schema.get("type") in ("number", "integer") and "const" not in schema:
            found.append((path, schema))
        for key, sub in schema.items():
            found += _number_properties(sub, f"{path}.{key}")
    elif isinstance(schema, list):
        for i, sub in enumerate(schema):
            found += _number_properties(sub, f"{path}[{i}]")
    return found


@pytest.mark.parametrize("kind", ["TokenPool", "Entitlement", "Workload"])
def test_every_number_in_a_spec_has_both_bounds(kind: str) -> None:
    """The JSON Schema is generated from the models, so this covers fields added later too. A
    workload profile's points are checked by the model's validator (tested in tests/sim)."""
    numbers = _number_properties(orjson.loads(render()[f"{kind}.json"]))
    assert numbers
    unbounded = [path for path, s in numbers
                 if ("maximum" not in s and "exclusiveMaximum" not in s)
                 or ("minimum" not in s and "exclusiveMinimum" not in s)]
    unbounded = [p for p in unbounded if ".profile." not in p and "prefixItems" not in p]
    assert not unbounded


def _pool_at_the_bounds(per: float, target: float) -> TokenPool:
    return TokenPool.model_validate({"metadata": {"name": "p"}, "spec": {
        "model": "m", "perReplica": {"throughput": per, "kv": per, "concurrency": per},
        "targetUtilisation": {"throughput": target, "kv": target, "concurrency": target},
        "replicas": {"min": MAX_REPLICAS, "max": MAX_REPLICAS},
        "contextLength": MAX_TOKENS,
        "tokenWeights": {"input": MAX_TOKEN_WEIGHT, "output": MAX_TOKEN_WEIGHT},
        "debt": {"halfLifeSeconds": MAX_SECONDS, "sharpness": 10}, "tickSeconds": MIN_SECONDS,
    }})


def _ent_at_the_bounds(name: str, tier: str, weight: float, guarantee: float) -> Entitlement:
    amounts = {"throughput": MAX_AMOUNT, "kv": MAX_AMOUNT, "concurrency": MAX_AMOUNT}
    g = {k: guarantee for k in amounts}
    return Entitlement.model_validate({"metadata": {"name": name}, "spec": {
        "pool": "p", "tenant": name, "tier": tier, "weight": weight, "guarantee": g, "burst": amounts,
        "burstWindowSeconds": MAX_SECONDS}})


@pytest.mark.parametrize(("per", "target"), [(MAX_AMOUNT, 1.0), (MAX_AMOUNT, MIN_FRACTION),
                                             (MIN_PER_REPLICA, MIN_FRACTION)])
def test_the_bounds_keep_every_tick_finite(per: float, target: float) -> None:
    """The largest and smallest values the specs allow, together: no tick is rejected, every limit,
    debt and bucket stays finite, and a request of the largest size is decided."""
    p = _pool_at_the_bounds(per, target)
    ents = [_ent_at_the_bounds("heavy", "elastic", MAX_WEIGHT, 0),
            _ent_at_the_bounds("light", "elastic", MIN_WEIGHT, 0),
            _ent_at_the_bounds("spot", "spot", MIN_WEIGHT, 0),
            _ent_at_the_bounds("gold", "guaranteed", MAX_WEIGHT, min(MAX_AMOUNT, per * target * MAX_REPLICAS / 2))]
    live = PoolLive(p, ents, now=0.0)
    for e in live.entitlements.values():  # usage and demand far beyond capacity, debt remembered
        e.demand_tp = e.used_tp = MAX_AMOUNT * 1e6
        e.debt = 1e30
    now = 0.0
    for _ in range(5):
        now += MIN_SECONDS
        res = tick(live, now, MIN_SECONDS)
        assert res.rejected is None
        for arr in (res.limits, res.debt, res.effective_weight, res.over_use):
            assert bool(np.isfinite(arr).all())
        for e in live.entitlements.values():
            e.used_tp = e.demand_tp = MAX_AMOUNT * 1e6
    for e in live.entitlements.values():
        assert all(math.isfinite(x) for x in (e.limit_tp, e.limit_kv, e.limit_conc, e.bucket.depth, e.bucket.level))
        cost = live.cost(MAX_TOKENS, MAX_TOKENS, e)
        d = decide(live, e, f"big-{e.name}", cost, now + 1.0)
        assert d.verdict in tuple(Verdict) and math.isfinite(d.retry_after)
        assert cost.throughput <= MAX_AMOUNT  # so a reservation always fits a RequestEvent


# -- config check ---------------------------------------------------------------------------------

@pytest.mark.parametrize("weight", [".inf", '"inf"', "1e999", ".nan", "-.inf", "1e-300"])
def test_config_check_refuses_a_non_finite_weight(tmp_path: Path, weight: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(POOL + "---\n" + entitlement_yaml(weight))
    result = CliRunner().invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert 'document 2 (Entitlement "w"): spec.weight: must be a finite number at least 0.001 and at most 1e+06' \
        in lines[0]


def test_config_check_still_accepts_the_examples_and_demo() -> None:
    for folder in (EXAMPLES, EXAMPLES.parent / "demo"):
        if folder.is_dir() and any(folder.rglob("*.yaml")):
            load_config(folder)


# -- names ---------------------------------------------------------------------------------------

GOOD_NAMES = ["a", "0", "acme-prod", "team.acme", "a-b.c-d.e", "x" * 63, ".".join(["y" * 63] * 3) + "." + "z" * 61]
BAD_NAMES = ["", "a..b", "a.-b", "a-.b", ".a", "a.", "-a", "a-", "Acme", "a_b", "a b", "a\r\nb", "a\nb", "abc\n", "a/b",
             "x" * 64, ".".join(["y" * 63] * 4), "é"]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_rfc1123_names_are_accepted_everywhere(name: str) -> None:
    assert len(GOOD_NAMES[-1]) == 253
    e = Entitlement.model_validate(entitlement_doc(tenant=name, pool=name) | {"metadata": {"name": name}})
    assert (e.name, e.spec.tenant, e.spec.pool) == (name, name, name)


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n)[:20] for n in BAD_NAMES])
@pytest.mark.parametrize("where", ["metadata.name", "spec.tenant", "spec.pool", "pool metadata.name"])
def test_names_that_are_not_rfc1123_are_refused(name: str, where: str) -> None:
    if where == "pool metadata.name":
        model: type[BaseModel] = TokenPool
        doc = pool_doc() | {"metadata": {"name": name}}
        where = "metadata.name"
    else:
        model = Entitlement
        doc = entitlement_doc()
        section, key = where.split(".")
        doc[section][key] = name
    loc, msg = error_of(model, doc)
    assert loc == where
    assert "is not a valid name: use lowercase letters, digits, '-' and '.'" in msg
    assert "1 to 63 characters" in msg and "253" in msg


def test_a_huge_name_is_not_echoed_in_full() -> None:
    _loc, msg = error_of(Entitlement, entitlement_doc(tenant="A" * 1_000_000))
    assert len(msg) < 600 and "AAAA" in msg


@pytest.mark.parametrize("field", ["entitlement", "tenant"])
def test_workload_names_follow_the_same_rule(field: str) -> None:
    tenant = {"entitlement": "e", "arrivals": {"process": "poisson", "rate": 1},
              "prompt": {"meanTokens": 10, "sigma": 0, "maxTokens": 10},
              "output": {"meanTokens": 10, "sigma": 0, "maxTokens": 10}}
    doc = {"pool": "p", "durationSeconds": 10, "tenants": [tenant | {field: "a..b"}]}
    loc, msg = error_of(WorkloadSpec, doc)
    assert loc == f"tenants.0.{field}" and "is not a valid name" in msg


def test_config_check_names_a_tenant_with_crlf(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(POOL + "---\n" + entitlement_yaml(tenant='"t\\r\\nx-injected: 1"'))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    (problem,) = exc.value.problems
    assert problem.field == "spec.tenant" and "is not a valid name" in problem.message


# -- wire records ---------------------------------------------------------------------------------

def _state(**kw: Any) -> dict[str, Any]:
    return {"schema_version": 1, "id": "e", "pool": "p", "tier": "elastic", "seq": 1, "ts": 1.0,
            "limits": {"throughput": 10, "kv": 10, "concurrency": 1}} | kw


def _decoded(model: type[BaseModel], record: dict[str, Any]) -> tuple[object, BadRecords]:
    bad = BadRecords()
    return decode(model, orjson.dumps(record), "t", bad), bad


@pytest.mark.parametrize("record", [
    _state(limits={"throughput": "inf"}),
    _state(limits={"throughput": "nan"}),
    _state(limits={"kv": -1}),
    _state(limits={"concurrency": "-Infinity"}),
    _state(limits={"throughput": 1e13}),
    _state(limits={"throughput": 1e308}),
    _state(admitter_shares={"a1": {"throughput": -5}}),
    _state(admitter_shares={"a1": {"kv": "inf"}}),
    _state(admitter_shares={"a1": {"kv": 1e300}}),
    _state(debt="nan"),
    _state(effective_weight="inf"),
    _state(ts="inf"),
    _state(seq=2**60),
], ids=lambda r: orjson.dumps({k: v for k, v in r.items() if k not in _state()} or r["limits"]).decode()[:40])
def test_a_state_record_with_a_non_finite_or_negative_limit_is_skipped_and_counted(record: dict[str, Any]) -> None:
    state, bad = _decoded(EntitlementState, record)
    assert state is None and bad.counts == {("t", "invalid"): 1}


def test_a_good_state_record_still_decodes() -> None:
    state, bad = _decoded(EntitlementState, _state(admitter_shares={"a1": {"throughput": 5}}, debt=-3.0))
    assert isinstance(state, EntitlementState) and not bad.counts and state.debt == -3.0


@pytest.mark.parametrize(("model", "record"), [
    (PoolState, {"schema_version": 1, "id": "p", "seq": 1, "ts": 1.0, "ready_replicas": 10**6,
                 "capacity": {}, "guarantees": {}}),
    (PoolState, {"schema_version": 1, "id": "p", "seq": 1, "ts": 1.0, "ready_replicas": 1,
                 "capacity": {"kv": "inf"}, "guarantees": {}}),
    (ReplicasReport, {"schema_version": 1, "pool": "p", "ready_replicas": 10**7}),
    (ReplicasReport, {"schema_version": 1, "pool": "p", "ready_replicas": 1, "ts": "nan"}),
    (RequestEvent, {"schema_version": 1, "request_id": "r", "phase": "decision", "outcome": "admitted", "ts": 1.0,
                    "admitter_id": "a", "tenant": "t", "entitlement": "e", "pool": "p", "tier": "spot",
                    "reserved": {"throughput": 1e13}}),
    (RequestEvent, {"schema_version": 1, "request_id": "r", "phase": "decision", "outcome": "admitted", "ts": "inf",
                    "admitter_id": "a", "tenant": "t", "entitlement": "e", "pool": "p", "tier": "spot"}),
    (RequestEvent, {"schema_version": 1, "request_id": "r", "phase": "finish", "outcome": "completed", "ts": 1.0,
                    "admitter_id": "a", "tenant": "t", "entitlement": "e", "pool": "p", "tier": "spot",
                    "latency_s": "nan"}),
])
def test_other_records_with_non_finite_or_unbounded_numbers_are_skipped(model: type[BaseModel],
                                                                        record: dict[str, Any]) -> None:
    decoded, bad = _decoded(model, record)
    assert decoded is None and bad.counts == {("t", "invalid"): 1}
