"""KubernetesActuator on a real control plane, as a ServiceAccount with only the scaler's Role.

The admin makes a pool's Deployment (pods labelled ``app.kubernetes.io/component: vllm``, which the
node agent runs as vLLM emulators in network namespaces of their own) and its Service, both labelled
``tokenpools.dev/pool``. The actuator then runs with a token of a ServiceAccount bound to ``SCALER_RULES``
and nothing else: every call it makes in this test is allowed by those rules, and a few it must not
need (pods, services, secrets, deleting Deployments) are checked to be denied.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import kubernetes.client
import pytest
from kubernetes.client import (
    AppsV1Api,
    AutoscalingV2Api,
    CoreV1Api,
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
    V1PolicyRule,
    V1Probe,
    V1Service,
    V1ServicePort,
    V1ServiceSpec,
)
from kubernetes.client.exceptions import ApiException

from scaler.kube.actuator import FIELD_MANAGER, AutoscalerConflict, Bounds, KubernetesActuator, PoolView
from scaler.kube.client import api_client
from scaler.loop import ScalerLoop
from schemas.records import ReplicasReport
from tests.factories import pool as make_pool
from tests.kube.node_agent import NodeAgent
from tokenpools.infra.kube_local import ControlPlane

T = TypeVar("T")
POOL, DEPLOYMENT, SERVICE, MODEL = "llama", "vllm-llama", "vllm-llama", "llama-3-8b"
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # pod IPs: never through a proxy

# The scaler's least privilege (the chart's scaler Role must grant the same, and this test shows it is enough).
SCALER_RULES = [
    V1PolicyRule(api_groups=["apps"], resources=["deployments"], verbs=["get", "list", "watch"]),
    V1PolicyRule(api_groups=["apps"], resources=["deployments/scale"], verbs=["get", "update", "patch"]),
    V1PolicyRule(api_groups=["discovery.k8s.io"], resources=["endpointslices"], verbs=["get", "list", "watch"]),
    V1PolicyRule(api_groups=["autoscaling"], resources=["horizontalpodautoscalers"], verbs=["get", "list", "watch"]),
]


async def eventually(what: str, check: Callable[[], Awaitable[T | None]], within: float = 90.0) -> T:
    deadline = time.monotonic() + within
    last: object = None
    while True:
        try:
            value = await check()
            if value:
                return value
            last = value
        except (ApiException, OSError, AssertionError) as exc:
            last = exc
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; last: {last!r:.500}")
        await asyncio.sleep(0.2)


def vllm_deployment(replicas: int) -> V1Deployment:
    pod_labels = {"app.kubernetes.io/name": DEPLOYMENT, "app.kubernetes.io/component": "vllm"}
    container = V1Container(
        name="vllm", image="vllm/vllm-openai:v0.11.0",
        args=["--model", "meta-llama/Llama-3.1-8B-Instruct", "--served-model-name", MODEL, "--port", "8000",
              "--scheduling-policy", "priority"],
        ports=[V1ContainerPort(name="http", container_port=8000)],
        readiness_probe=V1Probe(http_get=V1HTTPGetAction(path="/health", port="http"), period_seconds=1),
    )
    return V1Deployment(
        metadata=V1ObjectMeta(name=DEPLOYMENT, labels={"tokenpools.dev/pool": POOL, **pod_labels}),
        spec=V1DeploymentSpec(
            replicas=replicas, selector=V1LabelSelector(match_labels=pod_labels),
            template=V1PodTemplateSpec(metadata=V1ObjectMeta(labels=pod_labels),
                                       spec=V1PodSpec(containers=[container], termination_grace_period_seconds=2))))


def scaler_identity(control_plane: ControlPlane, kube: kubernetes.client.ApiClient, ns: str, path: Path) -> Path:
    """A ServiceAccount bound to SCALER_RULES only; returns a kubeconfig with its token."""
    core, rbac = CoreV1Api(kube), RbacAuthorizationV1Api(kube)
    core.create_namespaced_service_account(ns, kubernetes.client.V1ServiceAccount(metadata=V1ObjectMeta(name="scaler")))
    rbac.create_namespaced_role(ns, kubernetes.client.V1Role(metadata=V1ObjectMeta(name="scaler"), rules=SCALER_RULES))
    rbac.create_namespaced_role_binding(ns, kubernetes.client.V1RoleBinding(
        metadata=V1ObjectMeta(name="scaler"),
        role_ref=kubernetes.client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="scaler"),
        subjects=[kubernetes.client.RbacV1Subject(kind="ServiceAccount", name="scaler", namespace=ns)]))
    return control_plane.kubeconfig_for(control_plane.service_account_token(ns, "scaler", seconds=1800), path)


def allowed(api: kubernetes.client.ApiClient, ns: str, verb: str, resource: str, group: str = "",
            subresource: str = "") -> bool:
    review = kubernetes.client.AuthorizationV1Api(api).create_self_subject_access_review(
        kubernetes.client.V1SelfSubjectAccessReview(spec=kubernetes.client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=kubernetes.client.V1ResourceAttributes(
                namespace=ns, verb=verb, group=group, resource=resource, subresource=subresource or None))))
    return bool(review.status.allowed)


def get_json(url: str) -> Any:
    with DIRECT.open(url, timeout=5) as response:
        return json.loads(response.read())


def running_pod_urls(core: CoreV1Api, ns: str) -> list[str]:
    pods = core.list_namespaced_pod(ns, label_selector=f"app.kubernetes.io/name={DEPLOYMENT}").items
    return sorted(f"http://{p.status.pod_ip}:8000" for p in pods
                  if p.metadata.deletion_timestamp is None and p.status is not None and p.status.pod_ip
                  and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or []))


async def test_the_actuator_scales_reads_ready_endpoints_and_yields_to_an_hpa(
    control_plane: ControlPlane, kube: kubernetes.client.ApiClient, node_agent: NodeAgent, kube_namespace: str,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    ns = kube_namespace
    apps, core, hpas = AppsV1Api(kube), CoreV1Api(kube), AutoscalingV2Api(kube)
    kubeconfig = scaler_identity(control_plane, kube, ns, tmp_path / "scaler.kubeconfig")
    await eventually("the default ServiceAccount", lambda: asyncio.to_thread(
        core.read_namespaced_service_account, "default", ns))
    apps.create_namespaced_deployment(ns, vllm_deployment(replicas=1))
    core.create_namespaced_service(ns, V1Service(
        metadata=V1ObjectMeta(name=SERVICE, labels={"tokenpools.dev/pool": POOL}),
        spec=V1ServiceSpec(selector={"app.kubernetes.io/name": DEPLOYMENT},
                           ports=[V1ServicePort(name="http", port=8000, target_port="http")])))

    api = api_client(kubeconfig)  # the scaler's own identity, through the scaler's kubeconfig loader
    for verb, resource, group in [("list", "pods", ""), ("get", "services", ""), ("list", "secrets", ""),
                                  ("delete", "deployments", "apps"), ("create", "deployments", "apps")]:
        assert not allowed(api, ns, verb, resource, group), f"the scaler's Role must not allow {verb} {resource}"
    assert allowed(api, ns, "patch", "deployments", "apps", subresource="scale")

    actuator = KubernetesActuator(api, ns, {POOL: Bounds(1, 4)}, ttl=0.2)
    try:
        started = time.monotonic()
        first = await eventually("one Ready endpoint", lambda: actuator.endpoints(POOL))
        first_ready = time.monotonic() - started
        assert first == running_pod_urls(core, ns) and await actuator.current(POOL) == 1
        assert (await actuator.view(POOL)).services == (SERVICE,)

        # -- scale up through the scale subresource, as tokenpools-scaler ---------------------------------
        await actuator.scale(POOL, 3)
        dep = apps.read_namespaced_deployment(DEPLOYMENT, ns)
        assert dep.spec.replicas == 3 and await actuator.current(POOL) == 3
        managers = {(m.manager, m.operation, m.subresource) for m in dep.metadata.managed_fields}
        assert (FIELD_MANAGER, "Update", "scale") in managers
        scaled = time.monotonic()

        async def three() -> list[str] | None:
            urls = await actuator.endpoints(POOL)
            return urls if len(urls) == 3 and await actuator.ready(POOL) == 3 else None

        urls = await eventually("three Ready endpoints", three)
        ready_after = time.monotonic() - scaled
        assert urls == running_pod_urls(core, ns)
        assert all(u.startswith(f"http://10.250.{node_agent.k}.") for u in urls)
        for url in urls:  # each is a serving emulator in its own namespace
            assert [m["id"] for m in (await asyncio.to_thread(get_json, f"{url}/v1/models"))["data"]] == [MODEL]
        # The cross-check: the Deployment's status.readyReplicas agrees once both controllers have caught up.
        view = await eventually("readyReplicas 3 beside 3 endpoints", lambda: _view_if(actuator, 3))
        assert view.deployment == DEPLOYMENT and view.ready == 3

        # The loop publishes exactly these URLs on tokenpools.replicas.
        reports: list[ReplicasReport] = []

        async def publish(report: ReplicasReport) -> None:
            reports.append(report)

        loop = ScalerLoop({POOL: make_pool(POOL, replicas=1, max_replicas=4)}, actuator, publish=publish)
        await loop.report_all()
        assert [(r.pool, r.ready_replicas, r.endpoints) for r in reports] == [(POOL, 3, urls)]

        # The cache: a burst of the loop's calls within one TTL costs at most one snapshot (3 lists) and one scale read.
        actuator.ttl = 60.0
        await actuator.snapshot(fresh=True)
        before = actuator.requests
        for _ in range(100):
            await actuator.current(POOL)
            await actuator.ready(POOL)
            await actuator.endpoints(POOL)
        burst_requests = actuator.requests - before
        assert burst_requests <= 1
        actuator.ttl = 0.2

        # -- scale down: the others leave the endpoints once they terminate --------------------------------
        await actuator.scale(POOL, 1)
        assert apps.read_namespaced_deployment(DEPLOYMENT, ns).spec.replicas == 1

        async def one() -> list[str] | None:
            urls = await actuator.endpoints(POOL)
            return urls if len(urls) == 1 else None

        (survivor,) = await eventually("one Ready endpoint left", one)
        assert survivor in urls and await actuator.ready(POOL) == 1
        assert [survivor] == running_pod_urls(core, ns)

        # -- an HPA on the same Deployment: refuse, say so once, act again once it is gone -----------------
        hpas.create_namespaced_horizontal_pod_autoscaler(ns, kubernetes.client.V2HorizontalPodAutoscaler(
            metadata=V1ObjectMeta(name="vllm-cpu"),
            spec=kubernetes.client.V2HorizontalPodAutoscalerSpec(
                scale_target_ref=kubernetes.client.V2CrossVersionObjectReference(
                    api_version="apps/v1", kind="Deployment", name=DEPLOYMENT),
                min_replicas=1, max_replicas=3)))
        with caplog.at_level(logging.WARNING, "tokenpools.scaler.kube"):
            for _ in range(3):
                await actuator.scale(POOL, 2)
        assert apps.read_namespaced_deployment(DEPLOYMENT, ns).spec.replicas == 1
        refusals = [r.getMessage() for r in caplog.records if "refuses to scale" in r.getMessage()]
        assert len(refusals) == 1, refusals
        assert f"HorizontalPodAutoscaler {ns}/vllm-cpu" in refusals[0] and "would fight" in refusals[0]
        with pytest.raises(AutoscalerConflict, match="vllm-cpu"):
            await actuator.check(POOL)
        assert await actuator.endpoints(POOL) == [survivor]  # reading goes on: admitters keep their routes

        hpas.delete_namespaced_horizontal_pod_autoscaler("vllm-cpu", ns)
        await actuator.scale(POOL, 2)
        assert apps.read_namespaced_deployment(DEPLOYMENT, ns).spec.replicas == 2
        assert await actuator.conflict(POOL) is None
        await eventually("two Ready endpoints", lambda: _len_is(actuator.endpoints(POOL), 2))
        print(f"\nactuator: first endpoint {first_ready:.1f} s after the Deployment; 1 -> 3 Ready in "
              f"EndpointSlices {ready_after:.1f} s after scale; {burst_requests} API requests for 300 calls "
              f"in one TTL; {actuator.requests} requests in all")
    finally:
        await actuator.close()
    assert not node_agent.errors


async def _view_if(actuator: KubernetesActuator, ready: int) -> PoolView | None:
    view = await actuator.view(POOL)
    return view if view.deployment_ready == ready == view.ready else None


async def _len_is(urls: Awaitable[list[str]], n: int) -> bool:
    return len(await urls) == n


async def test_two_scalers_one_lease_only_the_leader_scales_and_the_other_takes_over(
    control_plane: ControlPlane, kube: kubernetes.client.ApiClient, kube_namespace: str,
) -> None:
    """Two scaler replicas (the chart runs two) on one Lease: the follower's scale is a no-op; the leader
    is then lost without releasing the Lease (its tasks stop, as a crashed pod's do) and the other takes
    over within the lease duration; no decision is applied by both. No pod runs here: only the
    Deployment's spec.replicas and the scale patches sent are counted."""
    from scaler.kube.leader import LeaderElector, LeaseSettings

    ns, apps = kube_namespace, AppsV1Api(kube)
    apps.create_namespaced_deployment(ns, vllm_deployment(replicas=1))
    rbac = RbacAuthorizationV1Api(kube)
    rules = [*SCALER_RULES, V1PolicyRule(api_groups=["coordination.k8s.io"], resources=["leases"],
                                         verbs=["get", "create", "update"])]
    rbac.create_namespaced_role(ns, kubernetes.client.V1Role(metadata=V1ObjectMeta(name="scaler"), rules=rules))
    CoreV1Api(kube).create_namespaced_service_account(
        ns, kubernetes.client.V1ServiceAccount(metadata=V1ObjectMeta(name="scaler")))
    rbac.create_namespaced_role_binding(ns, kubernetes.client.V1RoleBinding(
        metadata=V1ObjectMeta(name="scaler"),
        role_ref=kubernetes.client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="scaler"),
        subjects=[kubernetes.client.RbacV1Subject(kind="ServiceAccount", name="scaler", namespace=ns)]))
    token = control_plane.service_account_token(ns, "scaler", seconds=1800)
    lease = {"lease_duration": 4.0, "renew_deadline": 3.0, "retry_period": 0.5}
    electors, actuators = [], []
    for name in ("scaler-a", "scaler-b"):
        api = control_plane.api_client(token)
        elector = LeaderElector(api, LeaseSettings(ns, name, name="tokenpools-scaler", **lease))
        electors.append(elector)
        actuators.append(KubernetesActuator(api, ns, {POOL: Bounds(1, 4)}, ttl=0.0,
                                            may_act=lambda e=elector: e.is_leader))
    try:
        electors[0].start()
        await eventually("scaler-a leads", lambda: _true(electors[0].is_leader))
        electors[1].start()
        await asyncio.sleep(1.0)  # b has seen a's Lease renewed: it must not lead
        assert not electors[1].is_leader

        def replicas() -> int:
            return int(apps.read_namespaced_deployment_scale(DEPLOYMENT, ns).spec.replicas)

        for actuator in actuators:  # both replicas decide 3 from the same pool state
            await actuator.scale(POOL, 3)
        assert replicas() == 3 and [a.patches for a in actuators] == [1, 0]

        coordination = kubernetes.client.CoordinationV1Api(kube)
        await electors[0].stop(release=False)  # lost, not released
        last_renew = coordination.read_namespaced_lease("tokenpools-scaler", ns).spec.renew_time
        await eventually("scaler-b leads", lambda: _true(electors[1].is_leader), within=30)
        record = coordination.read_namespaced_lease("tokenpools-scaler", ns).spec
        assert record.holder_identity == "scaler-b" and record.lease_transitions >= 1
        # The Lease's own record, not the test's clock: b acquired it within a lease duration of a's last
        # renewal, plus the retry period it polls at and one more for the API round trips.
        took_over = (record.acquire_time - last_renew).total_seconds()
        assert took_over <= lease["lease_duration"] + 2 * lease["retry_period"], took_over
        for actuator in actuators:
            await actuator.scale(POOL, 2)
        assert replicas() == 2 and [a.patches for a in actuators] == [1, 1]
        print(f"\nscaler Lease: taken over {took_over:.1f} s after the leader was lost "
              f"(lease {lease['lease_duration']:g} s)")
    finally:
        for elector in electors:
            await elector.stop()
        for actuator in actuators:
            await actuator.close()


async def _true(value: bool) -> bool:
    return value
