"""The committed CRDs (deploy/helm/tokenpools/crds/) against the pydantic specs they are generated from.

The API server itself is in tests/kube/test_crds.py; here: staleness, structural-ness, field-for-field
agreement with the specs, and every example manifest valid under the CRD schema (checked with
jsonschema_rs as Draft 4, which has OpenAPI 3.0's boolean exclusiveMinimum/Maximum).
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml
from pydantic import BaseModel

from schemas import crd
from schemas.specs import EntitlementSpec, TokenPoolSpec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "deploy" / "examples").glob("*.yaml"))
SPECS: dict[str, type[BaseModel]] = {"TokenPool": TokenPoolSpec, "Entitlement": EntitlementSpec}

# What a structural schema node may say (apiextensions v1 JSONSchemaProps, as used here).
ALLOWED = {
    "type", "description", "nullable", "enum", "format", "minimum", "exclusiveMinimum", "maximum",
    "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems", "maxItems", "default", "required",
    "properties", "items", "additionalProperties", "x-kubernetes-validations", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}


def committed() -> dict[str, dict[str, Any]]:
    return {f: yaml.safe_load((crd.CRD_DIR / f).read_text(encoding="utf-8")) for f in crd.render()}


def schema_of(kind: str) -> dict[str, Any]:
    obj = next(o for o in committed().values() if o["spec"]["names"]["kind"] == kind)
    (version,) = obj["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_committed_crds_are_current():
    stale = crd.stale()
    assert not stale, f"stale CRDs {stale} in {crd.CRD_DIR}: run `{crd.EXPORT_COMMAND}`"


def test_names_group_version_scope():
    by_kind = {o["spec"]["names"]["kind"]: o for o in committed().values()}
    assert set(by_kind) == {"TokenPool", "Entitlement", "GlobalEntitlement"}
    for kind, plural, short in (("TokenPool", "tokenpools", "tp"), ("Entitlement", "entitlements", "ent"),
                                ("GlobalEntitlement", "globalentitlements", "gent")):
        obj = by_kind[kind]
        assert obj["apiVersion"] == "apiextensions.k8s.io/v1"
        assert obj["metadata"]["name"] == f"{plural}.tokenpools.dev"
        spec = obj["spec"]
        assert spec["group"] == "tokenpools.dev" and spec["scope"] == "Namespaced"
        assert spec["names"]["plural"] == plural and spec["names"]["shortNames"] == [short]
        (version,) = spec["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
        assert version["subresources"] == {"status": {}}


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_schema_is_structural(kind):
    for path, node in walk(schema_of(kind)):
        where = path or "<root>"
        assert "type" in node, f"{where}: no type"
        assert not {"$ref", "anyOf", "oneOf", "allOf", "not"} & node.keys(), f"{where}: {sorted(node)}"
        assert not node.keys() - ALLOWED, f"{where}: unknown keywords {sorted(node.keys() - ALLOWED)}"
        assert not ("properties" in node and "additionalProperties" in node), f"{where}: both properties kinds"
        if node["type"] == "object" and path not in ("", ".metadata"):
            assert "properties" in node or "additionalProperties" in node, f"{where}: an object of nothing"


def pydantic_tree(model: type[BaseModel]) -> dict[str, Any]:
    """alias -> subtree (None for a leaf), following nested models through Optional, list and dict."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        out[info.alias or name] = _tree_of(info.annotation)
    return out


