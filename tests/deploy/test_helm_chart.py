"""The Helm chart (deploy/helm/tokenpools), linted and rendered by a real helm.

helm is built from its Go module once per version and cached outside the repo
(``tokenpools.infra.helm.ensure_helm``); on a cold machine the first test waits for the build, which
prints its progress. The API server's view of the rendered objects is tests/kube/test_chart_dry_run.py.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenpools.infra.helm import HELM_VERSION, ensure_helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "tokenpools"
EXAMPLE = CHART / "examples" / "values-llama.yaml"
RELEASE, NAMESPACE = "tp", "tokenpools"
PREFIX = f"{RELEASE}-tokenpools"

pytestmark = pytest.mark.timeout(1800)  # the first test may wait for a cold helm build

# The least-privilege rules, exactly (docs/kubernetes.md "RBAC" says why each is there).
OPERATOR_RULES = [
    {"apiGroups": ["tokenpools.dev"], "resources": ["tokenpools", "entitlements", "globalentitlements"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["tokenpools.dev"],
     "resources": ["tokenpools/status", "entitlements/status", "globalentitlements/status"],
     "verbs": ["update", "patch"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
]
SCALER_RULES = [
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "update", "patch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
]
CR_EDITOR_RULES = [
    {"apiGroups": ["tokenpools.dev"], "resources": ["tokenpools", "entitlements", "globalentitlements"],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
]
NO_API_ACCESS = ("admitter", "worker", "history", "vllm")


@pytest.fixture(scope="session")
def helm(pytestconfig: pytest.Config) -> Iterator[Path]:
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        path = ensure_helm()
    yield path


def run(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120)


def render(helm: Path, *args: str) -> list[dict[str, Any]]:
    result = run(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


VALUE_SETS = {"default": (), "example": ("-f", str(EXAMPLE))}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def objects(request: pytest.FixtureRequest, helm: Path) -> list[dict[str, Any]]:
    return render(helm, *VALUE_SETS[request.param])


@pytest.fixture(scope="module")
def example(helm: Path) -> list[dict[str, Any]]:
    return render(helm, "-f", str(EXAMPLE))


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def test_helm_is_the_pinned_version(helm):
    out = run(helm, "version", "--short").stdout
    assert out.startswith(HELM_VERSION), out


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_lint_strict(helm, values):
    result = run(helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, *VALUE_SETS[values])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_the_objects_of_the_chart(objects):
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for component in ("admitter", "worker", "operator", "scaler", "history"):
        assert ("Deployment", f"{PREFIX}-{component}") in kinds
        assert ("ServiceAccount", f"{PREFIX}-{component}") in kinds
    assert ("Service", f"{PREFIX}-admitter") in kinds
    assert ("PodDisruptionBudget", f"{PREFIX}-admitter") in kinds
    assert ("Service", f"{PREFIX}-operator-webhook") in kinds
    assert ("ValidatingWebhookConfiguration", f"{NAMESPACE}-{PREFIX}-operator-entitlements") in kinds
    assert not {k for k, _ in kinds} & {"ClusterRole", "ClusterRoleBinding"}, "nothing cluster-wide but the webhook"


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]


def test_every_pod_runs_non_root_read_only(objects):
    for name, pod in pod_specs(objects):
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001, name
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            where = f"{name}/{c['name']}"
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where}: no writable /tmp"
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], where


def test_every_container_has_requests_and_a_memory_limit(objects):
    for name, pod in pod_specs(objects):
        for c in pod["containers"]:
            res = c["resources"]
            assert {"cpu", "memory"} <= res["requests"].keys(), f"{name}/{c['name']}"
            assert "memory" in res["limits"], f"{name}/{c['name']}"


def test_probes(objects):
    pods = dict(pod_specs(objects))
    admitter = pods[f"{PREFIX}-admitter"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert admitter[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    for component in ("worker", "history"):  # they bind 127.0.0.1 only: the probe runs inside the pod
        probe = pods[f"{PREFIX}-{component}"]["containers"][0]["livenessProbe"]
        assert "127.0.0.1" in " ".join(probe["exec"]["command"])
    assert pods[f"{PREFIX}-operator"]["containers"][0]["readinessProbe"]["tcpSocket"] == {"port": "webhook"}


def test_service_accounts_and_tokens(objects):
    accounts = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceAccount"}
    pods = dict(pod_specs(objects))
    for component in NO_API_ACCESS:
        assert accounts[f"{PREFIX}-{component}"]["automountServiceAccountToken"] is False
    for name, pod in pods.items():
        account = pod["serviceAccountName"]
        assert account in accounts, name
        component = account.removeprefix(f"{PREFIX}-")
        assert pod["automountServiceAccountToken"] is (component in ("operator", "scaler")), name
    # One account per component: no two Deployments of different components share one.
    owners: dict[str, set[str]] = {}
    for name, pod in pods.items():
        owners.setdefault(pod["serviceAccountName"], set()).add(name.split("-vllm-")[0])
    assert all(len(v) == 1 for v in owners.values()), owners


def test_rbac_is_exactly_least_privilege(objects):
    roles = {o["metadata"]["name"]: o["rules"] for o in objects if o["kind"] == "Role"}
    assert roles == {f"{PREFIX}-operator": OPERATOR_RULES, f"{PREFIX}-scaler": SCALER_RULES,
                     f"{PREFIX}-cr-editor": CR_EDITOR_RULES}
    bindings = {o["metadata"]["name"]: o for o in objects if o["kind"] == "RoleBinding"}
    for component in ("operator", "scaler"):
        b = bindings[f"{PREFIX}-{component}"]
        role = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{PREFIX}-{component}"}
        assert b["roleRef"] == role
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": f"{PREFIX}-{component}", "namespace": NAMESPACE}]
    assert len(bindings) == 2  # the CR editor Role is bound only to the subjects values.crEditors names


def test_cr_editors_are_bound_to_the_editor_role_only(helm):
    subject = {"kind": "Group", "name": "platform-engineers", "apiGroup": "rbac.authorization.k8s.io"}
    values = Path(tempfile.mkdtemp()) / "editors.yaml"
    values.write_text(yaml.safe_dump({"crEditors": [subject]}))
    objects = render(helm, "-f", str(values))
    binding = one(objects, "RoleBinding", f"{PREFIX}-cr-editor")
    assert binding["subjects"] == [subject]
    role = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{PREFIX}-cr-editor"}
    assert binding["roleRef"] == role
    bad = Path(tempfile.mkdtemp()) / "bad.yaml"
    bad.write_text(yaml.safe_dump({"crEditors": [{"kind": "Robot", "name": "x"}]}))
    result = run(helm, "template", "t", str(CHART), "-f", str(bad))
    assert result.returncode != 0 and "crEditors" in result.stderr, result.stderr


def test_two_scalers_elect_one_leader(objects):
    scaler = one(objects, "Deployment", f"{PREFIX}-scaler")
    assert scaler["spec"]["replicas"] == 2
    args = scaler["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--leader-election" in args and f"--lease-name={PREFIX}-scaler" in args
    assert "--identity=$(POD_NAME)" in args


def test_operator_and_webhook(objects):
    pods = dict(pod_specs(objects))
    op = one(objects, "Deployment", f"{PREFIX}-operator")
    assert op["spec"]["replicas"] == 2
    args = pods[f"{PREFIX}-operator"]["containers"][0]["args"]
    assert args[0] == "operator" and "--webhook-port=9443" in args and "--namespace=$(POD_NAMESPACE)" in args
    assert any(a.startswith("--bootstrap=") for a in args)
    volumes = {v["name"]: v for v in pods[f"{PREFIX}-operator"]["volumes"]}
    assert volumes["webhook-tls"]["secret"]["secretName"]
    (hook,) = one(objects, "ValidatingWebhookConfiguration", f"{NAMESPACE}-{PREFIX}-operator-entitlements")["webhooks"]
    assert hook["clientConfig"]["service"]["name"] == f"{PREFIX}-operator-webhook"
    assert hook["clientConfig"]["service"]["namespace"] == NAMESPACE
    (rule,) = hook["rules"]
    assert rule["operations"] == ["CREATE", "UPDATE"] and rule["resources"] == ["entitlements"]
    assert rule["apiGroups"] == ["tokenpools.dev"]
    svc = one(objects, "Service", f"{PREFIX}-operator-webhook")
    assert svc["spec"]["ports"][0]["targetPort"] == "webhook"


def test_ca_bundle_from_values(helm):
    objects = render(helm, "--set", "operator.webhook.caBundle=Q0EK")
    (hook,) = one(objects, "ValidatingWebhookConfiguration", f"{NAMESPACE}-{PREFIX}-operator-entitlements")["webhooks"]
    assert hook["clientConfig"]["caBundle"] == "Q0EK"


def test_component_args(objects):
    pods = dict(pod_specs(objects))
    worker = pods[f"{PREFIX}-worker"]["containers"][0]["args"]
    assert worker[:2] == ["streams", "worker"] and "--web-port=6066" in worker
    scaler = pods[f"{PREFIX}-scaler"]["containers"][0]["args"]
    assert scaler[0] == "scaler" and "--actuator=kubernetes" in scaler
    history = pods[f"{PREFIX}-history"]["containers"][0]["args"]
    assert history[:2] == ["history", "sink"]
    admitter = pods[f"{PREFIX}-admitter"]["containers"][0]["args"]
    assert "--host=0.0.0.0" in admitter and "--discover" in admitter


def test_example_vllm_pool(example):
    dep = one(example, "Deployment", f"{PREFIX}-vllm-llama-3-8b")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels["tokenpools.dev/pool"] == "llama-3-8b" and labels["app.kubernetes.io/component"] == "vllm"
    assert dep["metadata"]["labels"]["tokenpools.dev/pool"] == "llama-3-8b"
    assert dep["spec"]["replicas"] == 4  # replicas.initial (lookup finds no live Deployment here)
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["vllm"] and c["args"][:2] == ["serve", "meta-llama/Llama-3.1-8B-Instruct"]
    for flag in ("--scheduling-policy=priority", "--max-num-seqs=256", "--gpu-memory-utilization=0.9",
                 "--port=8000", "--served-model-name=llama-3-8b", "--max-model-len=8192"):
        assert flag in c["args"], flag
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    svc = one(example, "Service", f"{PREFIX}-vllm-llama-3-8b")
    assert svc["metadata"]["labels"]["tokenpools.dev/pool"] == "llama-3-8b"
    assert [p["name"] for p in svc["spec"]["ports"]] == ["http"]  # the port the actuator reads
    pool = one(example, "TokenPool", "llama-3-8b")
    assert pool["spec"]["replicaScheduling"] == "priority"
    assert {o["metadata"]["name"] for o in example if o["kind"] == "Entitlement"} >= {"acme-prod", "batchco-spot"}
    config = yaml.safe_load_all(one(example, "ConfigMap", f"{PREFIX}-pools")["data"]["pools.yaml"])
    assert [d["metadata"]["name"] for d in config if d] == ["llama-3-8b"]


def test_network_policies(example):
    pols = {o["metadata"]["name"]: o["spec"] for o in example if o["kind"] == "NetworkPolicy"}
    admitter = pols[f"{PREFIX}-admitter"]
    assert admitter["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}]  # from anywhere
    vllm = pols[f"{PREFIX}-vllm"]
    (rule,) = vllm["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "admitter"
    assert rule["ports"] == [{"port": 8000, "protocol": "TCP"}]
    for name in ("admitter", "worker", "operator", "scaler", "history"):
        egress = pols[f"{PREFIX}-{name}"]["egress"]
        ports = [p for r in egress for p in r.get("ports", [])]
        assert {"port": 53, "protocol": "UDP"} in ports, name
        kafka = [r for r in egress if {"port": 9092, "protocol": "TCP"} in r.get("ports", [])]
        assert kafka and kafka[0]["to"][0]["namespaceSelector"], name
        assert set(pols[f"{PREFIX}-{name}"]["policyTypes"]) == {"Ingress", "Egress"}


def test_crds_ship_in_crds_dir(helm):
    objects = render(helm, "--include-crds")
    names = {o["metadata"]["name"] for o in objects if o["kind"] == "CustomResourceDefinition"}
    assert names == {"tokenpools.tokenpools.dev", "entitlements.tokenpools.dev", "globalentitlements.tokenpools.dev"}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ("kafka: {bootstrap: 'kafka without a port'}\n", "/kafka/bootstrap"),
        ("admitter: {replicas: 0}\n", "/admitter/replicas"),
        ("pools: [{name: Bad_Name, spec: {model: m, perReplica: {}}}]\n", "/pools/0/name"),
        ("pools: [{name: p, spec: {model: m, perReplica: {}}, vllm: {enabled: true}}]\n",
         "/pools/0/vllm"),
        ("pools: [{name: p, spec: {model: m, perReplica: {}}, vllm: {enabld: true}}]\n", "enabld"),
        ("operator: {webhook: {failurePolicy: Sometimes}}\n", "/operator/webhook/failurePolicy"),
    ],
)
def test_broken_values_fail_with_a_clear_message(helm, tmp_path, values, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_text(values, encoding="utf-8")
    lint = run(helm, "lint", "--strict", str(CHART), "-f", str(bad))
    template = run(helm, "template", RELEASE, str(CHART), "-f", str(bad))
    assert lint.returncode != 0 and template.returncode != 0
    assert expected in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    assert expected in template.stderr, template.stderr
