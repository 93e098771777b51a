"""Seeded workloads: reproducible, independent per tenant, statistically what the spec says.

Statistical checks use tolerances of 5 standard deviations (a false failure about once in
1.7 million runs), with the standard deviation computed from the sample or the Poisson count.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from schemas.arrivals import Arrival, generate_arrival_batch, generate_arrivals, prompt_text
from schemas.workload import OnOffArrivals, WorkloadSpec
from sim.workload import expected_arrivals, expected_length, offered_load

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
Z = 5.0


def tenant(entitlement: str, arrivals: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "entitlement": entitlement,
        "arrivals": arrivals,
        "prompt": {"meanTokens": 600, "sigma": 0.8, "minTokens": 4, "maxTokens": 4096},
        "output": {"meanTokens": 200, "sigma": 0.7, "maxTokens": 1024},
        "maxTokens": 512,
        **extra,
    }


def workload(*tenants: dict[str, Any], duration: float = 600, seed: int | None = 7) -> WorkloadSpec:
    return WorkloadSpec.model_validate(
        {"pool": "llama-3-8b", "durationSeconds": duration, "seed": seed, "tenants": list(tenants)}
    )


def poisson(rate: float) -> dict[str, Any]:
    return {"process": "poisson", "rate": rate}


def columns(arrivals: list[Arrival]) -> list[tuple[Any, ...]]:
    return [dataclasses.astuple(a) for a in arrivals]


def of_tenant(arrivals: list[Arrival], label: str) -> list[tuple[Any, ...]]:
    return columns([a for a in arrivals if a.tenant == label])


SMALL = workload(
    tenant("acme-prod", poisson(20)),
    tenant("batchco-spot", {"process": "poisson", "profile": [[0, 0], [30, 40], [60, 0]]}),
    tenant("bursty", {"process": "onoff", "rate": 30, "onSeconds": 5, "offSeconds": 10}, stream=True),
    duration=60,
)


# --- reproducibility ------------------------------------------------------------------------------


def test_same_seed_gives_identical_arrivals() -> None:
    first, second = generate_arrivals(SMALL), generate_arrivals(SMALL)
    assert len(first) > 1000
    assert columns(first) == columns(second)


def test_different_seed_gives_different_arrivals() -> None:
    base = generate_arrivals(SMALL)
    other = generate_arrivals(SMALL, seed=8)
    assert [a.t for a in base] != [a.t for a in other]
    assert [a.prompt_tokens for a in base[:100]] != [a.prompt_tokens for a in other[:100]]


def test_seed_argument_overrides_spec_and_missing_seed_is_zero() -> None:
    unseeded = SMALL.model_copy(update={"seed": None})
    assert columns(generate_arrivals(SMALL, seed=3)) == columns(generate_arrivals(unseeded, seed=3))
    assert columns(generate_arrivals(unseeded)) == columns(generate_arrivals(SMALL, seed=0))


@pytest.mark.parametrize("where", ["append", "prepend"])
def test_adding_a_tenant_does_not_change_the_others(where: str) -> None:
    base = SMALL.model_dump(by_alias=True)
    extra = tenant("globex-prod", poisson(50))
    bigger = copy.deepcopy(base)
    bigger["tenants"] = [*base["tenants"], extra] if where == "append" else [extra, *base["tenants"]]
    before, after = generate_arrivals(SMALL), generate_arrivals(WorkloadSpec.model_validate(bigger))
    for label in ("acme-prod", "batchco-spot", "bursty"):
        assert of_tenant(before, label) == of_tenant(after, label)
    assert of_tenant(after, "globex-prod")


def test_shorter_duration_gives_a_prefix_of_the_longer_run() -> None:
    full = generate_arrivals(SMALL)
    head = generate_arrivals(SMALL, duration=25)
    assert head and all(a.t < 25 for a in head)
    assert columns(head) == columns([a for a in full if a.t < 25])


# --- shape of the output ----------------------------------------------------------------------------


def test_arrivals_are_sorted_frozen_and_ids_count_per_tenant() -> None:
    arrivals = generate_arrivals(SMALL)
    times = [a.t for a in arrivals]
    assert times == sorted(times)
    assert all(0 <= t < 60 for t in times)
    for label in ("acme-prod", "batchco-spot", "bursty"):
        ids = [a.request_id for a in arrivals if a.tenant == label]
        assert ids == [f"{label}-{i}" for i in range(len(ids))]
    assert {a.stream for a in arrivals if a.tenant == "bursty"} == {True}
    with pytest.raises(dataclasses.FrozenInstanceError):
        arrivals[0].t = 1.0  # type: ignore[misc]
    assert not hasattr(arrivals[0], "__dict__")


def test_batch_and_objects_agree() -> None:
    batch = generate_arrival_batch(SMALL)
    arrivals = generate_arrivals(SMALL)
    assert len(batch) == len(arrivals)
    assert [batch.arrival(i) for i in (0, len(batch) // 2, len(batch) - 1)] == [
        arrivals[0], arrivals[len(arrivals) // 2], arrivals[-1]
    ]
    with pytest.raises(ValueError):
        batch.t[0] = 1.0


def test_output_tokens_never_exceed_max_tokens_and_lengths_stay_in_bounds() -> None:
    spec = workload(
        tenant("acme-prod", poisson(200), maxTokens=100),
        tenant(
            "globex-prod", poisson(200),
            output={"meanTokens": 200, "sigma": 1.2, "maxTokens": 300}, maxTokens=None,
        ),
    )
    batch = generate_arrival_batch(spec)
    assert np.all(batch.output_tokens <= batch.max_tokens)
    assert np.all(batch.output_tokens >= 1)
    assert np.all((batch.prompt_tokens >= 4) & (batch.prompt_tokens <= 4096))
    acme, globex = batch.of_tenant("acme-prod"), batch.of_tenant("globex-prod")
    assert set(batch.max_tokens[acme].tolist()) == {100}
    assert np.any(batch.output_tokens[acme] == 100)  # the cap binds often at mean 200
    assert set(batch.max_tokens[globex].tolist()) == {300}  # defaults to output.maxTokens


# --- statistics -----------------------------------------------------------------------------------


def assert_count_close(observed: int, expected: float) -> None:
    """A Poisson count: standard deviation sqrt(expected)."""
    assert abs(observed - expected) <= Z * math.sqrt(expected) + 1, (observed, expected)


def assert_mean_close(sample: np.ndarray, expected: float) -> None:
    """Sample mean within 5 standard errors; +0.5 for rounding lengths to whole tokens."""
    stderr = float(np.std(sample)) / math.sqrt(sample.size)
    assert abs(float(np.mean(sample)) - expected) <= Z * stderr + 0.5, (float(np.mean(sample)), expected)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rates_and_lengths_match_the_spec(seed: int) -> None:
    spec = workload(
        tenant("acme-prod", poisson(150)),
        tenant(
            "batchco-spot",
            {"process": "poisson", "profile": [[0, 0], [100, 300], [400, 300], [500, 0]]},
            prompt={"meanTokens": 1500, "sigma": 1.0, "minTokens": 16, "maxTokens": 6000},
            output={"meanTokens": 40, "sigma": 0.3, "minTokens": 10, "maxTokens": 80},
            maxTokens=None,
        ),
        tenant(
            "bursty", {"process": "onoff", "rate": 200, "onSeconds": 7, "offSeconds": 13}, start=50, end=550
        ),
        seed=seed,
    )
    batch = generate_arrival_batch(spec)
    load = offered_load(spec)
    for label in batch.tenants:
        mask = batch.of_tenant(label)
        assert_count_close(int(mask.sum()), load[label]["requests"])
        assert_mean_close(batch.prompt_tokens[mask], load[label]["prompt_tokens"])
        assert_mean_close(batch.output_tokens[mask], load[label]["output_tokens"])


def test_offered_load_numbers() -> None:
    spec = workload(
        tenant("acme-prod", poisson(10), start=100, end=400),
        tenant("batchco-spot", {"process": "poisson", "profile": [[100, 0], [200, 60], [300, 60], [400, 0]]}),
        tenant("bursty", {"process": "onoff", "rate": 20, "onSeconds": 10, "offSeconds": 30}),
        duration=600,
    )
    load = offered_load(spec)
    assert load["acme-prod"]["requests"] == pytest.approx(3000)
    assert load["acme-prod"]["rate"] == pytest.approx(5)
    assert load["batchco-spot"]["requests"] == pytest.approx(60 * 200)  # trapezoid: 3000 + 6000 + 3000
    assert load["batchco-spot"]["peak_rate"] == 60
    assert load["bursty"]["requests"] == pytest.approx(20 * 10 * 15)  # 15 cycles of 40 s
    assert load["acme-prod"]["output_tokens_per_s"] == pytest.approx(5 * load["acme-prod"]["output_tokens"])
    assert offered_load(spec, duration=250)["batchco-spot"]["requests"] == pytest.approx(3000 + 3000)


def test_expected_length_of_a_clipped_lognormal() -> None:
    spec = workload(tenant("acme-prod", poisson(1)))
    output = spec.tenants[0].output
    unclipped = output.model_copy(update={"max_tokens": 10**9, "min_tokens": 1})
    assert expected_length(unclipped) == pytest.approx(200, rel=1e-6)
    assert expected_length(output, cap=512) < expected_length(output) < 200
    constant = output.model_copy(update={"sigma": 0.0})
    assert expected_length(constant, cap=150) == 150


def test_ramp_has_more_arrivals_where_the_rate_is_higher() -> None:
    spec = workload(tenant("batchco-spot", {"process": "poisson", "profile": [[0, 0], [100, 400], [200, 0]]}),
                    duration=200)
    t = generate_arrival_batch(spec).t
    counts, _ = np.histogram(t, bins=np.arange(0, 201, 20))
    assert np.all(np.diff(counts[:5]) > 0), counts  # rising: expected steps of 1600 per bin
    assert np.all(np.diff(counts[5:]) < 0), counts  # falling
    assert counts[0] < counts[4] / 5
    assert not np.any(t < 0)


def test_onoff_sends_nothing_in_off_periods() -> None:
    arrivals = {"process": "onoff", "rate": 100, "onSeconds": 3, "offSeconds": 7}
    spec = workload(tenant("bursty", arrivals, start=15, end=415))
    t = generate_arrival_batch(spec).t
    phase = np.mod(t - 15, 10)
    assert t.size > 10000
    assert np.all(phase < 3)
    assert t.min() >= 15 and t.max() < 415
    # every on period is used: with 300 expected arrivals each, none is empty
    assert len(np.unique(np.floor((t - 15) / 10))) == 40
    assert isinstance(spec.tenants[0].arrivals, OnOffArrivals)
    assert expected_arrivals(spec.tenants[0], 600) == pytest.approx(100 * 3 * 40)


def test_window_restricts_activity() -> None:
    spec = workload(tenant("acme-prod", poisson(50), start=100, end=200), tenant("globex-prod", poisson(50)))
    batch = generate_arrival_batch(spec)
    acme = batch.t[batch.of_tenant("acme-prod")]
    assert acme.min() >= 100 and acme.max() < 200
    assert batch.t[batch.of_tenant("globex-prod")].max() > 500


def test_zero_rate_tenant_sends_nothing() -> None:
    spec = workload(tenant("acme-prod", poisson(0)), tenant("globex-prod", poisson(1)))
    batch = generate_arrival_batch(spec)
    assert not np.any(batch.of_tenant("acme-prod"))


# --- prompt text --------------------------------------------------------------------------------------


def test_prompt_text_is_deterministic_and_sized() -> None:
    text = prompt_text(600, 42)
    assert len(text.encode()) == 2400 and text.isascii()
    assert text == prompt_text(600, 42)
    assert text != prompt_text(600, 43)
    assert prompt_text(100, "acme-prod-17") == prompt_text(100, "acme-prod-17")
    assert prompt_text(100, "acme-prod-17") != prompt_text(100, "acme-prod-18")
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    assert prompt_text(50, rng_a) == prompt_text(50, rng_b)
    assert prompt_text(0, 1) == ""
    assert len(text.split()) > 300  # words, not one long token


# --- validation -----------------------------------------------------------------------------------


def _spec_dict() -> dict[str, Any]:
    return {
        "pool": "llama-3-8b",
        "durationSeconds": 600,
        "tenants": [tenant("acme-prod", poisson(10))],
    }


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node: Any = doc
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[keys[-1]] = value
    return doc


BAD_SPECS = [
    # (path to set, value, field that must be named, words the message must contain)
    ("tenants.0.arrivals.rate", -1, "rate", "at least 0 and at most 1e+06 requests per second"),
    ("tenants.0.arrivals.rate", "inf", "rate", "must be a finite number at least 0"),
    ("tenants.0.arrivals", {"process": "poisson", "profile": [[0, 1], [60, float("inf")]]}, "profile", "finite"),
    ("tenants.0.arrivals", {"process": "poisson", "profile": [[0, 1], [60, 5], [30, 2]]}, "profile",
     "strictly increasing"),
    ("tenants.0.arrivals", {"process": "poisson", "profile": [[0, 1], [60, -5]]}, "profile",
     "rate must be a finite number at least 0 and at most 1e+06"),
    ("tenants.0.arrivals", {"process": "poisson", "rate": 1, "profile": [[0, 1]]}, "arrivals", "exactly one"),
    ("tenants.0.arrivals", {"process": "poisson"}, "arrivals", "exactly one"),
    ("tenants.0.arrivals", {"process": "gamma", "rate": 1}, "arrivals", "does not match"),
    ("tenants.0.arrivals", {"process": "onoff", "rate": 5, "onSeconds": 0, "offSeconds": 5}, "onSeconds",
     "at least 0.001 and at most 1e+07 seconds"),
    ("tenants.0.prompt", {"meanTokens": 600, "sigma": 0.8, "minTokens": 900, "maxTokens": 800}, "prompt",
     "minTokens (900) is greater than maxTokens (800)"),
    ("tenants.0.prompt", {"meanTokens": 6000, "sigma": 0.8, "maxTokens": 800}, "prompt", "meanTokens"),
    ("tenants.0.output.sigma", -0.1, "sigma", "at least 0 and at most 3"),
    ("tenants.0.output.meanTokens", float("nan"), "meanTokens", "finite"),
    ("tenants.0.output.meanTok", 3, "meanTok", "Extra inputs are not permitted"),
    ("tenants.0.maxTokens", 0, "maxTokens", "must be an integer at least 1 and at most 100000000"),
    ("tenants.0.maxTokens", 10**30, "maxTokens", "must be an integer at least 1 and at most 100000000"),
    ("tenants.0.entitlement", "Acme_Prod", "entitlement", "lowercase"),
    ("tenants.0.end", 0, "tenants.0", "end (0) must be after start (0)"),
    ("tenants.0.start", 700, "tenants", "starts at 700 s, not before durationSeconds"),
    ("durationSeconds", 0, "durationSeconds", "at least 0.001 and at most 1e+07 seconds"),
    ("durationSeconds", 1e999, "durationSeconds", "must be a finite number"),
    ("seed", -3, "seed", "must be an integer at least 0 and at most 9223372036854775807"),
    ("tenants", [], "tenants", "at least 1"),
]


@pytest.mark.parametrize(
    ("path", "value", "field", "words"), BAD_SPECS, ids=[f"{b[0]}:{b[3]}" for b in BAD_SPECS]
)
def test_bad_specs_name_the_field_and_the_fix(path: str, value: Any, field: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        WorkloadSpec.model_validate(_set(_spec_dict(), path, value))
    errors = info.value.errors()
    locs = [".".join(str(p) for p in e["loc"]) for e in errors]
    assert any(field in loc for loc in locs), locs
    assert any(words in e["msg"] for e in errors), [e["msg"] for e in errors]


def test_max_tokens_below_output_minimum_is_refused() -> None:
    doc = _spec_dict()
    doc["tenants"][0]["output"]["minTokens"] = 50
    doc["tenants"][0]["maxTokens"] = 20
    with pytest.raises(ValidationError, match=r"maxTokens \(20\) is below output.minTokens \(50\)"):
        WorkloadSpec.model_validate(doc)


def test_duplicate_tenant_labels_are_refused() -> None:
    doc = _spec_dict()
    doc["tenants"].append(tenant("acme-prod", poisson(5)))
    with pytest.raises(ValidationError, match="both labelled 'acme-prod'"):
        WorkloadSpec.model_validate(doc)
    doc["tenants"][1]["tenant"] = "acme-batch"  # a second label on the same entitlement is fine
    assert [t.label for t in WorkloadSpec.model_validate(doc).tenants] == ["acme-prod", "acme-batch"]


def test_snake_case_names_and_round_trip() -> None:
    spec = WorkloadSpec(
        pool="p", duration_seconds=10, tenants=[WorkloadSpec.model_validate(_spec_dict()).tenants[0]]
    )
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert "durationSeconds" in dumped and "meanTokens" in dumped["tenants"][0]["prompt"]
    assert WorkloadSpec.model_validate(dumped) == spec


# --- example configs --------------------------------------------------------------------------------


def load_workloads(path: Path) -> dict[str, WorkloadSpec]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert all(d.get("apiVersion") == "tokenpools.dev/v1alpha1" for d in docs)
    return {
        d["metadata"]["name"]: WorkloadSpec.model_validate(d["spec"]) for d in docs if d["kind"] == "Workload"
    }


def pool_capacity(name: str) -> float:
    """Sellable throughput (weighted tokens/s) of a pool in deploy/examples, at its initial replicas."""
    for file in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(file.read_text()):
            if doc and doc.get("kind") == "TokenPool" and doc["metadata"]["name"] == name:
                spec = doc["spec"]
                replicas = spec["replicas"].get("initial", spec["replicas"]["min"])
                target = spec.get("targetUtilisation", {}).get("throughput", 0.9)
                return float(spec["perReplica"]["throughput"]) * target * replicas
    pytest.skip(f"pool {name} is not defined in {EXAMPLES}")


def weighted(load: dict[str, float], rate: float) -> float:
    """Throughput units the pool example uses: 0.5 x prompt + 1.0 x output tokens."""
    return rate * (0.5 * load["prompt_tokens"] + load["output_tokens"])


@pytest.mark.parametrize("name", ["overload.yaml", "fairness.yaml"])
def test_example_workloads_parse_and_generate(name: str) -> None:
    workloads = load_workloads(EXAMPLES / "workloads" / name)
    assert workloads
    for spec in workloads.values():
        assert spec.pool == "llama-3-8b"
        assert len(generate_arrival_batch(spec, duration=30)) > 100


def test_overload_example_is_sized_as_documented() -> None:
    (spec,) = load_workloads(EXAMPLES / "workloads" / "overload.yaml").values()
    capacity = pool_capacity(spec.pool)
    load = offered_load(spec)
    guaranteed = [t.label for t in spec.tenants if t.entitlement != "batchco-spot"]
    share = sum(weighted(load[g], load[g]["rate"]) for g in guaranteed) / capacity
    assert 0.45 <= share <= 0.65, share
    spot = load[next(t.label for t in spec.tenants if t.entitlement == "batchco-spot")]
    assert weighted(spot, spot["peak_rate"]) >= 3 * capacity
    profile = next(t for t in spec.tenants if t.entitlement == "batchco-spot").arrivals.profile
    assert profile is not None and profile[0][1] == 0 and profile[-1][1] == 0


def test_fairness_example_is_sized_as_documented() -> None:
    (spec,) = load_workloads(EXAMPLES / "workloads" / "fairness.yaml").values()
    capacity = pool_capacity(spec.pool)
    load = offered_load(spec)
    together = sum(weighted(load[t.label], t.arrivals.peak_rate) for t in spec.tenants)
    assert together >= 2 * capacity
    first = [t.entitlement for t in spec.tenants if t.start == 0]
    assert first == ["tenant-c-batch"]
    entitlements = {t.entitlement for t in spec.tenants}
    assert entitlements == {"tenant-a-interactive", "tenant-b-standard", "tenant-c-batch"}
