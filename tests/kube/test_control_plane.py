"""The local control plane end to end: Deployment -> ReplicaSet -> Pods -> Node -> Ready -> EndpointSlice.

Everything above the node is the real thing (kube-apiserver, kube-controller-manager,
kube-scheduler on etcd); the node agent (tests/kube/node_agent.py) plays the kubelet and runs a vLLM
emulator per pod in a network namespace of its own.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import TypeVar

import kubernetes.client
import pytest
from kubernetes.client import (
    AppsV1Api,
    CoreV1Api,
    DiscoveryV1Api,
    RbacAuthorizationV1Api,
    V1Container,
    V1ContainerPort,
    V1Deployment,
    V1DeploymentSpec,
    V1HTTPGetAction,
    V1LabelSelector,
    V1ObjectMeta,
    V1PodSpec,
    V1PodTemplateSpec,
    V1Probe,
    V1Service,
    V1ServicePort,
    V1ServiceSpec,
)
from kubernetes.client.exceptions import ApiException

from tests.kube.node_agent import NodeAgent
from tokenpools.infra.kube_local import ControlPlane

T = TypeVar("T")
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
MODEL = "pool-a-llama"


def eventually(what: str, check: Callable[[], T | None], timeout: float = 60.0, every: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except (ApiException, OSError, AssertionError) as exc:
            last = exc
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; last: {last!r:.500}")
        time.sleep(every)


def vllm_deployment(name: str, replicas: int) -> V1Deployment:
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "vllm"}
    container = V1Container(
        name="vllm",
        image="vllm/vllm-openai:v0.11.0",
        args=["--model", "meta-llama/Llama-3.1-8B-Instruct", "--served-model-name", MODEL, "--port", "8000",
              "--scheduling-policy", "priority"],
        ports=[V1ContainerPort(name="http", container_port=8000)],
        readiness_probe=V1Probe(http_get=V1HTTPGetAction(path="/health", port="http"), period_seconds=2),
    )
    return V1Deployment(
        metadata=V1ObjectMeta(name=name, labels=labels),
        spec=V1DeploymentSpec(
            replicas=replicas,
            selector=V1LabelSelector(match_labels=labels),
            template=V1PodTemplateSpec(
                metadata=V1ObjectMeta(labels=labels),
                spec=V1PodSpec(containers=[container], termination_grace_period_seconds=2),
            ),
        ),
    )


def ready_endpoint_ips(discovery: DiscoveryV1Api, namespace: str, service: str) -> set[str]:
    slices = discovery.list_namespaced_endpoint_slice(namespace, label_selector=f"kubernetes.io/service-name={service}")
    return {
        address
        for item in slices.items
        for endpoint in item.endpoints or []
        if endpoint.conditions is not None and endpoint.conditions.ready
        for address in endpoint.addresses
    }


def get_json(url: str) -> object:
    with DIRECT.open(url, timeout=5) as response:
        return json.loads(response.read())


def test_deployment_pods_become_ready_endpoints_and_scale_down(
    kube: kubernetes.client.ApiClient, node_agent: NodeAgent, kube_namespace: str
) -> None:
    ns, name = kube_namespace, "vllm-pool-a"
    apps, core, discovery = AppsV1Api(kube), CoreV1Api(kube), DiscoveryV1Api(kube)
    # Pods need the namespace's default ServiceAccount, which the controller-manager creates.
    eventually("the default ServiceAccount", lambda: core.read_namespaced_service_account("default", ns))
    apps.create_namespaced_deployment(ns, vllm_deployment(name, replicas=2))
    core.create_namespaced_service(ns, V1Service(
        metadata=V1ObjectMeta(name=name),
        spec=V1ServiceSpec(selector={"app.kubernetes.io/name": name},
                           ports=[V1ServicePort(name="http", port=8000, target_port="http")]),
    ))

    def ready_replicas() -> bool:
        status = apps.read_namespaced_deployment(name, ns).status
        return status is not None and status.ready_replicas == 2

    eventually("readyReplicas 2", ready_replicas)
    pods = core.list_namespaced_pod(ns, label_selector=f"app.kubernetes.io/name={name}").items
    assert len(pods) == 2
    assert {p.spec.node_name for p in pods} == {node_agent.node_name}  # bound by the real scheduler
    assert all(p.metadata.owner_references[0].kind == "ReplicaSet" for p in pods)  # made by the real controller
    pod_ips = {p.status.pod_ip for p in pods}
    assert all(ip.startswith(f"10.250.{node_agent.k}.") for ip in pod_ips)
    eventually("both pod IPs ready in the EndpointSlice", lambda: ready_endpoint_ips(discovery, ns, name) == pod_ips)

    for ip in pod_ips:  # from the host namespace to each pod's own namespace
        models = get_json(f"http://{ip}:8000/v1/models")
        assert isinstance(models, dict)
        assert [m["id"] for m in models["data"]] == [MODEL]
    assert len(node_agent.netns_names()) >= 2

    apps.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": 1}})

    def one_pod_left() -> list[kubernetes.client.V1Pod] | None:
        left = core.list_namespaced_pod(ns, label_selector=f"app.kubernetes.io/name={name}").items
        return left if len(left) == 1 else None

    (survivor,) = eventually("one pod left (the other deleted with grace 0 by the agent)", one_pod_left)
    gone = (pod_ips - {survivor.status.pod_ip}).pop()
    gone_pod = next(p for p in pods if p.status.pod_ip == gone)
    eventually("the removed pod's endpoint gone",
               lambda: ready_endpoint_ips(discovery, ns, name) == {survivor.status.pod_ip})
    assert node_agent.pod_netns(ns, gone_pod.metadata.name) is None
    assert f"tpns{node_agent.k}-{gone.rsplit('.', 1)[1]}" not in node_agent.netns_names()
    with pytest.raises(OSError):
        get_json(f"http://{gone}:8000/v1/models")
    assert get_json(f"http://{survivor.status.pod_ip}:8000/v1/models")
    assert not node_agent.errors


def test_service_account_token_is_that_service_account(
    control_plane: ControlPlane, kube: kubernetes.client.ApiClient, kube_namespace: str
) -> None:
    ns = kube_namespace
    core, rbac = CoreV1Api(kube), RbacAuthorizationV1Api(kube)
    core.create_namespaced_service_account(ns, kubernetes.client.V1ServiceAccount(metadata=V1ObjectMeta(name="reader")))
    rbac.create_namespaced_role(ns, kubernetes.client.V1Role(
        metadata=V1ObjectMeta(name="pod-reader"),
        rules=[kubernetes.client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list"])],
    ))
    rbac.create_namespaced_role_binding(ns, kubernetes.client.V1RoleBinding(
        metadata=V1ObjectMeta(name="reader-reads-pods"),
        role_ref=kubernetes.client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"),
        subjects=[kubernetes.client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=ns)],
    ))
    token = control_plane.service_account_token(ns, "reader", seconds=600)

    with control_plane.api_client(token) as client:
        review = kubernetes.client.AuthenticationV1Api(client).create_self_subject_review(
            kubernetes.client.V1SelfSubjectReview()
        )
        assert review.status.user_info.username == f"system:serviceaccount:{ns}:reader"
        assert f"system:serviceaccounts:{ns}" in review.status.user_info.groups
        sa_core = CoreV1Api(client)
        assert sa_core.list_namespaced_pod(ns).items == []  # allowed by its Role
        with pytest.raises(ApiException) as denied:
            sa_core.list_namespaced_secret(ns)  # not granted
        assert denied.value.status == 403
        assert f"system:serviceaccount:{ns}:reader" in str(denied.value.body)

    config = control_plane.kubeconfig_for(token, control_plane.data_dir / "reader.kubeconfig")
    assert token in config.read_text()
