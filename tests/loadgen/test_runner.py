"""The load generator against in-process emulated replicas and an in-process admitter (127.0.0.1 only)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from admitter.events import InMemorySink
from admitter.http.app import create_app
from admitter.settings import AdmitterSettings
from loadgen.plan import make_plan, rate_scaled
from loadgen.runner import CUT, OK, REFUSED, LoadOptions, LoadRunner, request_body
from schemas.arrivals import Arrival
from schemas.records import Phase
from tests.loadgen.conftest import KEYS, MODEL, serve, write_config


def options(urls: list[str], plan: Any, **kw: Any) -> LoadOptions:
    return LoadOptions(urls=urls, model=plan.model, keys=KEYS, tiers=plan.tiers, **kw)


def test_request_body_sizes_stream_options_and_hints() -> None:
    a = Arrival(0.0, "acme-3", "acme-prod", "acme", 100, 64, 17, stream=True)
    chat = orjson.loads(request_body(a, "chat", "m", emulator_hints=True))
    assert chat["model"] == "m" and chat["max_tokens"] == 64 and chat["stream"] is True
    assert chat["stream_options"] == {"include_usage": True} and chat["emulator"] == {"output_tokens": 17}
    assert len(chat["messages"][0]["content"]) == (100 - 4) * 4  # the chat template's 4 tokens come on top
    text = orjson.loads(request_body(a, "completions", "m", emulator_hints=False))
    assert len(text["prompt"]) == 400 and "emulator" not in text
    assert request_body(a, "chat", "m", True) == request_body(a, "chat", "m", True)  # same run, same bytes
    plain = orjson.loads(request_body(Arrival(0.0, "x-1", "e", "x", 10, 8, 3), "chat", "m", True))
    assert "stream" not in plain and "stream_options" not in plain


def test_rate_scale_multiplies_rates_and_profiles(config_dir: Path) -> None:
    plan = make_plan([config_dir], "w")
    scaled = rate_scaled(plan.spec, 2.0)
    assert [t.arrivals.rate for t in scaled.tenants] == [30.0, 50.0]
    overload = make_plan([Path(__file__).resolve().parents[2] / "deploy" / "experiments" / "overload-http"])
    profile = rate_scaled(overload.spec, 0.5).tenants[2].arrivals.profile
    assert max(r for _, r in profile) == 18.0


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_sends_every_arrival_with_its_size_round_robin(emulator: Any, config_dir: Path, endpoint: str) -> None:
    plan = make_plan([config_dir], "w")
    runner = LoadRunner(plan.arrivals, options(emulator.urls, plan, endpoint=endpoint), plan.spec.duration_seconds)
    result = await runner.run()
    records = result.records
    assert len(records) == len(plan.arrivals) > 20
    assert all(r.outcome == OK and r.status == 200 for r in records), Counter(r.outcome for r in records)
    for r in records:  # the emulator counts what was sent and generates what the hint says
        assert r.prompt_tokens == r.expected_prompt_tokens, r
        assert r.output_tokens == r.expected_output_tokens, r
        assert r.e2e is not None and r.sent is not None and r.sent >= r.scheduled - 1e-6
        if r.stream:
            assert r.ttft is not None and r.ttft <= r.e2e and r.chunks >= 1
    served = [rep.stats()["requests"] for rep in emulator.replicas]
    assert served == [(len(records) + 1) // 2, len(records) // 2]  # round robin over the two URLs
    assert {r.tier for r in records} == {"guaranteed", "spot"}


async def test_in_flight_cap_delays_sends_and_counts_them(emulator: Any, config_dir: Path) -> None:
    plan = make_plan([config_dir], "w")
    runner = LoadRunner(plan.arrivals, options(emulator.urls, plan, max_in_flight=1), plan.spec.duration_seconds)
    result = await runner.run()
    assert all(r.outcome == OK for r in result.records)
    assert result.capped > 0 and runner.progress.capped == result.capped


async def test_drain_deadline_cuts_what_is_still_running(tmp_path: Path) -> None:
    from sim.server import EmulatorServer

    plan = make_plan([write_config(tmp_path, seconds=0.5, gold_rate=20, spot_rate=1)], "w")
    async with EmulatorServer(1, model=MODEL, speedup=0.01) as slow:  # a step lasts about a second
        runner = LoadRunner(plan.arrivals, options(slow.urls, plan, drain=0.2), plan.spec.duration_seconds)
        result = await runner.run()
    cut = [r for r in result.records if r.outcome == CUT]
    assert cut and all(r.ended is not None and r.e2e is None for r in cut)


async def test_through_the_admitter_keys_and_429s(emulator: Any, config_dir: Path) -> None:
    plan = make_plan([config_dir], "w")
    sink = InMemorySink()
    app = create_app(AdmitterSettings(backends={MODEL: emulator.urls}, admitter_id="loadgen-test"), plan.config,
                     sink=sink)
    served = await serve(app)
    try:
        runner = LoadRunner(plan.arrivals, options([served.url], plan), plan.spec.duration_seconds)
        result = await runner.run()
    finally:
        await served.stop()
    by_tenant: dict[str, Counter[str]] = {}
    for r in result.records:
        by_tenant.setdefault(r.tenant, Counter())[r.outcome] += 1
    assert set(by_tenant["gold"]) == {OK}  # guaranteed, far within its guarantee
    assert by_tenant["spot"][REFUSED] > 0  # a tiny spot burst: most of it is refused
    refused = [r for r in result.records if r.outcome == REFUSED]
    assert all(r.status == 429 and r.error_code and r.error_code.endswith("_exhausted") for r in refused)
    assert all(r.retry_after is not None and r.retry_after >= 1 for r in refused)
    # every request arrived as the entitlement whose key it carried
    decisions = Counter(e.entitlement for e in sink.events if e.phase is Phase.DECISION)
    assert decisions == Counter(r.entitlement for r in result.records)
    assert all(r.server_request_id for r in result.records)
