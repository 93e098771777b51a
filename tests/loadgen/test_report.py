"""The report on synthetic records: percentiles, censoring, outcome counts, throughput, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loadgen import report
from loadgen.runner import CUT, OK, PREEMPTED, REFUSED, TIMEOUT, UNAVAILABLE, LoadResult, Record


def rec(i: int, tier: str = "guaranteed", tenant: str = "acme", outcome: str = OK, stream: bool = True,
        sent: float | None = None, ttft: float | None = None, e2e: float | None = None, ended: float | None = None,
        prompt: int = 100, output: int = 10) -> Record:
    t = float(i)
    sent = t if sent is None else sent
    r = Record(f"{tenant}-{i}", tenant, f"{tenant}-ent", tier, stream, 0, t, prompt, output, 16, sent=sent,
               outcome=outcome, ttft=ttft, e2e=e2e)
    r.ended = ended if ended is not None else sent + (e2e or 0.0)
    if outcome == OK:
        r.prompt_tokens, r.output_tokens, r.status = prompt, output, 200
    return r


def test_percentiles_match_numpy_linear_interpolation() -> None:
    values = [0.1 * k for k in range(1, 101)]  # 0.1 .. 10.0
    records = [rec(i, ttft=v, e2e=2 * v) for i, v in enumerate(values)]
    row = report.summarise(records)["tiers"][0]
    assert row["ttft_p50"] == pytest.approx(5.05)
    assert row["ttft_p95"] == pytest.approx(float(np.percentile(values, 95)))
    assert row["ttft_p99"] == pytest.approx(9.901)
    assert row["e2e_p99"] == pytest.approx(2 * 9.901)
    assert report.pct([], 99) is None
    assert report.pct([3.0], 50) == 3.0


def test_ttft_counts_streams_only_and_censored_waits_as_lower_bounds() -> None:
    records = [
        rec(0, ttft=1.0, e2e=2.0),
        rec(1, ttft=50.0, e2e=60.0, stream=False),  # a whole answer: no first token to time
        rec(2, outcome=CUT, sent=2.0, ended=12.0),  # waited 10 s, still no token: counts as >= 10
        rec(3, outcome=TIMEOUT, sent=3.0, ended=8.0),  # 5 s
        rec(4, outcome=CUT, sent=4.0, ttft=0.5, ended=9.0),  # had its first token: TTFT known
        rec(5, outcome=REFUSED, sent=5.0, ended=5.01),  # refused: no TTFT at all
    ]
    row = report.summarise(records)["tiers"][0]
    sample, censored = report.ttft_sample(records)
    assert sorted(sample) == [0.5, 1.0, 5.0, 10.0]
    assert censored == 2 and row["ttft_censored"] == 2 and row["ttft_streams"] == 4
    assert row["ttft_p50"] == pytest.approx(3.0)
    assert row["e2e_p50"] == pytest.approx(31.0)  # completed ones only, streamed or not


def test_outcome_counts_per_tier_and_tenant_and_throughput() -> None:
    records = [rec(0, ttft=0.1, e2e=1.0, prompt=200, output=20),
               rec(1, ttft=0.1, e2e=1.0, tenant="globex", prompt=100, output=10),
               rec(2, tier="spot", tenant="batch", outcome=REFUSED),
               rec(3, tier="spot", tenant="batch", outcome=REFUSED),
               rec(4, tier="spot", tenant="batch", outcome=UNAVAILABLE),
               rec(5, tier="spot", tenant="batch", outcome=PREEMPTED)]
    records[2].error_code = records[3].error_code = "throughput_exhausted"
    summary = report.summarise(records, span=(0.0, 10.0), weights=(0.5, 1.0))
    tiers = {r["tier"]: r for r in summary["tiers"]}
    assert [r["tier"] for r in summary["tiers"]] == ["guaranteed", "spot"]
    assert tiers["guaranteed"]["ok"] == 2 and tiers["guaranteed"]["refused_429"] == 0
    assert tiers["spot"]["refused_429"] == 2 and tiers["spot"]["unavailable_503"] == 1
    assert tiers["spot"]["preempted"] == 1 and tiers["spot"]["ok"] == 0
    assert tiers["spot"]["error_codes"] == {"throughput_exhausted": 2}
    assert tiers["guaranteed"]["output_tokens_per_s"] == pytest.approx(3.0)  # 30 tokens over 10 s
    assert tiers["guaranteed"]["weighted_tokens_per_s"] == pytest.approx((0.5 * 300 + 30) / 10)
    assert [(r["tenant"], r["requests"]) for r in summary["tenants"]] == [("acme", 1), ("globex", 1), ("batch", 4)]
    assert summary["all"]["requests"] == 6


def test_span_selects_by_scheduled_time_and_throughput_by_completion() -> None:
    records = [rec(i, ttft=0.1, e2e=5.0, output=10) for i in range(10)]  # scheduled 0..9, ended 5..14
    summary = report.summarise(records, span=(0.0, 5.0))
    row = summary["all"]
    assert row["requests"] == 5  # scheduled in [0, 5)
    assert row["output_tokens"] == 0  # none of them completed before 5 s
    later = report.summarise(records, span=(5.0, 10.0))["all"]
    assert later["output_tokens"] == 50  # requests 0..4 completed in [5, 10)


def test_write_outputs_json_markdown_png_and_records(tmp_path: Path) -> None:
    records = [rec(i, ttft=0.1 + i / 100, e2e=1.0) for i in range(30)]
    records += [rec(i, tier="spot", tenant="batch", outcome=REFUSED) for i in range(30, 40)]
    result = LoadResult(records, duration=40.0, wall_seconds=41.0, capped=3, client_cpu_seconds=0.5, urls=["u"])
    summary = report.report(result, weights=(0.5, 1.0))
    table = report.write_outputs(tmp_path, result, summary, "synthetic", meta={"workload": "w"})
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["workload"] == "w" and data["client"]["delayed_by_cap"] == 3
    assert data["client"]["sent"] == 40 and data["client"]["mean_send_rate"] == pytest.approx(1.0)
    assert "| guaranteed | 30 | 30 | 0 |" in table and "| spot | 10 | 0 | 10 |" in table
    assert (tmp_path / "table.md").read_text().startswith("## synthetic: per tier")
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    assert len(lines) == 40 and json.loads(lines[0])["request_id"] == "acme-0"
