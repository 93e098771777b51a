"""The chart's CRDs (deploy/helm/tokenpools/crds/) on a real kube-apiserver.

Applied as they are committed; then the example manifests are accepted (with the schema's defaults
filled in), every CEL rule refuses a CR that breaks it with its own message (422) where the pydantic
model refuses the same spec, an unknown field is pruned (or refused under strict field validation),
the status subresource keeps what the operator writes, and the printer columns show in a Table.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes.client
import pydantic
import pytest
import yaml
from kubernetes.client import ApiextensionsV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from schemas import crd
from schemas.specs import EntitlementSpec, TokenPoolSpec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "deploy" / "examples"
GROUP, VERSION = crd.GROUP, crd.VERSION
PLURAL = {"TokenPool": "tokenpools", "Entitlement": "entitlements"}
SPEC = {"TokenPool": TokenPoolSpec, "Entitlement": EntitlementSpec}
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def apply_crds(kube: kubernetes.client.ApiClient) -> None:
    """Server-side apply the committed CRDs (idempotent across test modules) and wait until served."""
    api = DynamicClient(kube).resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
    names = []
    for path in sorted(crd.CRD_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        api.server_side_apply(body=doc, field_manager="tokenpools-tests", force_conflicts=True)
        names.append(doc["metadata"]["name"])
    ext = ApiextensionsV1Api(kube)
    deadline = time.monotonic() + 30
    for name in names:
        while True:
            conditions = ext.read_custom_resource_definition(name).status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            assert time.monotonic() < deadline, f"CRD {name} not Established: {conditions}"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def crds(kube: kubernetes.client.ApiClient) -> None:
    apply_crds(kube)


def examples() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d and d.get("kind") in PLURAL]
    return docs


def example(kind: str, name: str | None = None) -> dict[str, Any]:
    return copy.deepcopy(next(d for d in examples() if d["kind"] == kind and name in (None, d["metadata"]["name"])))


def create(kube: kubernetes.client.ApiClient, ns: str, doc: dict[str, Any], **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = CustomObjectsApi(kube).create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL[doc["kind"]], doc, **kw
    )
    return out


def refusal(kube: kubernetes.client.ApiClient, ns: str, doc: dict[str, Any], **kw: Any) -> tuple[int, str]:
    with pytest.raises(ApiException) as err:
        create(kube, ns, doc, **kw)
    body = json.loads(err.value.body)
    return err.value.status, body.get("message", "")


def test_crds_are_served_with_their_printer_columns(kube, crds):
    ext = ApiextensionsV1Api(kube)
    for kind in crd.KINDS:
        served = ext.read_custom_resource_definition(kind.name)
        assert served.spec.names.short_names == [kind.short] and served.spec.scope == "Namespaced"
        (version,) = served.spec.versions
        assert version.name == "v1alpha1" and version.served and version.storage
        assert version.subresources.status is not None
        columns = [(c.name, c.json_path) for c in version.additional_printer_columns]
        assert columns == [(c["name"], c["jsonPath"]) for c in kind.columns]
        # The server accepted the schema as structural (it refuses a CRD otherwise): no NonStructural condition.
        assert not any(c.type == "NonStructuralSchema" and c.status == "True" for c in served.status.conditions)


def test_examples_are_accepted_and_defaulted(kube, crds, kube_namespace):
    for doc in examples():
        created = create(kube, kube_namespace, doc)
        assert created["metadata"]["name"] == doc["metadata"]["name"]
    tenant_a = CustomObjectsApi(kube).get_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, "entitlements", "tenant-a-interactive")
    # The schema's defaults are the model's: the server fills in what the example leaves out.
    want = EntitlementSpec.model_validate(example("Entitlement", "tenant-a-interactive")["spec"])
    assert tenant_a["spec"]["burstWindowSeconds"] == want.burst_window_seconds
    assert tenant_a["spec"]["guarantee"] == {"throughput": 0, "kv": 0, "concurrency": 0}
    pool = CustomObjectsApi(kube).get_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, "tokenpools", "llama-3-8b")
    assert pool["spec"]["replicaScheduling"] == "fcfs"
    assert pool["spec"]["scaling"]["forecastHalfLifeSeconds"] == 60


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        node = doc["spec"]
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return mutate


# (kind, example name, mutation, the message's words): one case per CEL rule.
CEL_CASES = [
    ("TokenPool", None, _set("replicas", {"min": 5, "max": 3}), "replicas.min must not exceed replicas.max"),
    ("TokenPool", None, _set("replicas", {"min": 1, "max": 3, "initial": 4}),
     "replicas.initial must lie within [replicas.min, replicas.max]"),
    *[("TokenPool", None, _set(f"perReplica.{d}", 0), f"perReplica.{d} must be at least 1")
      for d in ("throughput", "kv", "concurrency")],
    *[("Entitlement", "acme-prod", _set(f"guarantee.{d}", 10**6 * 7), f"guarantee.{d} exceeds burst.{d}")
      for d in ("throughput", "kv", "concurrency")],
    *[("Entitlement", "tenant-a-interactive", _set(f"guarantee.{d}", 1),
       f"guarantee.{d} is set but the tier is not guaranteed") for d in ("throughput", "kv", "concurrency")],
]


@pytest.mark.parametrize(("kind", "name", "mutate", "words"), CEL_CASES, ids=[c[3] for c in CEL_CASES])
def test_each_cel_rule_refuses_with_its_message(kube, crds, kube_namespace, kind, name, mutate, words):
    doc = example(kind, name)
    mutate(doc)
    with pytest.raises(pydantic.ValidationError):  # the rule mirrors a validator of the model
        SPEC[kind].model_validate(doc["spec"])
    status, message = refusal(kube, kube_namespace, doc)
    assert status == 422, message
    assert words in message, message
    assert ":" in message.split(words, 1)[1] or "(" in message.split(words, 1)[1], "says what to change"


def test_a_null_optional_field_is_absent_to_cel(kube, crds, kube_namespace):
    doc = example("TokenPool")
    doc["spec"]["replicas"]["initial"] = None
    TokenPoolSpec.model_validate(doc["spec"])
    created = create(kube, kube_namespace, doc)
    assert created["spec"]["replicas"].get("initial") is None


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (_set("tier", "gold"), "Unsupported value"),
        (_set("weight", 0.0005), "should be greater than or equal to 0.001"),
        # An integer slips past a fractional OpenAPI minimum on the API server; the CRD's CEL twin does not.
        (_set("weight", 0), "spec.weight must be at least 0.001"),
        (_set("slo.ttftSeconds", 0), "spec.slo.ttftSeconds must be at least 0.001"),
        (_set("weight", -1), "should be greater than or equal to"),
        (_set("pool", "Not_A_Name"), "should match"),
    ],
)
def test_the_schema_refuses_what_the_model_refuses(kube, crds, kube_namespace, mutate, words):
    doc = example("Entitlement", "batchco-spot")
    mutate(doc)
    with pytest.raises(pydantic.ValidationError):
        EntitlementSpec.model_validate(doc["spec"])
    status, message = refusal(kube, kube_namespace, doc)
    assert status == 422 and words in message, message


def test_the_schema_is_stricter_than_the_model_on_types(kube, crds, kube_namespace):
    """pydantic's lax mode reads "5" as 5.0; the API server wants a JSON number (the operator then
    hands the model only what the schema let through)."""
    doc = example("Entitlement", "batchco-spot")
    doc["spec"]["burstWindowSeconds"] = "5"
    EntitlementSpec.model_validate(doc["spec"])
    status, message = refusal(kube, kube_namespace, doc)
    assert status == 422 and "must be of type number" in message, message


def test_a_null_nullable_number_skips_its_rules(kube, crds, kube_namespace):
    doc = example("Entitlement", "acme-prod")
    doc["spec"]["slo"]["tpotSeconds"] = None
    EntitlementSpec.model_validate(doc["spec"])
    created = create(kube, kube_namespace, doc)
    assert created["spec"]["slo"].get("tpotSeconds") is None


def test_a_bad_metadata_name_is_refused(kube, crds, kube_namespace):
    doc = example("Entitlement", "batchco-spot")
    doc["metadata"]["name"] = "x" * 254
    status, message = refusal(kube, kube_namespace, doc)
    assert status == 422, message


def test_unknown_fields_are_pruned_or_refused_when_strict(kube, crds, kube_namespace):
    doc = example("Entitlement", "batchco-spot")
    doc["spec"]["burts"] = {"throughput": 1}  # a typo: extra="forbid" in the model
    doc["spec"]["burst"]["tokens"] = 5
    status, message = refusal(kube, kube_namespace, doc, field_validation="Strict")
    assert status == 400 and "unknown field" in message and "spec.burts" in message, message
    created = create(kube, kube_namespace, doc, field_validation="Ignore")
    assert "burts" not in created["spec"] and "tokens" not in created["spec"]["burst"]


def test_status_subresource_and_table(kube, crds, kube_namespace):
    api = CustomObjectsApi(kube)
    create(kube, kube_namespace, example("TokenPool"))
    ent = create(kube, kube_namespace, example("Entitlement", "acme-prod"))
    now = "2026-12-02T10:00:00Z"
    status = {
        "observedGeneration": ent["metadata"]["generation"],
        "conditions": [
            {"type": "Provisionable", "status": "True", "reason": "Accepted", "message": "ok",
             "lastTransitionTime": now, "observedGeneration": 1},
            {"type": "Ready", "status": "True", "reason": "StateCurrent", "message": "ok",
             "lastTransitionTime": now, "observedGeneration": 1},
        ],
        "limits": {"throughput": 20000.5, "kv": 700000, "concurrency": 230},
        "fairShare": 0.25, "debt": 0.125, "effectiveWeight": 0.9, "admitters": 2,
    }
    api.patch_namespaced_custom_object_status(GROUP, VERSION, kube_namespace, "entitlements", "acme-prod",
                                              {"status": status})
    pool_status = {"observedGeneration": 1, "readyReplicas": 4, "desiredReplicas": 5,
                   "capacity": {"throughput": 64600, "kv": 3060000, "concurrency": 921.6}}
    api.patch_namespaced_custom_object_status(GROUP, VERSION, kube_namespace, "tokenpools", "llama-3-8b",
                                              {"status": pool_status})
    read = api.get_namespaced_custom_object(GROUP, VERSION, kube_namespace, "entitlements", "acme-prod")
    assert read["status"] == status  # nothing pruned: the schema has every field the operator writes
    # A status on the main resource is ignored (the subresource owns it).
    read["status"]["debt"] = 99
    api.replace_namespaced_custom_object(GROUP, VERSION, kube_namespace, "entitlements", "acme-prod", read)
    again = api.get_namespaced_custom_object(GROUP, VERSION, kube_namespace, "entitlements", "acme-prod")
    assert again["status"]["debt"] == 0.125

    ents = table(kube, f"/apis/{GROUP}/{VERSION}/namespaces/{kube_namespace}/entitlements")
    columns = [c["name"] for c in ents["columnDefinitions"]]
    assert columns[:1] == ["Name"] and columns[1:] == [c["name"] for c in crd.KINDS[1].columns]
    (row,) = ents["rows"]
    cells = dict(zip(columns, row["cells"], strict=True))
    assert cells["Tenant"] == "acme" and cells["Pool"] == "llama-3-8b" and cells["Tier"] == "guaranteed"
    assert (cells["Throughput"], cells["KV"], cells["Concurrency"]) == (20000.5, 700000, 230)
    assert cells["Debt"] == 0.125 and cells["Ready"] == "True"
    pools = table(kube, f"/apis/{GROUP}/{VERSION}/namespaces/{kube_namespace}/tokenpools")
    columns = [c["name"] for c in pools["columnDefinitions"]]
    (row,) = pools["rows"]
    cells = dict(zip(columns, row["cells"], strict=True))
    assert (cells["Model"], cells["Ready"], cells["Min"], cells["Max"]) == ("llama-3-8b", 4, 4, 8)


def test_a_bad_status_is_refused(kube, crds, kube_namespace):
    api = CustomObjectsApi(kube)
    create(kube, kube_namespace, example("Entitlement", "batchco-spot"))
    bad = {"conditions": [{"type": "Ready", "status": "Maybe", "reason": "X", "message": "",
                           "lastTransitionTime": "2026-12-02T10:00:00Z"}]}
    with pytest.raises(ApiException) as err:
        api.patch_namespaced_custom_object_status(GROUP, VERSION, kube_namespace, "entitlements", "batchco-spot",
                                                  {"status": bad})
    assert err.value.status == 422 and "Unsupported value" in err.value.body


def table(kube: kubernetes.client.ApiClient, path: str) -> dict[str, Any]:
    method, url, headers, _, _ = kube.param_serialize("GET", path, header_params={"Accept": TABLE},
                                                      auth_settings=["BearerToken"])
    response = kube.call_api(method, url, headers)
    response.read()
    out: dict[str, Any] = json.loads(response.data)
    assert out["kind"] == "Table", out
    return out
