"""The chart's rendered objects on a real kube-apiserver: a server-side dry run of every one, and its RBAC
for real, checked with the ServiceAccounts' own tokens.

The namespace and the CRDs are created for real first (a dry run of a TokenPool needs its CRD served);
then every object of ``helm template`` (example values) is server-side applied with ``dryRun=All``:
the API server runs its whole validation and admission chain and stores nothing. The chart's
ServiceAccounts, Roles and RoleBindings are then applied for real, and tokens from the TokenRequest
API show, through SelfSubjectAccessReview and through real calls, that the operator and the scaler
may do what they need and nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubernetes.client import AppsV1Api, AuthorizationV1Api, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from tests.kube.test_crds import apply_crds
from tokenpools.infra.helm import ensure_helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "tokenpools"
EXAMPLE = CHART / "examples" / "values-llama.yaml"
RELEASE = "tp"
PREFIX = f"{RELEASE}-tokenpools"
FIELD_MANAGER = "tokenpools-chart-test"


@pytest.fixture(scope="module")
def helm(pytestconfig: pytest.Config) -> Iterator[Path]:
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        path = ensure_helm()
    yield path


def rendered(helm: Path, namespace: str) -> list[dict[str, Any]]:
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n").decode()
    result = subprocess.run(
        [str(helm), "template", RELEASE, str(CHART), "--namespace", namespace, "-f", str(EXAMPLE),
         "--set", f"operator.webhook.caBundle={ca}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def apply(kube: kubernetes.client.ApiClient, namespace: str, obj: dict[str, Any], dry_run: bool) -> Any:
    resource = DynamicClient(kube).resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    kw: dict[str, Any] = {"field_manager": FIELD_MANAGER}
    if dry_run:
        kw["dry_run"] = "All"
    if resource.namespaced:
        kw["namespace"] = namespace
    return resource.server_side_apply(body=obj, **kw)


def test_every_rendered_object_passes_a_server_side_dry_run(kube, kube_namespace, helm):
    apply_crds(kube)
    objects = rendered(helm, kube_namespace)
    kinds = sorted({o["kind"] for o in objects})
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "Role", "RoleBinding",
            "ServiceAccount", "ValidatingWebhookConfiguration", "TokenPool", "Entitlement",
            "ConfigMap", "PersistentVolumeClaim"} <= set(kinds)
    refused = []
    for obj in objects:
        try:
            out = apply(kube, kube_namespace, obj, dry_run=True)
            assert out.metadata.name == obj["metadata"]["name"]
        except ApiException as exc:
            refused.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.status} {exc.body}")
    assert not refused, "\n".join(refused)
    # The dry run validates for real: a broken copy of a rendered object is refused.
    broken = next(o for o in objects if o["kind"] == "Deployment")
    broken["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = -1
    with pytest.raises(ApiException) as err:
        apply(kube, kube_namespace, broken, dry_run=True)
    assert err.value.status == 422 and "runAsUser" in err.value.body
    # Nothing was stored.
    assert not AppsV1Api(kube).list_namespaced_deployment(kube_namespace).items
    assert not CustomObjectsApi(kube).list_namespaced_custom_object(
        "tokenpools.dev", "v1alpha1", kube_namespace, "entitlements")["items"]


@pytest.fixture
def rbac(kube, kube_namespace, helm, control_plane) -> dict[str, kubernetes.client.ApiClient]:
    """The chart's ServiceAccounts, Roles and RoleBindings applied for real; an ApiClient per component."""
    apply_crds(kube)
    for obj in rendered(helm, kube_namespace):
        if obj["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
            apply(kube, kube_namespace, obj, dry_run=False)
    clients = {}
    for component in ("operator", "scaler", "admitter"):
        token = control_plane.service_account_token(kube_namespace, f"{PREFIX}-{component}")
        clients[component] = control_plane.api_client(token)
    return clients


def can(client: kubernetes.client.ApiClient, namespace: str, verb: str, resource: str, group: str = "",
        subresource: str = "") -> bool:
    review = kubernetes.client.V1SelfSubjectAccessReview(
        spec=kubernetes.client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=kubernetes.client.V1ResourceAttributes(
                namespace=namespace, verb=verb, resource=resource, group=group, subresource=subresource or None,
            )
        )
    )
    out = AuthorizationV1Api(client).create_self_subject_access_review(review)
    return bool(out.status.allowed)


