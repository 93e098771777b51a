"""A test-side kubelet: one Node object, and a network namespace + process for each pod bound to it.

The control plane (tokenpools.infra.kube_local) is real but has no kubelet and no container
runtime. ``NodeAgent`` plays the kubelet for one Node:

- It creates the Node (Ready, capacity cpu/memory/pods and ``nvidia.com/gpu``, InternalIP = the
  bridge address) and renews its Lease in ``kube-node-lease`` every 10 s. (nodelifecycle is off in
  the controller-manager, so nothing would taint or evict it anyway.)
- It makes a Linux bridge ``tpb<k>`` with ``10.250.<k>.1/24``. ``<k>`` is picked free per agent (a
  lock file under /run/tokenpools-node-agent held for the agent's life), so concurrent pytest
  sessions never share a subnet; whatever a dead owner of ``<k>`` left (namespaces, veths, bridge,
  processes) is removed before use.
- It watches pods with ``spec.nodeName == <node>``. For each: a network namespace ``tpns<k>-<n>``, a
  veth pair (``tpv<k>x<n>`` on the bridge, ``eth0`` inside) with ``10.250.<k>.<n>/24`` and a default
  route via ``.1``, then the workload (below) under ``ip netns exec``. Once the readiness probe
  passes (the pod's ``readinessProbe`` httpGet / tcpSocket, else a TCP connect to the first container
  port) the pod's status is patched Running with podIP/podIPs/hostIP, its containers ready and the
  Initialized/PodReadyToStartContainers/ContainersReady/Ready/PodScheduled conditions True. The
  probe keeps running every ``periodSeconds`` (at most 2 s here); ``failureThreshold`` misses mark
  the pod not Ready, and a workload that exits is restarted (``restartCount`` + 1), as a kubelet does.
- A pod with a ``deletionTimestamp``: its process gets SIGTERM (SIGKILL after the grace period,
  capped at 5 s), its namespace and veth are removed, and the pod is deleted with grace 0.

Workloads:

- ``app.kubernetes.io/component: vllm`` (pod label): a vLLM emulator, ``python -m tokenpools.cli
  emulate``, bound to the pod IP on the first container port (else ``--port`` in the args, else
  8000). The model is ``--served-model-name`` from the container args, else ``--model``, else the
  positional model of ``vllm serve <model>``, else the pod label ``tokenpools.dev/model``;
  ``--scheduling-policy``, ``--max-num-seqs``, ``--max-num-batched-tokens`` and ``--max-model-len``
  in the args are passed on. The annotation ``tokenpools.dev/emulator-args`` adds emulator flags
  (e.g. ``--speedup 20 --kv-tokens 60000``).
- annotation ``tokenpools.dev/node-agent-command``: a JSON argv run as is (with the container's
  literal ``env`` values plus ``POD_IP``, ``POD_NAME``, ``POD_NAMESPACE``).
- anything else runs nothing: it is reported Ready at once if it has no readinessProbe (nothing
  could answer one), and Running but not Ready if it has one.

Not done: volumes, init containers, images, resource limits, exec probes, liveness/startup probes,
hostNetwork, Service ClusterIPs (no kube-proxy: traffic goes to pod IPs), traffic out of the
namespace except to the bridge's subnet. Traffic goes only to namespaces the agent made.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import kubernetes.client
import kubernetes.watch
from kubernetes.client.exceptions import ApiException

LOCK_DIR = Path("/run/tokenpools-node-agent")
VLLM_LABEL = ("app.kubernetes.io/component", "vllm")
MODEL_LABEL = "tokenpools.dev/model"
EMULATOR_ARGS_ANNOTATION = "tokenpools.dev/emulator-args"
COMMAND_ANNOTATION = "tokenpools.dev/node-agent-command"
PASSED_VLLM_FLAGS = ("--scheduling-policy", "--max-num-seqs", "--max-num-batched-tokens", "--max-model-len")
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # pod IPs: never through a proxy
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CAPACITY = {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": "16", "ephemeral-storage": "1Ti"}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


@dataclass
class _Pod:
    namespace: str
    name: str
    uid: str
    number: int  # last octet of the pod IP, and the suffix of the netns / veth names
    ip: str
    netns: str
    veth: str
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    deleting: bool = False


class NodeAgent:
    """Plays the kubelet of Node ``node_name``: see the module docstring."""

    def __init__(self, api_client: kubernetes.client.ApiClient, node_name: str, subnet: str | None = None,
                 capacity: dict[str, str] | None = None, log_dir: str | Path | None = None) -> None:
        self.api = api_client
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.node_name = node_name
        self.capacity = capacity or dict(DEFAULT_CAPACITY)
        self._lock_handle: IO[str] | None = None
        self.k = self._claim(subnet)
        self.subnet = f"10.250.{self.k}.0/24"
        self.host_ip = f"10.250.{self.k}.1"
        self.bridge = f"tpb{self.k}"
        self.log_dir = Path(log_dir) if log_dir else Path(f"/tmp/tokenpools-node-agent-{self.k}")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._pods: dict[str, _Pod] = {}  # by pod uid
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        # What went wrong in background threads and was not retried (tests may assert it is empty).
        self.errors: list[str] = []
        self._started = False
        self._watch: Any = None  # the open kubernetes.watch.Watch

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> NodeAgent:
        try:
            self._clean_stale()
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            self._register_node()
            for target, name in ((self._heartbeat, "heartbeat"), (self._watch_pods, "watch")):
                thread = threading.Thread(target=target, name=f"node-agent-{self.k}-{name}", daemon=True)
                thread.start()
                self._threads.append(thread)
            self._started = True
        except BaseException:
            self.close()
            raise
        return self

    def close(self, delete_node: bool = True) -> None:
        """Stop every workload and remove every namespace, veth and the bridge this agent made."""
        self._closed.set()
        with self._lock:
            pods = list(self._pods.values())
        for pod in pods:
            pod.stop.set()
        for pod in pods:
            if pod.thread is not None:
                pod.thread.join(timeout=15)
            self._teardown(pod)
        # Cut the open watch: it would keep kube-apiserver from shutting down for its whole grace period.
        response = getattr(self._watch, "_resp", None)
        for cut in ("shutdown", "close"):  # urllib3 >= 2.3's shutdown() unblocks a read in another thread
            with contextlib.suppress(Exception):
                getattr(response, cut)()
        for thread in self._threads:
            thread.join(timeout=2)
        if delete_node:
            with contextlib.suppress(Exception):
                self.core.delete_node(self.node_name)
            with contextlib.suppress(Exception):
                kubernetes.client.CoordinationV1Api(self.api).delete_namespaced_lease(self.node_name, "kube-node-lease")
        self._clean_stale()
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    def __enter__(self) -> NodeAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what tests may look at ------------------------------------------------------------------

    def netns_names(self) -> list[str]:
        """The network namespaces of this agent that exist now."""
        out = _ip("netns", "list", check=False).stdout
        return sorted(name for name in (line.split()[0] for line in out.splitlines() if line.strip())
                      if re.fullmatch(rf"tpns{self.k}-\d+", name))

    def pod_netns(self, namespace: str, name: str) -> str | None:
        with self._lock:
            for pod in self._pods.values():
                if (pod.namespace, pod.name) == (namespace, name):
                    return pod.netns
        return None

    # -- set-up ----------------------------------------------------------------------------------

    def _claim(self, subnet: str | None) -> int:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        if subnet is not None:
            match = re.fullmatch(r"10\.250\.(\d{1,3})\.0/24", subnet)
            if match is None or not 1 <= int(match.group(1)) <= 254:
                raise ValueError(f"subnet must be 10.250.<1-254>.0/24, not {subnet!r}")
            candidates = [int(match.group(1))]
        else:
            candidates = list(range(1, 255))
        for k in candidates:
            handle = open(LOCK_DIR / f"{k}.lock", "a+")  # noqa: SIM115 - held for the agent's life
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            self._lock_handle = handle
            return k
        raise RuntimeError(f"no free node-agent subnet among {candidates} (all locked under {LOCK_DIR})")

    def _clean_stale(self) -> None:
        """Remove whatever carries this agent's prefix: left by a dead owner of the subnet, or by us."""
        for ns in self.netns_names():
            pids = _ip("netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "delete", ns, check=False)
        out = _ip("-o", "link", "show", check=False).stdout
        for line in out.splitlines():
            parts = line.split(":")
            if len(parts) < 2:
                continue
            name = parts[1].strip().split("@")[0]
            if re.fullmatch(rf"tpv{self.k}x\d+|tpb{self.k}", name):
                _ip("link", "delete", name, check=False)

    def _register_node(self) -> None:
        body = kubernetes.client.V1Node(metadata=kubernetes.client.V1ObjectMeta(
            name=self.node_name,
            labels={"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64", "tokenpools.dev/node-agent": "true"},
        ))
        with contextlib.suppress(ApiException):
            self.core.delete_node(self.node_name, grace_period_seconds=0)  # a stale one from a dead run
        for _ in range(50):
            try:
                self.core.create_node(body)
                break
            except ApiException as exc:
                if exc.status != 409:
                    raise
                time.sleep(0.1)
        # The TaintNodesByCondition admission plugin taints a new Node not-ready:NoSchedule; the
        # nodelifecycle controller would lift it once Ready, but it is off (no kubelets): lift it here.
        self.core.patch_node(self.node_name, {"spec": {"taints": None}})
        self._patch_node_status()

    def _patch_node_status(self) -> None:
        now = _now()
        conditions = [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "node agent posts ready status",
             "lastHeartbeatTime": now, "lastTransitionTime": now},
            *({"type": t, "status": "False", "reason": f"KubeletHasNo{t}", "lastHeartbeatTime": now,
               "lastTransitionTime": now} for t in ("MemoryPressure", "DiskPressure", "PIDPressure")),
        ]
        status = {
            "capacity": self.capacity, "allocatable": self.capacity, "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": self.host_ip},
                          {"type": "Hostname", "address": self.node_name}],
            "nodeInfo": {"kubeletVersion": "v1.37.2-tokenpools-node-agent", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "tokenpools://node-agent",
                         "kernelVersion": os.uname().release, "osImage": "tokenpools node agent",
                         "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
        }
        self.core.patch_node_status(self.node_name, {"status": status})

    def _heartbeat(self) -> None:
        coord = kubernetes.client.CoordinationV1Api(self.api)
        while not self._closed.is_set():
            try:
                now = datetime.datetime.now(datetime.UTC)
                spec = kubernetes.client.V1LeaseSpec(holder_identity=self.node_name, lease_duration_seconds=40,
                                                     renew_time=now)
                try:
                    coord.patch_namespaced_lease(self.node_name, "kube-node-lease", {"spec": {
                        "holderIdentity": self.node_name, "leaseDurationSeconds": 40,
                        "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}})
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    coord.create_namespaced_lease("kube-node-lease", kubernetes.client.V1Lease(
                        metadata=kubernetes.client.V1ObjectMeta(name=self.node_name), spec=spec))
            except Exception as exc:
                if self._closed.is_set():
                    return
                self._note(f"heartbeat: {exc!r:.200}", transient=True)
            self._closed.wait(10)

    # -- pods ------------------------------------------------------------------------------------

    def _watch_pods(self) -> None:
        """List, then watch from the list's resourceVersion; relist after any error (410, a restart)."""
        selector = f"spec.nodeName={self.node_name}"
        while not self._closed.is_set():
            try:
                listed = self.core.list_pod_for_all_namespaces(field_selector=selector)
                seen = set()
                for pod in listed.items:
                    seen.add(str(_meta(pod).uid))
                    self._on_pod("MODIFIED", pod)
                with self._lock:
                    gone = [p for uid, p in self._pods.items() if uid not in seen]
                for known in gone:
                    self._forget(known)
                rv = listed.metadata.resource_version if listed.metadata is not None else None
                watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
                self._watch = watch
                for event in watch.stream(  # type: ignore[no-untyped-call]
                        self.core.list_pod_for_all_namespaces, field_selector=selector,
                        resource_version=rv, timeout_seconds=30, _request_timeout=40):
                    if self._closed.is_set():
                        return
                    self._on_pod(str(event["type"]), event["object"])
            except Exception as exc:
                if self._closed.is_set():
                    return
                self._note(f"watch: {exc!r:.200}", transient=True)
                self._closed.wait(0.5)

    def _on_pod(self, kind: str, pod: kubernetes.client.V1Pod) -> None:
        if self._closed.is_set():
            return
        meta = _meta(pod)
        namespace, name, uid = str(meta.namespace), str(meta.name), str(meta.uid)
        with self._lock:
            known = self._pods.get(uid)
        if kind == "DELETED":
            if known is not None:
                self._forget(known)
            return
        if meta.deletion_timestamp is not None:
            if known is None:
                self._delete_pod(namespace, name, uid)
            elif not known.deleting:
                known.deleting = True
                grace = min(meta.deletion_grace_period_seconds or 30, 5)
                threading.Thread(target=self._terminate, args=(known, grace), daemon=True).start()
            return
        if known is not None or (pod.status is not None and pod.status.phase in ("Succeeded", "Failed")):
            return
        with self._lock:
            used = {p.number for p in self._pods.values()}
            number = next((n for n in range(2, 255) if n not in used), None)
            if number is None:
                self._note(f"pod {namespace}/{name}: no free address in {self.subnet}")
                return
            record = _Pod(namespace, name, uid, number, f"10.250.{self.k}.{number}",
                          f"tpns{self.k}-{number}", f"tpv{self.k}x{number}")
            self._pods[uid] = record
        record.thread = threading.Thread(target=self._run_pod, args=(record, pod), daemon=True,
                                         name=f"pod-{namespace}-{name}")
        record.thread.start()

    def _forget(self, record: _Pod) -> None:
        record.stop.set()
        if record.thread is not None and record.thread is not threading.current_thread():
            record.thread.join(timeout=15)
        self._teardown(record)
        with self._lock:
            self._pods.pop(record.uid, None)

    def _terminate(self, record: _Pod, grace: float) -> None:
        record.stop.set()
        if record.thread is not None:
            record.thread.join(timeout=grace + 10)
        self._stop_process(record, grace)
        self._teardown(record)
        self._delete_pod(record.namespace, record.name, record.uid)
        with self._lock:
            self._pods.pop(record.uid, None)

    def _delete_pod(self, namespace: str, name: str, uid: str) -> None:
        body = kubernetes.client.V1DeleteOptions(grace_period_seconds=0,
                                                 preconditions=kubernetes.client.V1Preconditions(uid=uid))
        try:
            self.core.delete_namespaced_pod(name, namespace, body=body, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status not in (404, 409):
                self._note(f"delete {namespace}/{name}: {exc.status} {exc.reason}")

    def _setup_netns(self, record: _Pod) -> None:
        peer = f"tpp{self.k}x{record.number}"
        _ip("netns", "add", record.netns)
        _ip("link", "add", record.veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", record.veth, "master", self.bridge)
        _ip("link", "set", record.veth, "up")
        _ip("link", "set", peer, "netns", record.netns)
        _ip("-n", record.netns, "link", "set", peer, "name", "eth0")
        _ip("-n", record.netns, "addr", "add", f"{record.ip}/24", "dev", "eth0")
        _ip("-n", record.netns, "link", "set", "eth0", "up")
        _ip("-n", record.netns, "link", "set", "lo", "up")
        _ip("-n", record.netns, "route", "add", "default", "via", self.host_ip)

    def _teardown(self, record: _Pod) -> None:
        self._stop_process(record, 2)
        if record.netns in self.netns_names():
            for pid in _ip("netns", "pids", record.netns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "delete", record.netns, check=False)
        _ip("link", "delete", record.veth, check=False)  # gone with the namespace, normally

    def _stop_process(self, record: _Pod, grace: float) -> None:
        proc = record.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def _run_pod(self, record: _Pod, pod: kubernetes.client.V1Pod) -> None:
        try:
            self._setup_netns(record)
            container = _containers(pod)[0]
            argv, env = self._workload(pod, record)
            probe = _Probe.of(container, record.ip)
            started_at = _now()
            if argv is None:
                # Nothing to run: Ready unless it has a probe that nothing could answer.
                self._patch_status(pod, record, started_at, ready=container.readiness_probe is None)
                record.stop.wait()
                return
            ready = False
            failures = 0
            while not record.stop.is_set():
                if record.process is None or record.process.poll() is not None:
                    if record.process is not None:
                        record.restarts += 1
                        self._note(f"pod {record.namespace}/{record.name}: workload exited "
                                   f"({record.process.returncode}), restarting")
                        if ready:
                            ready = False
                            self._patch_status(pod, record, started_at, ready=False)
                        if record.stop.wait(1):
                            break
                    record.process = self._spawn(record, argv, env)
                    started_at = _now()
                    failures = 0
                ok = probe.check()
                if ok and not ready:
                    ready = True
                    self._patch_status(pod, record, started_at, ready=True)
                elif not ok and ready:
                    failures += 1
                    if failures >= probe.failure_threshold:
                        ready = False
                        self._patch_status(pod, record, started_at, ready=False)
                if ok:
                    failures = 0
                record.stop.wait(probe.period if ready else 0.1)
        except Exception as exc:
            self._note(f"pod {record.namespace}/{record.name}: {exc!r:.300}")

    def _workload(self, pod: kubernetes.client.V1Pod, record: _Pod) -> tuple[list[str] | None, dict[str, str]]:
        labels = _meta(pod).labels or {}
        annotations = _meta(pod).annotations or {}
        container = _containers(pod)[0]
        env = {**os.environ, "POD_IP": record.ip, "POD_NAME": record.name, "POD_NAMESPACE": record.namespace}
        for var in container.env or []:
            if var.value is not None:
                env[var.name] = var.value
        if COMMAND_ANNOTATION in annotations:
            return [str(a) for a in json.loads(annotations[COMMAND_ANNOTATION])], env
        if labels.get(VLLM_LABEL[0]) != VLLM_LABEL[1]:
            return None, env
        args = [*(container.command or []), *(container.args or [])]
        port = _container_port(container) or int(_flag(args, "--port") or 8000)
        model = (_flag(args, "--served-model-name") or _flag(args, "--model") or _positional_model(args)
                 or labels.get(MODEL_LABEL) or "llama-3-8b")
        argv = [sys.executable, "-m", "tokenpools.cli", "emulate", "--host", record.ip, "--port", str(port),
                "--model", model]
        for flag in PASSED_VLLM_FLAGS:
            value = _flag(args, flag)
            if value is not None:
                argv += [flag, value]
        argv += shlex.split(annotations.get(EMULATOR_ARGS_ANNOTATION, ""))
        return argv, env

    def _spawn(self, record: _Pod, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{record.namespace}_{record.name}.log", "ab")  # noqa: SIM115
        try:
            return subprocess.Popen(["ip", "netns", "exec", record.netns, *argv], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                                    start_new_session=True)
        finally:
            log.close()

    def _patch_status(self, pod: kubernetes.client.V1Pod, record: _Pod, started_at: str, ready: bool) -> None:
        now = _now()
        flag = "True" if ready else "False"
        conditions = [
            {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
            {"type": "Ready", "status": flag, "lastTransitionTime": now},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        ]
        statuses = [{
            "name": c.name, "image": c.image or "", "imageID": "", "containerID": f"tokenpools://{record.uid}-{c.name}",
            "ready": ready, "started": True, "restartCount": record.restarts,
            "state": {"running": {"startedAt": started_at}},
        } for c in _containers(pod)]
        status = {
            "phase": "Running", "podIP": record.ip, "podIPs": [{"ip": record.ip}], "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}], "startTime": started_at, "conditions": conditions,
            "containerStatuses": statuses,  # qosClass is the API server's (set at create; a change is refused)
        }
        for attempt in range(20):
            if record.stop.is_set() and ready:
                return
            try:
                self.core.patch_namespaced_pod_status(record.name, record.namespace, {"status": status})
                return
            except ApiException as exc:
                if exc.status == 404:
                    return
                self._note(f"status {record.namespace}/{record.name}: {exc.status} {exc.reason}", transient=True)
            except Exception as exc:
                self._note(f"status {record.namespace}/{record.name}: {exc!r:.200}", transient=True)
            record.stop.wait(min(0.2 * (attempt + 1), 2))
        self._note(f"status {record.namespace}/{record.name}: not written after 20 attempts")

    def _note(self, message: str, transient: bool = False) -> None:
        """Print what went wrong; keep it in ``errors`` unless it is retried (an apiserver restart)."""
        if not self._closed.is_set():
            if not transient:
                self.errors.append(message)
            print(f"node agent {self.node_name}: {message}", file=sys.stderr, flush=True)


def _meta(pod: kubernetes.client.V1Pod) -> kubernetes.client.V1ObjectMeta:
    if pod.metadata is None:
        raise ValueError("a pod without metadata")
    return pod.metadata


def _containers(pod: kubernetes.client.V1Pod) -> list[kubernetes.client.V1Container]:
    return list(pod.spec.containers) if pod.spec is not None else []


def _flag(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _positional_model(args: list[str]) -> str | None:
    """``vllm serve <model>``: the word after ``serve`` when it is not a flag."""
    for i, arg in enumerate(args[:-1]):
        if arg == "serve" and not args[i + 1].startswith("-"):
            return args[i + 1]
    return None


def _container_port(container: kubernetes.client.V1Container, name: str | None = None) -> int | None:
    for port in container.ports or []:
        if name is None or port.name == name:
            return int(port.container_port)
    return None


@dataclass
class _Probe:
    kind: str  # "http", "tcp", "port" (no probe given: TCP connect to the port), "none-given" (no port either)
    host: str
    port: int = 0
    path: str = "/"
    period: float = 2.0
    failure_threshold: int = 3
    timeout: float = 1.0

    @classmethod
    def of(cls, container: kubernetes.client.V1Container, host: str) -> _Probe:
        probe = container.readiness_probe
        if probe is None:
            port = _container_port(container)
            return cls("port", host, port) if port else cls("none-given", host)
        period = min(float(probe.period_seconds or 10), 2.0)
        threshold = int(probe.failure_threshold or 3)
        timeout = float(probe.timeout_seconds or 1)

        def resolve(value: Any) -> int:
            if isinstance(value, int) or str(value).isdigit():
                return int(value)
            return _container_port(container, str(value)) or 0

        if probe.http_get is not None:
            path = probe.http_get.path or "/"
            return cls("http", host, resolve(probe.http_get.port), path, period, threshold, timeout)
        if probe.tcp_socket is not None:
            return cls("tcp", host, resolve(probe.tcp_socket.port), "/", period, threshold, timeout)
        return cls("unsupported", host, 0, "/", period, threshold, timeout)

    def check(self) -> bool:
        if self.kind == "http":
            try:
                with _DIRECT.open(f"http://{self.host}:{self.port}{self.path}", timeout=self.timeout) as r:
                    return 200 <= int(r.status) < 400
            except (OSError, urllib.error.URLError):
                return False
        if self.kind in ("tcp", "port"):
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=self.timeout):
                return True
            return False
        return self.kind == "none-given"


@contextlib.contextmanager
def node_agent(api_client: kubernetes.client.ApiClient, node_name: str, **kwargs: Any) -> Iterator[NodeAgent]:
    agent = NodeAgent(api_client, node_name, **kwargs)
    with agent:
        yield agent
