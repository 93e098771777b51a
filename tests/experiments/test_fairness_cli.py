"""`tokenpools experiment fairness --config DIR --workload NAME`: any config, bad input in one line (exit 2).

The config is written in tmp_path: the example pool, two elastic tenants (weights 1 and 3) and a
guaranteed one, and a 20 s workload (run with --duration 20 so the run stays short).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokenpools.cli import app

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"

ENTITLEMENT = """\
---
apiVersion: tokenpools.dev/v1alpha1
kind: Entitlement
metadata: {{name: {name}}}
spec:
  pool: llama-3-8b
  tenant: {name}
  tier: {tier}
  {extra}
  burst: {{throughput: 200000, kv: 6000000, concurrency: 2000}}
  slo: {{ttftSeconds: {slo}}}
"""

TENANT = """\
    - entitlement: {name}
      arrivals: {{process: poisson, rate: {rate}}}
      start: {start}
      prompt: {{meanTokens: 400, sigma: 0.5, minTokens: 16, maxTokens: 2048}}
      output: {{meanTokens: 100, sigma: 0.5, minTokens: 1, maxTokens: 512}}
"""


def _workload(name: str, tenants: list[tuple[str, float, float]]) -> str:
    head = (f"---\napiVersion: tokenpools.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}}}\n"
            "spec:\n  pool: llama-3-8b\n  durationSeconds: 20\n  seed: 5\n  tenants:\n")
    return head + "".join(TENANT.format(name=n, rate=r, start=s) for n, r, s in tenants)


def _config(tmp_path: Path, workloads: str) -> Path:
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "pool.yaml").write_text((EXAMPLES / "pool.yaml").read_text())
    (folder / "entitlements.yaml").write_text(
        ENTITLEMENT.format(name="small", tier="elastic", extra="weight: 1", slo=2.0)
        + ENTITLEMENT.format(name="large", tier="elastic", extra="weight: 3", slo=10.0)
        + ENTITLEMENT.format(name="gold", tier="guaranteed",
                             extra="guarantee: {throughput: 5000, kv: 100000, concurrency: 50}", slo=1.0))
    (folder / "workloads.yaml").write_text(workloads)
    return folder


def _invoke(*args: str):
    return CliRunner().invoke(app, ["experiment", "fairness", *args])


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    return lines[0]


def test_runs_a_users_workload_and_entitlements(tmp_path: Path) -> None:
    """Both elastic tenants at about 3x the pool together (400 x 0.5 + 100 = 300 weighted tokens a
    request; the pool sells 4 x 17000 x 0.95 = 64,600/s); `large` starts alone, `small` at 5 s."""
    config = _config(tmp_path, _workload("mine", [("large", 400, 0), ("small", 300, 5), ("gold", 10, 0)]))
    out = tmp_path / "out"
    result = _invoke("--config", str(config), "--workload", "mine", "--duration", "20", "--out", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert result.exit_code == (0 if all(summary["pass"].values()) else 1), result.output
    assert summary["workload"] == "mine" and summary["config"] == str(config)
    assert summary["weights"] == {"large": 3.0, "small": 1.0}
    assert summary["unmeasured_tenants"] == ["gold"]
    assert summary["seed"] == 5  # the workload's own
    assert summary["alone_tenant"] == "large" and summary["join_time"] == 5.0
    assert set(summary["modes"]) == {"tokenpools", "no-debt", "vtc", "fcfs"}
    tp = summary["modes"]["tokenpools"]
    assert set(tp["steady_service_per_weight"]) == {"large", "small"}
    assert tp["backlogged"]["small"][0] is False  # not arrived in the first window
    assert {"table.md", "shares.png"} <= {p.name for p in out.iterdir()}


def test_missing_config_folder(tmp_path: Path) -> None:
    line = _one_error_line(_invoke("--config", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")))
    assert "nowhere" in line and "no such file or folder" in line
    assert not (tmp_path / "out").exists()


def test_unknown_workload_lists_the_available_ones_bounded(tmp_path: Path) -> None:
    names = [f"w{i:02d}" for i in range(12)]
    config = _config(tmp_path, "".join(_workload(n, [("large", 1, 0), ("small", 1, 0)]) for n in names))
    line = _one_error_line(_invoke("--config", str(config), "--workload", "nope"))
    assert "no workload named 'nope'" in line
    assert ", ".join(names[:10]) + ", ... (2 more)" in line
    assert "w10" not in line and "--workload" in line


def test_config_without_elastic_tenants(tmp_path: Path) -> None:
    config = _config(tmp_path, _workload("gold-only", [("gold", 10, 0)]))
    line = _one_error_line(_invoke("--config", str(config), "--workload", "gold-only"))
    assert "0 elastic tenant(s)" in line and "gold: guaranteed" in line and "tier: elastic" in line


@pytest.mark.parametrize("problem", ["unknown kind", "negative weight"])
def test_invalid_config_is_one_line(tmp_path: Path, problem: str) -> None:
    """An invalid config: its first problem, on one line (a valid one runs: checked above)."""
    config = _config(tmp_path, _workload("mine", [("large", 1, 0), ("small", 1, 0)]))
    if problem == "unknown kind":
        (config / "extra.yaml").write_text("kind: Nonsense\n")
    else:
        ents = config / "entitlements.yaml"
        ents.write_text(ents.read_text().replace("weight: 3", "weight: -3"))
    line = _one_error_line(_invoke("--config", str(config), "--workload", "mine"))
    assert str(config) in line