OUR_KINDS = ("tokenpools", "entitlements", "globalentitlements")
OPERATOR_ALLOWED = [
    *[(v, r, "tokenpools.dev", "") for v in ("get", "list", "watch") for r in OUR_KINDS],
    *[(v, r, "tokenpools.dev", "status") for v in ("update", "patch") for r in OUR_KINDS],
    *[(v, "leases", "coordination.k8s.io", "") for v in ("get", "create", "update")],
    ("create", "events", "", ""), ("create", "events", "events.k8s.io", ""),
]
OPERATOR_DENIED = [
    ("delete", "deployments", "apps", ""), ("get", "secrets", "", ""), ("list", "secrets", "", ""),
    ("update", "entitlements", "tokenpools.dev", ""), ("create", "entitlements", "tokenpools.dev", ""),
    ("delete", "entitlements", "tokenpools.dev", ""), ("delete", "leases", "coordination.k8s.io", ""),
    ("update", "globalentitlements", "tokenpools.dev", ""), ("delete", "globalentitlements", "tokenpools.dev", ""),
    ("patch", "deployments", "apps", "scale"), ("list", "pods", "", ""),
]
SCALER_ALLOWED = [
    *[(v, "deployments", "apps", "") for v in ("get", "list", "watch")],
    *[(v, "deployments", "apps", "scale") for v in ("get", "update", "patch")],
    *[(v, "endpointslices", "discovery.k8s.io", "") for v in ("get", "list", "watch")],
    *[(v, "horizontalpodautoscalers", "autoscaling", "") for v in ("get", "list", "watch")],
]
SCALER_DENIED = [
    ("delete", "deployments", "apps", ""), ("update", "deployments", "apps", ""),
    ("patch", "deployments", "apps", ""), ("create", "deployments", "apps", ""),
    ("get", "secrets", "", ""), ("list", "pods", "", ""), ("list", "services", "", ""),
    ("list", "entitlements", "tokenpools.dev", ""), ("create", "horizontalpodautoscalers", "autoscaling", ""),
]


def test_operator_may_do_what_it_needs_and_nothing_else(rbac, kube_namespace):
    op = rbac["operator"]
    for verb, resource, group, sub in OPERATOR_ALLOWED:
        assert can(op, kube_namespace, verb, resource, group, sub), f"operator cannot {verb} {resource}/{sub}"
    for verb, resource, group, sub in OPERATOR_DENIED:
        assert not can(op, kube_namespace, verb, resource, group, sub), f"operator may {verb} {resource}/{sub}"
    # Nothing in another namespace: the Role is namespaced.
    assert not can(op, "default", "list", "entitlements", "tokenpools.dev")
    # Real calls: allowed, then 403.
    CustomObjectsApi(op).list_namespaced_custom_object("tokenpools.dev", "v1alpha1", kube_namespace, "entitlements")
    for call in (lambda: CoreV1Api(op).list_namespaced_secret(kube_namespace),
                 lambda: AppsV1Api(op).delete_namespaced_deployment("anything", kube_namespace)):
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403, err.value.body


def test_scaler_may_do_what_it_needs_and_nothing_else(rbac, kube, kube_namespace):
    sc = rbac["scaler"]
    for verb, resource, group, sub in SCALER_ALLOWED:
        assert can(sc, kube_namespace, verb, resource, group, sub), f"scaler cannot {verb} {resource}/{sub}"
    for verb, resource, group, sub in SCALER_DENIED:
        assert not can(sc, kube_namespace, verb, resource, group, sub), f"scaler may {verb} {resource}/{sub}"
    # A real Deployment to scale: the scale subresource works, deleting it or reading a Secret is 403.
    dep = kubernetes.client.V1Deployment(
        metadata=kubernetes.client.V1ObjectMeta(name="pool-vllm", labels={"tokenpools.dev/pool": "p"}),
        spec=kubernetes.client.V1DeploymentSpec(
            replicas=0,
            selector=kubernetes.client.V1LabelSelector(match_labels={"app": "pool-vllm"}),
            template=kubernetes.client.V1PodTemplateSpec(
                metadata=kubernetes.client.V1ObjectMeta(labels={"app": "pool-vllm"}),
                spec=kubernetes.client.V1PodSpec(containers=[kubernetes.client.V1Container(name="c", image="x")]),
            ),
        ),
    )
    AppsV1Api(kube).create_namespaced_deployment(kube_namespace, dep)
    apps = AppsV1Api(sc)
    assert [d.metadata.name for d in apps.list_namespaced_deployment(kube_namespace).items] == ["pool-vllm"]
    apps.patch_namespaced_deployment_scale("pool-vllm", kube_namespace, {"spec": {"replicas": 0}},
                                           field_manager="tokenpools-scaler")
    for call in (lambda: apps.delete_namespaced_deployment("pool-vllm", kube_namespace),
                 lambda: apps.patch_namespaced_deployment("pool-vllm", kube_namespace, {"spec": {"paused": True}}),
                 lambda: CoreV1Api(sc).read_namespaced_secret("anything", kube_namespace)):
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403, err.value.body


def test_the_admitter_account_may_do_nothing(rbac, kube_namespace):
    ad = rbac["admitter"]
    for verb, resource, group in (("list", "entitlements", "tokenpools.dev"), ("get", "secrets", ""),
                                  ("list", "deployments", "apps"), ("create", "leases", "coordination.k8s.io")):
        assert not can(ad, kube_namespace, verb, resource, group), f"admitter may {verb} {resource}"
