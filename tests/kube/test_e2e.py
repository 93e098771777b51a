"""The product on Kubernetes, end to end, on a real control plane and real Kafka.

Real: etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from their Go modules
(``tokenpools.infra.kube_local``); the chart's own objects rendered by helm (CRDs, ServiceAccounts,
Roles, the pool's ConfigMap, the vLLM Deployment and Service); the suite's Kafka broker; the operator,
a pipeline worker, the scaler (Kubernetes actuator) and an admitter as the processes the chart runs,
each with the token of its chart ServiceAccount where it talks to the API server. Stand-ins, because
nothing here runs containers: the test-side node agent (``tests/kube/node_agent.py``) plays the kubelet,
and each vLLM pod runs the emulator (``tokenpools emulate``) in a network namespace of its own.

What happens: the CRs are applied; the operator puts them on the config topic; the admitter (config
only from Kafka, backends only from the replicas topic) serves; load drives the pipeline; the scaler
raises the Deployment's scale; the new pods become Ready through the node agent and appear in the
EndpointSlice, then on ``tokenpools.replicas``; the admitter sends them traffic; the pipeline counts only
Ready replicas; the API server is restarted mid-run and everything carries on; a CR change reaches the
admitter; when the load stops, the pool shrinks after the stabilisation window. The figures (scale
decision to a Ready pod serving traffic, CR change to enforcement) are printed, not asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes.client
import kubernetes.dynamic
import pytest
import yaml

from schemas import topics
from schemas.records import ReplicasReport
from schemas.wire import BadRecords, decode
from streams.topics import create_topics
from tests.integration.harness import REPO, Kafka, Worker, eventually, free_port
from tokenpools.infra.helm import ensure_helm
from tokenpools.infra.kube_local.control_plane import ControlPlane

pytestmark = pytest.mark.integration

CHART = REPO / "deploy" / "helm" / "tokenpools"
RELEASE = "e2e"
POOL = "e2e-pool"
MODEL = "m-e2e"
WINDOW_S = 6.0  # the pool's stabilisationWindowSeconds
KEY, NEW_KEY = "tp-e2e-key-0123456789abcdef", "tp-e2e-rotated-key-0123456789ab"
# One request reserves 0.5 * 200 + 100 = 200 weighted tokens; 6/s = 1,200/s = 2 replicas of 600.
PROMPT_WORDS, MAX_TOKENS, PER_SECOND = 200, 100, 6.0
STEP_WAIT_S = 90.0


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


ENGINEER = "platform-engineer"  # a ServiceAccount the chart's CR editor Role is bound to (values.crEditors)


def values(bootstrap: str, topic_prefix: str, namespace: str) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap": bootstrap, "topicPrefix": topic_prefix},
        "crEditors": [{"kind": "ServiceAccount", "name": ENGINEER, "namespace": namespace}],
        "pools": [{
            "name": POOL,
            "spec": {
                "model": MODEL, "perReplica": {"throughput": 600, "kv": 10_000_000, "concurrency": 10_000},
                "targetUtilisation": {"throughput": 1.0, "kv": 1.0, "concurrency": 1.0},
                "replicas": {"min": 1, "max": 3, "initial": 1}, "tickSeconds": 0.25, "reclaimBuffer": 0.0,
                "scaling": {"headroom": 0.0, "stabilisationWindowSeconds": WINDOW_S, "startupDelaySeconds": 0,
                            "forecastHalfLifeSeconds": 0.5},
            },
            "vllm": {"enabled": True, "model": MODEL, "maxNumSeqs": 64, "gpus": 1},
        }],
        "entitlements": [{
            "name": "e2e-tenant",
            "spec": {"pool": POOL, "tenant": "t-e2e", "tier": "elastic",
                     "burst": {"throughput": 1_000_000, "kv": 100_000_000, "concurrency": 100_000},
                     "apiKeys": [{"sha256": sha(KEY)}]},
        }],
    }


def render(tmp_path: Path, namespace: str, bootstrap: str, topic_prefix: str) -> list[dict[str, Any]]:
    file = tmp_path / "values.yaml"
    file.write_text(yaml.safe_dump(values(bootstrap, topic_prefix, namespace)))
    out = subprocess.run([str(ensure_helm()), "template", RELEASE, str(CHART), "-n", namespace, "-f", str(file)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


# What is applied for real: what the processes below need from the cluster. The other Deployments are the
# processes this test runs itself, and the webhook's registration would route Entitlement writes to a
# webhook this test does not serve (tests/kube/test_webhook.py covers it).
APPLIED = {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service"}


def applied(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [o for o in objects if o["kind"] in APPLIED]
    out += [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["labels"].get(
        "app.kubernetes.io/component") == "vllm"]
    return out


def apply(kube: kubernetes.client.ApiClient, obj: dict[str, Any], namespace: str | None = None) -> None:
    dynamic = kubernetes.dynamic.DynamicClient(kube)
    resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    kwargs = {"namespace": namespace} if resource.namespaced else {}
    resource.server_side_apply(body=obj, field_manager="tokenpools-e2e", force_conflicts=True, **kwargs)


def component_account(objects: list[dict[str, Any]], component: str) -> str:
    (name,) = [o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"
               and o["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    return name


class Processes:
    """The host-side processes this test runs, each with its own log; all killed at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "tokenpools.cli", *args], stdout=out,
                                    stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                    env={**os.environ, **(env or {})})
        self.procs[name] = proc
        return proc

    def alive(self) -> None:
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{self.tail(name)}"

    def tail(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


def ready_pod_urls(kube: kubernetes.client.ApiClient, namespace: str) -> list[str]:
    """The Ready, non-terminating endpoints of the pool's Service, read as the platform lists them."""
    slices = kubernetes.client.DiscoveryV1Api(kube).list_namespaced_endpoint_slice(
        namespace, label_selector=f"tokenpools.dev/pool={POOL}")
    urls = set()
    for s in slices.items:
        port = next((p.port for p in s.ports or [] if p.name == "http"), None)
        for e in s.endpoints or []:
            c = e.conditions
            if port is not None and c is not None and c.ready is not False and not c.terminating:
                urls.update(f"http://{a}:{port}" for a in e.addresses)
    return sorted(urls)


def pods(kube: kubernetes.client.ApiClient, namespace: str) -> list[str]:
    """Each pod's name, phase, node and conditions (what a failure message needs)."""
    out = []
    for p in kubernetes.client.CoreV1Api(kube).list_namespaced_pod(namespace).items:
        conditions = {c.type: c.status for c in p.status.conditions or []}
        out.append(f"{p.metadata.name} {p.status.phase} on {p.spec.node_name} {conditions} ip {p.status.pod_ip}")
    return out


def spec_replicas(kube: kubernetes.client.ApiClient, namespace: str) -> int:
    apps = kubernetes.client.AppsV1Api(kube)
    (deployment,) = apps.list_namespaced_deployment(namespace, label_selector=f"tokenpools.dev/pool={POOL}").items
    return int(deployment.spec.replicas)


async def served_by(client: httpx.AsyncClient, url: str) -> float:
    """Requests a replica finished (the emulator's vllm:request_success counter)."""
    text = (await client.get(f"{url}/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


async def test_crs_to_config_load_to_ready_pods_to_traffic_and_back(
        control_plane: ControlPlane, kube: kubernetes.client.ApiClient, node_agent: Any, kube_namespace: str,
        kafka: Any, kafka_io: Kafka, prefix: str, tmp_path: Path, processes: Processes) -> None:
    ns, bootstrap = kube_namespace, kafka.bootstrap_servers
    objects = render(tmp_path, ns, bootstrap, prefix)
    for crd in sorted((CHART / "crds").glob("*.yaml")):
        apply(kube, yaml.safe_load(crd.read_text()))
    for obj in applied(objects):
        apply(kube, obj, ns)

    def kubeconfig(component: str) -> str:
        token = control_plane.service_account_token(ns, component_account(objects, component))
        return str(control_plane.kubeconfig_for(token, tmp_path / f"{component}.kubeconfig"))

    # The run's topics, as `tokenpools up` makes them; then the chart's processes, each as its
    # ServiceAccount where it talks to the API server.
    await create_topics(bootstrap, topics.Topics(prefix).specs())
    processes.start("operator", "operator", "--kubeconfig", kubeconfig("operator"), "-n", ns,
                    "--bootstrap", bootstrap, "--topic-prefix", prefix, "--identity", "op-e2e",
                    "--resync-seconds", "5", "--status-every", "1", "--log-level", "INFO")
    worker = Worker(bootstrap, prefix, tmp_path / "unused.yaml", tmp_path / "worker.log")
    at = worker.args.index("--config")
    del worker.args[at:at + 2]  # config only from the topic, as the chart runs it
    worker.start()
    pools_yaml = tmp_path / "pools.yaml"
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap" and "pools.yaml" in o.get("data", {})]
    pools_yaml.write_text(config_map["data"]["pools.yaml"])
    processes.start("scaler", "scaler", "--actuator", "kubernetes", "-n", ns, "--kubeconfig", kubeconfig("scaler"),
                    "--bootstrap", bootstrap, "--topic-prefix", prefix, "--config", str(pools_yaml),
                    "--report-every", "1")
    admitter_port = free_port()
    processes.start("admitter", "admitter", "--kafka", bootstrap, "--topic-prefix", prefix, "--discover",
                    "--admitter-id", "admitter-e2e", "--port", str(admitter_port),
                    "--spool-dir", str(tmp_path / "spool"))
    admitter = f"http://127.0.0.1:{admitter_port}"
    try:
        # The CRs, applied by a platform engineer through the chart's CR editor Role (its ServiceAccount's
        # real token), as the chart's pools template renders them.
        core = kubernetes.client.CoreV1Api(kube)
        core.create_namespaced_service_account(ns, kubernetes.client.V1ServiceAccount(
            metadata=kubernetes.client.V1ObjectMeta(name=ENGINEER)))
        engineer = control_plane.api_client(control_plane.service_account_token(ns, ENGINEER))
        for obj in objects:
            if obj["kind"] in ("TokenPool", "Entitlement"):
                apply(engineer, obj, ns)
        with pytest.raises(kubernetes.client.ApiException) as denied:  # the Role grants the CRs, not their status
            kubernetes.client.CustomObjectsApi(engineer).patch_namespaced_custom_object_status(
                "tokenpools.dev", "v1alpha1", ns, "entitlements", "e2e-tenant", {"status": {"debt": 1.0}})
        assert denied.value.status == 403

        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            last: list[str] = []

            async def chat(key: str = KEY) -> int:
                r = await client.post(f"{admitter}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                      json={"model": MODEL, "max_tokens": MAX_TOKENS,
                                            "messages": [{"role": "user", "content": "word " * PROMPT_WORDS}]})
                last[:] = [f"{r.status_code} {r.text[:300]}"]
                return r.status_code

            # Config only from Kafka, backends only from the replicas topic: the admitter serves.
            async def serves() -> bool:
                processes.alive()
                try:
                    return await chat() == 200
                except httpx.HTTPError:  # not listening yet
                    return False

            try:
                await eventually(serves, within=STEP_WAIT_S)
            except AssertionError:
                raise AssertionError(f"the admitter never served: last answer {last}; ready endpoints "
                                     f"{ready_pod_urls(kube, ns)}; pods {pods(kube, ns)}; node agent errors "
                                     f"{getattr(node_agent, 'errors', None)}") from None
            first = ready_pod_urls(kube, ns)
            assert len(first) == 1 and spec_replicas(kube, ns) == 1

            # Load: the scaler raises the Deployment's scale; new pods become Ready and serve.
            stop = asyncio.Event()
            codes: list[int] = []

            async def offer() -> None:
                while not stop.is_set():
                    asyncio.get_running_loop().create_task(_record(chat(), codes))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0 / PER_SECOND)

            load = asyncio.create_task(offer())
            decided = ready_at = served_at = 0.0

            async def grown() -> bool:
                nonlocal decided, ready_at
                processes.alive()
                if not decided and spec_replicas(kube, ns) > 1:
                    decided = time.monotonic()
                if decided and not ready_at and len(ready_pod_urls(kube, ns)) > 1:
                    ready_at = time.monotonic()
                return bool(ready_at)

            await eventually(grown, within=STEP_WAIT_S, every=0.1)
            new = [u for u in ready_pod_urls(kube, ns) if u not in first]

            async def new_pod_serves() -> bool:
                nonlocal served_at
                if all([await served_by(client, u) > 0 for u in new]):
                    served_at = time.monotonic()
                    return True
                return False

            await eventually(new_pod_serves, within=STEP_WAIT_S, every=0.1)

            # The replicas topic carries exactly the Ready pods, and the pipeline counts only those.
            async def reported() -> bool:
                reports = [decode(ReplicasReport, v, "replicas", BadRecords())
                           for _, v in await kafka_io.read_all(topics.REPLICAS)]
                mine = [r for r in reports if r is not None and r.pool == POOL]
                return bool(mine) and mine[-1].endpoints == ready_pod_urls(kube, ns)

            await eventually(reported, within=STEP_WAIT_S)

            async def counted() -> bool:
                states = [s for s in await kafka_io.pool_states() if s.id == POOL]
                return bool(states) and states[-1].ready_replicas == len(ready_pod_urls(kube, ns))

            await eventually(counted, within=STEP_WAIT_S)

            # The API server restarts mid-run; the operator and the scaler carry on after it.
            await asyncio.to_thread(control_plane.restart_apiserver)

            # A CR change reaches the admitter: a key added to the Entitlement is accepted.
            (ent,) = [o for o in objects if o["kind"] == "Entitlement"]
            ent["spec"]["apiKeys"].append({"sha256": sha(NEW_KEY)})
            assert await chat(NEW_KEY) == 401
            changed = time.monotonic()
            apply(control_plane.api_client(control_plane.service_account_token(ns, ENGINEER)), ent, ns)

            async def enforced() -> bool:
                return await chat(NEW_KEY) == 200

            await eventually(enforced, within=STEP_WAIT_S, every=0.1)
            enforced_at = time.monotonic()

            # The load stops: the pool shrinks back to its minimum, after the stabilisation window.
            stop.set()
            await load
            stopped = time.monotonic()

            async def shrunk() -> bool:
                processes.alive()
                return spec_replicas(kube, ns) == 1 and len(ready_pod_urls(kube, ns)) == 1

            await eventually(shrunk, within=STEP_WAIT_S + WINDOW_S)
            shrunk_at = time.monotonic()
            assert shrunk_at - stopped >= WINDOW_S * 0.5  # held by the window, not gone at once
            assert codes.count(200) > 0 and set(codes) <= {200, 429}, sorted(set(codes))
        print(f"\ne2e: scale decision -> Ready pod {ready_at - decided:.1f} s, -> serving {served_at - decided:.1f} s; "
              f"CR change -> enforced at the admitter {enforced_at - changed:.1f} s; load stop -> shrunk "
              f"{shrunk_at - stopped:.1f} s (window {WINDOW_S:g} s); {len(codes)} requests, "
              f"{codes.count(200)} admitted")
    finally:
        worker.stop()
        for name in processes.procs:
            if processes.procs[name].poll() is not None:
                print(f"{name} log:\n{processes.tail(name)}")


async def _record(call: Any, codes: list[int]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        codes.append(await call)