def _tree_of(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _tree_of(inner)
    if origin is typing.Annotated:
        return _tree_of(typing.get_args(annotation)[0])
    if origin is list:
        return {"[]": _tree_of(typing.get_args(annotation)[0])}
    if origin is dict:
        return {"{}": _tree_of(typing.get_args(annotation)[1])}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pydantic_tree(annotation)
    return None


def crd_tree(node: dict[str, Any]) -> Any:
    if "properties" in node:
        return {name: crd_tree(sub) for name, sub in node["properties"].items()}
    if isinstance(node.get("items"), dict):
        return {"[]": crd_tree(node["items"])}
    if isinstance(node.get("additionalProperties"), dict):
        return {"{}": crd_tree(node["additionalProperties"])}
    return None


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_every_spec_field_is_in_the_crd_and_back(kind):
    expected = pydantic_tree(SPECS[kind])
    got = crd_tree(schema_of(kind)["properties"]["spec"])
    assert got == expected


def test_optional_fields_are_nullable_without_a_null_default():
    pool = schema_of("TokenPool")["properties"]["spec"]["properties"]
    initial = pool["replicas"]["properties"]["initial"]
    assert initial["nullable"] is True and initial["type"] == "integer" and "default" not in initial
    assert pool["replicas"]["default"] == {"min": 1, "max": 8}
    ent = schema_of("Entitlement")["properties"]["spec"]["properties"]
    assert ent["slo"]["nullable"] is True and ent["slo"]["type"] == "object"
    assert ent["tier"]["enum"] == ["guaranteed", "elastic", "spot"]
    assert ent["pool"]["pattern"] == schema_of("Entitlement")["properties"]["metadata"]["properties"]["name"]["pattern"]
    sharpness = pool["debt"]["properties"]["sharpness"]
    assert (sharpness["minimum"], sharpness["exclusiveMinimum"]) == (0, True)


def test_cel_rules_mirror_the_validators():
    pool = schema_of("TokenPool")["properties"]["spec"]["properties"]
    ent = schema_of("Entitlement")["properties"]["spec"]
    messages = [r["message"] for r in pool["replicas"]["x-kubernetes-validations"]]
    messages += [r["message"] for r in pool["perReplica"]["x-kubernetes-validations"]]
    messages += [r["message"] for r in ent["x-kubernetes-validations"]]
    assert len(messages) == 2 + 3 + 6
    for dim in ("throughput", "kv", "concurrency"):
        assert any(f"guarantee.{dim} exceeds burst.{dim}" in m for m in messages)
        assert any(f"guarantee.{dim} is set but the tier is not guaranteed" in m for m in messages)
        assert any(f"perReplica.{dim} must be at least 1" in m for m in messages)
    assert all(":" in m for m in messages), "every message says what to change after a colon or parenthesis"


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_printer_columns(kind):
    obj = next(o for o in committed().values() if o["spec"]["names"]["kind"] == kind)
    names = [c["name"] for c in obj["spec"]["versions"][0]["additionalPrinterColumns"]]
    want = {
        "Entitlement": ["Tenant", "Pool", "Tier", "Throughput", "KV", "Concurrency", "Debt", "Ready", "Age"],
        "TokenPool": ["Model", "Ready", "Min", "Max", "Age"],
    }
    assert names == want[kind]


# -- examples under the CRD schema -------------------------------------------------------------------


def draft4(node: dict[str, Any]) -> dict[str, Any]:
    """The CRD schema as Draft 4 JSON Schema: ``nullable`` as a type list, CEL and list-type markers
    dropped, and ``additionalProperties: false`` where the API server prunes (so a stray field fails
    here as it would under strict field validation)."""
    out = copy.deepcopy(node)
    for _, sub in walk(out):
        for key in [k for k in sub if k.startswith("x-kubernetes-")]:
            del sub[key]
        if sub.pop("nullable", False):
            sub["type"] = [sub["type"], "null"]
        if "properties" in sub and "additionalProperties" not in sub:
            sub["additionalProperties"] = False
    out["properties"]["metadata"]["additionalProperties"] = True  # the server's ObjectMeta, not ours
    return out


def validator(kind: str) -> Any:
    return jsonschema_rs.Draft4Validator(draft4(schema_of(kind)))


def example_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(doc, dict) and doc.get("kind") in SPECS:
                docs.append((f"{path.name}:{doc['metadata']['name']}", doc))
    return docs


def test_there_are_examples_of_both_kinds():
    kinds = {doc["kind"] for _, doc in example_documents()}
    assert kinds == set(SPECS)


@pytest.mark.parametrize(("label", "doc"), example_documents(), ids=[label for label, _ in example_documents()])
def test_examples_validate_against_the_crd_schema(label, doc):
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator(doc["kind"]).iter_errors(doc)]
    assert not errors, f"{label}: {errors}"


@pytest.mark.parametrize(
    ("mutate", "what"),
    [
        (lambda d: d["spec"].update(tier="gold"), "an unknown tier"),
        (lambda d: d["spec"].update(weight=0), "a weight below its minimum"),
        (lambda d: d["spec"].update(burstWindowSeconds="5"), "a string for a number"),
        (lambda d: d["spec"].update(burts={}), "a misspelled field"),
        (lambda d: d["metadata"].update(name="Acme_Prod"), "a name that is not RFC 1123"),
        (lambda d: d["spec"]["apiKeys"].append({"sha256": "abc"}), "a key digest that is not SHA-256 hex"),
        (lambda d: d["spec"].pop("burst"), "no burst"),
    ],
)
def test_the_local_checker_refuses_bad_entitlements(mutate, what):
    _, doc = next(d for d in example_documents() if d[1]["kind"] == "Entitlement")
    bad = copy.deepcopy(doc)
    mutate(bad)
    assert not validator("Entitlement").is_valid(bad), what


def test_the_local_checker_accepts_null_optional_fields():
    _, doc = next(d for d in example_documents() if d[1]["kind"] == "TokenPool")
    ok = copy.deepcopy(doc)
    ok["spec"]["replicas"]["initial"] = None
    assert validator("TokenPool").is_valid(ok)
    ok["spec"]["reclaimBuffer"] = 1.0  # exclusive maximum
    assert not validator("TokenPool").is_valid(ok)
