"""The GlobalEntitlement kind and `config check` of configs that hold one (schemas.regions, schemas.loader)."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.loader import ConfigError, load_config
from schemas.regions import GLOBAL_LABEL, REGION_LABEL, GlobalEntitlement, is_regional_share, regional_entitlement
from schemas.specs import Resources

POOL = """
apiVersion: tokenpools.dev/v1alpha1
kind: TokenPool
metadata: {{name: {name}}}
spec:
  model: llama-3-8b
  region: {region}
  perReplica: {{throughput: 1000, kv: 100000, concurrency: 10}}
  replicas: {{min: 1, max: {max}}}
"""
GLOBAL = """
apiVersion: tokenpools.dev/v1alpha1
kind: GlobalEntitlement
metadata: {{name: acme-global}}
spec:
  model: llama-3-8b
  regions: {regions}
  tenant: acme
  tier: guaranteed
  guarantee: {{throughput: {guarantee}}}
  burst: {{throughput: 20000}}
  split: {{epochSeconds: 1, lostAfterSeconds: 30}}
"""


def write(tmp_path: Path, *docs: str) -> Path:
    (tmp_path / "c.yaml").write_text("---\n".join(docs))
    return tmp_path


def pool(name: str, region: str, max_replicas: int = 10) -> str:
    return POOL.format(name=name, region=region, max=max_replicas)


def test_a_region_config_with_its_pool_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, pool("p-east", "us-east"), GLOBAL.format(regions="[us-east, eu-west]",
                                                                                  guarantee=5000)))
    glob = config.global_entitlements["acme-global"]
    assert glob.spec.regions == ["us-east", "eu-west"] and glob.spec.split.lost_after_seconds == 30
    assert glob.spec.split.floor_fraction == 0.1  # the default


def test_a_region_with_two_pools_of_the_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one pool of model 'llama-3-8b', found 'a', 'b'"):
        load_config(write(tmp_path, pool("a", "us-east"), pool("b", "us-east"),
                          GLOBAL.format(regions="[us-east]", guarantee=10)))


def test_a_guarantee_the_regions_cannot_provision_is_refused(tmp_path: Path) -> None:
    # Two regions of 10 replicas x 1000 x 0.9 (target utilisation) = 18,000 tokens/s at most.
    docs = [pool("p-east", "us-east"), pool("p-west", "eu-west")]
    load_config(write(tmp_path, *docs, GLOBAL.format(regions="[us-east, eu-west]", guarantee=18000)))
    with pytest.raises(ConfigError, match=r"exceeds what the pools .* can provision at max replicas \(18000\)"):
        load_config(write(tmp_path, *docs, GLOBAL.format(regions="[us-east, eu-west]", guarantee=18001)))


@pytest.mark.parametrize(("regions", "guarantee", "message"), [
    ("[us-east, us-east]", 10, "listed twice"),
    ("[]", 10, "at least 1 item"),
    ("[US_East]", 10, "not a valid name"),
    ("[us-east]", 30000, "exceeds burst.throughput"),
])
def test_bad_global_entitlements_say_what_to_fix(tmp_path: Path, regions: str, guarantee: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, pool("p", "us-east"), GLOBAL.format(regions=regions, guarantee=guarantee)))


def test_an_entitlement_with_the_global_name_is_refused(tmp_path: Path) -> None:
    ent = """
apiVersion: tokenpools.dev/v1alpha1
kind: Entitlement
metadata: {name: acme-global}
spec: {pool: p, tenant: acme, tier: elastic, burst: {throughput: 10}}
"""
    with pytest.raises(ConfigError, match="an Entitlement is also named 'acme-global'"):
        load_config(write(tmp_path, pool("p", "us-east"), ent, GLOBAL.format(regions="[us-east]", guarantee=10)))


def test_the_regional_share_is_an_entitlement_of_the_regions_pool(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, pool("p", "us-east"), GLOBAL.format(regions="[us-east]", guarantee=10)))
    glob: GlobalEntitlement = config.global_entitlements["acme-global"]
    share = regional_entitlement(glob, "p", "us-east", Resources(throughput=700), Resources(throughput=5))
    assert share.name == "acme-global" and share.spec.pool == "p" and share.spec.tier == glob.spec.tier
    assert share.metadata.labels == {GLOBAL_LABEL: "acme-global", REGION_LABEL: "us-east"}
    assert share.spec.burst.throughput == 700 and share.spec.guarantee.throughput == 5
    assert is_regional_share(share)
