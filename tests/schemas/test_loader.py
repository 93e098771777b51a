"""Config loading: every bad case gets one precise line naming file, document, field and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.loader import ConfigError, load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"

POOL = """\
apiVersion: tokenpools.dev/v1alpha1
kind: TokenPool
metadata: {name: small}
spec:
  model: m
  perReplica: {throughput: 1000, kv: 10000, concurrency: 10}
  targetUtilisation: {throughput: 1.0, kv: 1.0, concurrency: 1.0}
  replicas: {min: 1, max: 2}
"""


def entitlement(name: str = "t", pool: str = "small", tier: str = "guaranteed", g: str = "100", b: str = "200") -> str:
    return f"""\
apiVersion: tokenpools.dev/v1alpha1
kind: Entitlement
metadata: {{name: {name}}}
spec:
  pool: {pool}
  tenant: {name}
  tier: {tier}
  guarantee: {{throughput: {g}, kv: 0, concurrency: 0}}
  burst: {{throughput: {b}, kv: 1000, concurrency: 5}}
"""


def write(tmp_path: Path, *docs: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("---\n".join(docs))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return [str(p) for p in exc.value.problems]


def test_examples_load():
    config = load_config(EXAMPLES)
    assert "llama-3-8b" in config.pools
    tiers = {e.spec.tier.value for e in config.entitlements.values()}
    assert tiers == {"guaranteed", "elastic", "spot"}


def test_valid_file(tmp_path):
    config = load_config(write(tmp_path, POOL, entitlement()))
    assert list(config.entitlements) == ["t"]


def test_guarantee_above_burst(tmp_path):
    (line,) = problems(write(tmp_path, POOL, entitlement(g="300", b="200")))
    assert "config.yaml: document 2 (Entitlement \"t\"): spec:" in line
    assert "guarantee.throughput (300) exceeds burst.throughput (200)" in line


def test_unknown_pool(tmp_path):
    (line,) = problems(write(tmp_path, POOL, entitlement(pool="nope")))
    assert "document 2" in line and "spec.pool: unknown pool 'nope' (known: small)" in line


def test_negative_capacity(tmp_path):
    (line,) = problems(write(tmp_path, POOL.replace("kv: 10000", "kv: -5")))
    assert "document 1 (TokenPool \"small\"): spec.perReplica.kv:" in line
    assert "must be a finite number at least 0 and at most 1e+12" in line and "-5" in line


def test_duplicate_name(tmp_path):
    (line,) = problems(write(tmp_path, POOL, entitlement(), entitlement()))
    assert "document 3" in line and "duplicate Entitlement name 't'" in line and "document 2" in line


def test_unknown_tier(tmp_path):
    (line,) = problems(write(tmp_path, POOL, entitlement(tier="gold", g="0")))
    assert "spec.tier:" in line and "'guaranteed', 'elastic' or 'spot'" in line and "'gold'" in line


def test_guarantee_the_pool_could_never_provision(tmp_path):
    (line,) = problems(write(tmp_path, POOL, entitlement("a", g="1500", b="1500"), entitlement("b", g="600", b="600")))
    assert "Entitlement \"b\"" in line and "spec.guarantee.throughput" in line
    assert "at most 2000 at maxReplicas=2" in line and "raise maxReplicas to 3" in line


def test_unknown_field_and_bad_yaml_and_wrong_api_version(tmp_path):
    (line,) = problems(write(tmp_path, POOL.replace("model: m", "model: m\n  modle: x")))
    assert "spec.modle: unknown field" in line
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed\n")
    (line,) = problems(bad)
    assert "invalid YAML at line" in line
    (line,) = problems(write(tmp_path, POOL.replace("v1alpha1", "v9")))
    assert "apiVersion: must be 'tokenpools.dev/v1alpha1'" in line


def test_missing_path_and_non_guaranteed_guarantee(tmp_path):
    (line,) = problems(tmp_path / "absent.yaml")
    assert "no such file or folder" in line
    (line,) = problems(write(tmp_path, POOL, entitlement(tier="spot")))
    assert "only the guaranteed tier holds a guarantee" in line
