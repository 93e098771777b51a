"""KubernetesActuator without an API server: endpoint filtering on recorded EndpointSlices, pod
ownership by generated name, the HPA rule and its message, the cache, and the refusal said once.

The real thing (a real kube-apiserver and controller-manager, a least-privilege ServiceAccount) is
tests/kube/test_actuator.py.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from kubernetes import client

from scaler.kube.actuator import (
    AutoscalerConflict,
    Bounds,
    DeploymentNotFound,
    KubernetesActuator,
    hpas_targeting,
    pod_of,
    ready_endpoints,
)

POOL = "llama"
DEP = "vllm-llama"


def endpoint(ip: str, pod: str, *, ready: bool | None = True, terminating: bool | None = False,
             kind: str = "Pod") -> dict[str, Any]:
    return {"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": terminating},
            "targetRef": {"kind": kind, "name": pod, "namespace": "ns"}}


def eps(endpoints: list[dict[str, Any]], *, ports: list[dict[str, Any]] | None = None, address_type: str = "IPv4",
        service: str = "vllm-llama", name: str = "vllm-llama-abcde") -> client.V1EndpointSlice:
    """An EndpointSlice as the API server returns it (camelCase JSON, as recorded from the controller)."""
    return client.V1EndpointSlice.from_dict({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": address_type,
        "metadata": {"name": name, "namespace": "ns",
                     "labels": {"kubernetes.io/service-name": service, "tokenpools.dev/pool": POOL}},
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}] if ports is None else ports,
        "endpoints": endpoints,
    })


def test_pods_of_a_deployment_by_generated_name() -> None:
    assert pod_of(DEP, "vllm-llama-5d8f7c9b4-x7k2p")
    assert not pod_of(DEP, "vllm-llama-canary-5d8f7c9b4-x7k2p")  # another Deployment's pods
    assert not pod_of(DEP, "vllm-llama-x7k2p")  # a bare pod from generateName "vllm-llama-"
    assert not pod_of(DEP, "other-5d8f7c9b4-x7k2p")
    assert not pod_of(DEP, "vllm-llama-5d8f7c9b4-X7K2P")
    # Long names: the base (ReplicaSet name + "-") is cut to 58 characters before the 5 random ones.
    long = "d" * 50
    assert pod_of(long, (f"{long}-5d8f7c9b4-")[:58] + "x7k2p")
    assert not pod_of(long, (f"{long}x-5d8f7c9b4-")[:58] + "x7k2p")
    longer = "e" * 60
    assert pod_of(longer, (f"{longer}-5d8f7c9b4-")[:58] + "abcde")


def test_only_ready_not_terminating_endpoints_of_the_deployments_pods() -> None:
    slices = [
        eps([endpoint("10.0.0.3", f"{DEP}-h-aaaaa"), endpoint("10.0.0.1", f"{DEP}-h-bbbbb"),
             endpoint("10.0.0.2", f"{DEP}-h-ccccc", ready=False),
             endpoint("10.0.0.4", f"{DEP}-h-ddddd", ready=False, terminating=True),
             endpoint("10.0.0.5", f"{DEP}-h-eeeee", ready=True, terminating=True),  # never both, still refused
             endpoint("10.0.0.6", f"{DEP}-canary-h-fffff"),  # the Service also selects another Deployment's pod
             endpoint("10.0.0.7", "some-node", kind="Node"),
             endpoint("10.0.0.8", f"{DEP}-h-ggggg", ready=None, terminating=None)]),  # unset: ready, by the API
        # The same pod in a second slice (a slice being replaced) is one endpoint.
        eps([endpoint("10.0.0.1", f"{DEP}-h-bbbbb")], name="vllm-llama-fghij"),
        eps([endpoint("10.0.0.9", f"{DEP}-h-hhhhh")], ports=[{"name": "metrics", "port": 9000}], name="s3"),
        eps([endpoint("fd00::9", f"{DEP}-h-iiiii")], address_type="IPv6", name="s4"),
        eps([endpoint("pod.example", f"{DEP}-h-jjjjj")], address_type="FQDN", name="s5"),
    ]
    assert ready_endpoints(slices, DEP, "http") == [
        "http://10.0.0.1:8000", "http://10.0.0.3:8000", "http://10.0.0.8:8000", "http://[fd00::9]:8000"]
    assert ready_endpoints(slices, DEP, "metrics") == ["http://10.0.0.9:9000"]
    # Without a port name, only a slice with a single port says which.
    two = eps([endpoint("10.0.0.1", f"{DEP}-h-bbbbb")], ports=[{"name": "http", "port": 8000},
                                                             {"name": "metrics", "port": 9000}])
    assert ready_endpoints([two], DEP, None) == []
    assert ready_endpoints([eps([endpoint("10.0.0.1", f"{DEP}-h-bbbbb")])], DEP, None) == ["http://10.0.0.1:8000"]
    assert ready_endpoints([eps([endpoint("10.0.0.1", f"{DEP}-h-bbbbb")], ports=[])], DEP, "http") == []


def hpa(name: str, target: str, kind: str = "Deployment",
        api_version: str = "apps/v1") -> client.V2HorizontalPodAutoscaler:
    return client.V2HorizontalPodAutoscaler.from_dict({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"scaleTargetRef": {"apiVersion": api_version, "kind": kind, "name": target}, "maxReplicas": 5}})


def test_hpas_targeting_the_deployment_and_the_message() -> None:
    hpas = [hpa("b-cpu", DEP), hpa("a-mem", DEP), hpa("other", "vllm-other"), hpa("rs", DEP, kind="ReplicaSet"),
            hpa("crd", DEP, api_version="example.com/v1")]
    assert hpas_targeting(hpas, DEP) == ["a-mem", "b-cpu"]
    assert hpas_targeting(hpas, "nothing") == []
    msg = str(AutoscalerConflict(POOL, "ns", DEP, ["vllm-cpu"]))
    assert "HorizontalPodAutoscaler ns/vllm-cpu" in msg and f"Deployment ns/{DEP}" in msg
    assert "two autoscalers on one Deployment would fight" in msg and "Delete the HPA" in msg


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeApi:
    """The four list/read/patch calls the actuator makes, on objects a test sets."""

    def __init__(self) -> None:
        self.deployments = [client.V1Deployment.from_dict({
            "metadata": {"name": DEP, "namespace": "ns", "labels": {"tokenpools.dev/pool": POOL}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "x"}},
                     "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": []}}},
            "status": {"readyReplicas": 2}})]
        self.slices = [eps([endpoint("10.0.0.1", f"{DEP}-h-aaaaa"), endpoint("10.0.0.2", f"{DEP}-h-bbbbb")])]
        self.hpas: list[client.V2HorizontalPodAutoscaler] = []
        self.replicas = 2
        self.calls: list[str] = []
        self.patches: list[tuple[dict[str, Any], str | None, str | None]] = []
        self.fail = False

    def _note(self, what: str) -> None:
        self.calls.append(what)
        if self.fail:
            raise client.exceptions.ApiException(status=503, reason="unavailable")

    def list_namespaced_deployment(self, ns: str, **kw: Any) -> Any:
        self._note("deployments")
        assert kw["label_selector"] == "tokenpools.dev/pool"
        return client.V1DeploymentList(items=self.deployments)

    def list_namespaced_endpoint_slice(self, ns: str, **kw: Any) -> Any:
        self._note("slices")
        return client.V1EndpointSliceList(items=self.slices)

    def list_namespaced_horizontal_pod_autoscaler(self, ns: str, **kw: Any) -> Any:
        self._note("hpas")
        return client.V2HorizontalPodAutoscalerList(items=self.hpas)

    def read_namespaced_deployment_scale(self, name: str, ns: str, **kw: Any) -> Any:
        self._note("scale")
        return client.V1Scale(spec=client.V1ScaleSpec(replicas=self.replicas))

    def patch_namespaced_deployment_scale(self, name: str, ns: str, body: dict[str, Any], **kw: Any) -> Any:
        self._note("patch")
        self.patches.append((body, kw.get("field_manager"), kw.get("_content_type")))
        self.replicas = body["spec"]["replicas"]
        return client.V1Scale(spec=client.V1ScaleSpec(replicas=self.replicas))


@pytest.fixture
def fake() -> tuple[KubernetesActuator, FakeApi, Clock]:
    api, clock = FakeApi(), Clock()
    act = KubernetesActuator(client.ApiClient(), "ns", {POOL: Bounds(1, 4)}, ttl=1.0, clock=clock)
    act.apps = act.discovery = act.autoscaling = api  # type: ignore[assignment]
    return act, api, clock


def test_one_snapshot_per_ttl_answers_every_call(fake: tuple[KubernetesActuator, FakeApi, Clock]) -> None:
    act, api, clock = fake

    async def ticks(n: int) -> None:
        for _ in range(n):
            assert (await act.current(POOL), await act.ready(POOL)) == (2, 2)
            assert await act.endpoints(POOL) == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]

    asyncio.run(ticks(50))
    assert sorted(api.calls) == ["deployments", "hpas", "scale", "slices"] and act.requests == 4
    clock.now = 1.5
    asyncio.run(ticks(50))
    assert act.requests == 8
    with pytest.raises(KeyError):
        asyncio.run(act.ready("other"))


def test_scale_patches_the_subresource_clamped_and_caches_the_result(
        fake: tuple[KubernetesActuator, FakeApi, Clock]) -> None:
    act, api, _ = fake

    async def go() -> tuple[int, int]:
        await act.scale(POOL, 3)
        a = await act.current(POOL)
        await act.scale(POOL, 99)
        return a, await act.current(POOL)

    assert asyncio.run(go()) == (3, 4)
    assert api.patches == [({"spec": {"replicas": 3}}, "tokenpools-scaler", "application/merge-patch+json"),
                           ({"spec": {"replicas": 4}}, "tokenpools-scaler", "application/merge-patch+json")]
    assert "scale" not in api.calls  # current() after scale() is the patch's answer


def test_an_hpa_makes_it_refuse_said_once_until_the_hpa_is_gone(
        fake: tuple[KubernetesActuator, FakeApi, Clock], caplog: pytest.LogCaptureFixture) -> None:
    act, api, _ = fake
    api.hpas = [hpa("vllm-cpu", DEP)]

    async def tries(n: int) -> None:
        for _ in range(n):
            await act.scale(POOL, 3)

    with caplog.at_level(logging.INFO, "tokenpools.scaler.kube"):
        asyncio.run(tries(5))
        assert api.patches == [] and api.calls.count("hpas") == 6  # listed afresh before every scale
        refusals = [r.getMessage() for r in caplog.records if "refuses" in r.getMessage()]
        assert len(refusals) == 1 and "ns/vllm-cpu" in refusals[0] and "would fight" in refusals[0]
        found = asyncio.run(act.conflict(POOL))
        assert found is not None and found.hpas == ("vllm-cpu",)
        with pytest.raises(AutoscalerConflict, match="vllm-cpu"):
            asyncio.run(act.check(POOL))
        # Reading goes on while it refuses: the loop still publishes the pool's endpoints.
        assert asyncio.run(act.ready(POOL)) == 2
        api.hpas = []
        asyncio.run(tries(2))
    assert [p[0] for p in api.patches] == [{"spec": {"replicas": 3}}] * 2
    assert sum("scaling it again" in r.getMessage() for r in caplog.records) == 1


def test_missing_or_ambiguous_deployment(fake: tuple[KubernetesActuator, FakeApi, Clock]) -> None:
    act, api, clock = fake
    api.deployments = []
    with pytest.raises(DeploymentNotFound, match=r"no Deployment has label tokenpools\.dev/pool=llama in namespace ns"):
        asyncio.run(act.current(POOL))
    assert asyncio.run(act.ready(POOL)) == 0 and asyncio.run(act.endpoints(POOL)) == []
    clock.now = 5
    first = FakeApi().deployments[0]
    second = first.model_copy(update={"metadata": client.V1ObjectMeta(name="b", labels={"tokenpools.dev/pool": POOL})})
    api.deployments = [first, second]
    with pytest.raises(DeploymentNotFound, match=r"2 Deployments .*\(b, vllm-llama\)"):
        asyncio.run(act.scale(POOL, 2))


def test_an_api_outage_serves_the_last_snapshot(fake: tuple[KubernetesActuator, FakeApi, Clock],
                                                caplog: pytest.LogCaptureFixture) -> None:
    act, api, clock = fake
    assert asyncio.run(act.ready(POOL)) == 2
    api.fail = True
    with caplog.at_level(logging.WARNING, "tokenpools.scaler.kube"):
        for t in (2, 3, 4):
            clock.now = t
            assert asyncio.run(act.endpoints(POOL)) == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    assert sum("serving the last snapshot" in r.getMessage() for r in caplog.records) == 1
    fresh = KubernetesActuator(client.ApiClient(), "ns", {POOL: Bounds(1, 4)})
    fresh.apps = fresh.discovery = fresh.autoscaling = api  # type: ignore[assignment]
    with pytest.raises(client.exceptions.ApiException):
        asyncio.run(fresh.ready(POOL))
