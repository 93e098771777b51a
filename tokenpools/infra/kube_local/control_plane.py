"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

Built from the Go modules by ``tokenpools.infra.kube_local.build``. Everything runs as the current
user in one data directory:

- ``pki/``: a CA (``ca.crt``, the file clients trust), the apiserver's serving certificate (SANs
  127.0.0.1, localhost, the ``kubernetes`` Service's names and 10.96.0.1) and the service-account RSA
  key, all made with the ``openssl`` CLI.
- ``tokens.csv``: static bearer tokens (``--token-auth-file``): ``admin`` (group ``system:masters``),
  and identities of their own for the controller-manager and the scheduler.
- ``etcd/``, ``*.kubeconfig`` and one log per component (``etcd.log``, ``apiserver.log``, ...).

There is no kubelet: Node objects and pod status are the tests' business (tests/kube/node_agent.py).

    with ControlPlane() as cp:
        core = kubernetes.client.CoreV1Api(cp.api_client())
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import kubernetes.client

from tokenpools.infra.kube_local.build import KubeBinaries, ensure_binaries

SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
CONTROLLERS = "*,-nodeipam,-nodelifecycle"  # no kubelet, no pod CIDRs: nothing would be Ready anyway


class ControlPlaneError(RuntimeError):
    """The control plane did not start; the message names the component and the tail of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise ControlPlaneError("the `openssl` CLI is needed to make the control plane's certificates")
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ControlPlaneError(f"openssl {args[0]} failed: {proc.stderr.strip()[-500:]}")


def make_pki(pki: Path) -> None:
    """CA, apiserver serving cert signed by it, and the service-account signing key."""
    pki.mkdir(parents=True, exist_ok=True)
    if (pki / "sa.pub").is_file():
        return
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "3650", "-subj", "/CN=tokenpools-local-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=pki)
    sans = ",".join([
        "IP:127.0.0.1", f"IP:{KUBERNETES_SERVICE_IP}", "DNS:localhost", "DNS:kubernetes",
        "DNS:kubernetes.default", "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local",
    ])
    (pki / "serving.ext").write_text(
        f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr",
             "-subj", "/CN=kube-apiserver", cwd=pki)
    _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "apiserver.crt", "-days", "3650", "-extfile", "serving.ext", cwd=pki)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str, user: str = "user") -> Path:
    """A kubeconfig (JSON is YAML) for ``server`` that trusts ``ca_file`` and sends ``token``."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


class _Process:
    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 6) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:] if self.log_path.is_file() else []
        return " | ".join(line.strip()[:300] for line in text)

    def stop(self, grace: float = 10.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait()
        self._log.close()


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler, started by ``start()``.

    ``data_dir`` None: a temporary directory, removed by ``stop()``. Given: kept (logs, certificates),
    and etcd's data in it survives a restart.
    """

    def __init__(self, data_dir: str | Path | None = None, binaries: KubeBinaries | None = None) -> None:
        self._owns_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="tokenpools-kube-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._binaries = binaries
        self._procs: dict[str, _Process] = {}
        self.pki = self.data_dir / "pki"
        self.ca_file = self.pki / "ca.crt"
        self.tokens_file = self.data_dir / "tokens.csv"
        self.port = 0
        self.etcd_url = ""
        self.admin_token = ""
        self.kubeconfig_path = self.data_dir / "admin.kubeconfig"
        self.timings: dict[str, float] = {}  # seconds: "apiserver_ready" (etcd + apiserver), "all_ready"

    # -- public API ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def binaries(self) -> KubeBinaries:
        if self._binaries is None:
            self._binaries = ensure_binaries()
        return self._binaries

    def start(self, timeout: float = 90.0) -> Self:
        binaries = self.binaries  # build (minutes, cold) before the clock starts
        started = time.monotonic()
        try:
            self._prepare()
            self._start_etcd(binaries)
            self._start_apiserver(binaries)
            self._wait_apiserver(started + timeout)
            self.timings["apiserver_ready"] = time.monotonic() - started
            self._start_controllers(binaries)
            self._wait_controllers(started + timeout)
            self.timings["all_ready"] = time.monotonic() - started
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for name in ("scheduler", "controller-manager", "apiserver", "etcd"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                # A client's open watch can hold kube-apiserver's graceful shutdown for its whole
                # budget; etcd has the state, so a SIGKILL after a few seconds loses nothing.
                proc.stop(grace=5.0 if name == "apiserver" else 10.0)
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def restart_apiserver(self, timeout: float = 60.0, grace: float = 5.0) -> None:
        """Stop (SIGTERM, SIGKILL after ``grace``) and start kube-apiserver alone, on the same port and
        etcd: for fault tests. Clients see connection errors meanwhile, and their watches end."""
        proc = self._procs.pop("apiserver", None)
        if proc is not None:
            proc.stop(grace)
        self._start_apiserver(self.binaries)
        self._wait_apiserver(time.monotonic() + timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def astart(self, start_timeout: float = 90.0) -> Self:
        return await asyncio.to_thread(self.start, start_timeout)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.astop()

    def kubeconfig_for(self, token: str, path: str | Path) -> Path:
        """Write a kubeconfig for another identity (e.g. a ServiceAccount token) to ``path``."""
        return write_kubeconfig(Path(path), self.url, self.ca_file, token)

    def api_client(self, token: str | None = None) -> kubernetes.client.ApiClient:
        """An official-client ApiClient as ``token`` (default: the admin, group system:masters)."""
        config = kubernetes.client.Configuration(host=self.url)
        config.ssl_ca_cert = str(self.ca_file)
        config.api_key = {"BearerToken": token if token is not None else self.admin_token}
        config.api_key_prefix = {"BearerToken": "Bearer"}
        return kubernetes.client.ApiClient(config)

    def service_account_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        """A real token for ServiceAccount ``namespace/name`` from the TokenRequest API."""
        with self.api_client() as client:
            request = kubernetes.client.AuthenticationV1TokenRequest(
                spec=kubernetes.client.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds)
            )
            response = kubernetes.client.CoreV1Api(client).create_namespaced_service_account_token(
                name, namespace, request
            )
            if response.status is None or not response.status.token:
                raise ControlPlaneError(f"TokenRequest for {namespace}/{name} returned no token")
            return str(response.status.token)

    def logs(self, component: str) -> Path:
        return self.data_dir / f"{component}.log"

    # -- start-up --------------------------------------------------------------------------------

    def _prepare(self) -> None:
        make_pki(self.pki)
        if not self.tokens_file.is_file():
            rows = [
                f'{secrets.token_hex(16)},admin,admin,"system:masters"',
                f'{secrets.token_hex(16)},system:kube-controller-manager,kcm,"system:masters"',
                f'{secrets.token_hex(16)},system:kube-scheduler,scheduler,"system:masters"',
            ]
            self.tokens_file.write_text("\n".join(rows) + "\n")
            self.tokens_file.chmod(0o600)
        tokens = {line.split(",")[1]: line.split(",")[0] for line in self.tokens_file.read_text().splitlines()}
        self.admin_token = tokens["admin"]
        if not self.port:
            self.port = free_port()
        write_kubeconfig(self.kubeconfig_path, self.url, self.ca_file, self.admin_token, "admin")
        write_kubeconfig(self.data_dir / "controller-manager.kubeconfig", self.url, self.ca_file,
                         tokens["system:kube-controller-manager"], "system:kube-controller-manager")
        write_kubeconfig(self.data_dir / "scheduler.kubeconfig", self.url, self.ca_file,
                         tokens["system:kube-scheduler"], "system:kube-scheduler")

    def _spawn(self, name: str, argv: list[str]) -> _Process:
        proc = _Process(name, argv, self.logs(name))
        self._procs[name] = proc
        return proc

    def _start_etcd(self, binaries: KubeBinaries) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn("etcd", [
            str(binaries.etcd),
            "--name", "local",
            "--data-dir", str(self.data_dir / "etcd"),
            "--listen-client-urls", self.etcd_url,
            "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"local=http://127.0.0.1:{peer}",
            "--listen-metrics-urls", "",
            "--log-level", "warn",
            "--quota-backend-bytes", str(2 * 1024**3),
            "--unsafe-no-fsync",  # test data: durability is not wanted, speed is
        ])

    def _start_apiserver(self, binaries: KubeBinaries) -> None:
        pki = self.pki
        self._spawn("apiserver", [
            str(binaries.kube), "apiserver",
            "--etcd-servers", self.etcd_url,
            "--bind-address", "127.0.0.1",
            "--advertise-address", "127.0.0.1",
            # The `kubernetes` Service's endpoint would be 127.0.0.1, which Endpoints refuse (loopback):
            # nothing in a pod could reach it anyway, so no endpoint reconciler.
            "--endpoint-reconciler-type", "none",
            "--secure-port", str(self.port),
            "--tls-cert-file", str(pki / "apiserver.crt"),
            "--tls-private-key-file", str(pki / "apiserver.key"),
            "--client-ca-file", str(pki / "ca.crt"),
            "--token-auth-file", str(self.tokens_file),
            "--service-account-issuer", SERVICE_ACCOUNT_ISSUER,
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--authorization-mode", "Node,RBAC",
            "--service-cluster-ip-range", SERVICE_CLUSTER_IP_RANGE,
            "--cert-dir", str(self.data_dir / "apiserver-certs"),
            "--profiling=false",
            "--v", "1",
        ])

    def _start_controllers(self, binaries: KubeBinaries) -> None:
        pki = self.pki
        self._spawn("controller-manager", [
            str(binaries.kube), "controller-manager",
            "--kubeconfig", str(self.data_dir / "controller-manager.kubeconfig"),
            "--controllers", CONTROLLERS,
            "--leader-elect=false",
            "--secure-port", "0",
            "--service-account-private-key-file", str(pki / "sa.key"),
            "--root-ca-file", str(pki / "ca.crt"),
            "--cluster-signing-cert-file", str(pki / "ca.crt"),
            "--cluster-signing-key-file", str(pki / "ca.key"),
            "--service-cluster-ip-range", SERVICE_CLUSTER_IP_RANGE,
            "--concurrent-deployment-syncs", "5",
            "--v", "1",
        ])
        self._spawn("scheduler", [
            str(binaries.kube), "scheduler",
            "--kubeconfig", str(self.data_dir / "scheduler.kubeconfig"),
            "--leader-elect=false",
            "--secure-port", "0",
            "--v", "1",
        ])

    def _check_alive(self) -> None:
        for proc in self._procs.values():
            if not proc.alive():
                raise ControlPlaneError(
                    f"{proc.name} exited with {proc.popen.returncode}; log {proc.log_path}: {proc.tail()}"
                )

    def _get(self, path: str) -> tuple[int, str]:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.admin_token}"})
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                return int(response.status), response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")
        except (OSError, ssl.SSLError) as exc:
            return 0, str(exc)

    def _wait_apiserver(self, deadline: float) -> None:
        last = ""
        while True:
            self._check_alive()
            status, body = self._get("/readyz")
            if status == 200:
                return
            last = body.strip().splitlines()[-1] if body.strip() else str(status)
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"kube-apiserver not ready at {self.url}/readyz: {last}; "
                                        f"log {self.logs('apiserver')}")
            time.sleep(0.1)

    def _wait_controllers(self, deadline: float) -> None:
        """The controller-manager is up once it made the ``default`` ServiceAccount (pods need it);
        the scheduler once it logs that its informers synced (it serves no health port: --secure-port 0)."""
        while True:
            self._check_alive()
            status, _ = self._get("/api/v1/namespaces/default/serviceaccounts/default")
            log = self.logs("scheduler").read_text(errors="replace") if self.logs("scheduler").is_file() else ""
            if status == 200 and _scheduler_started(log):
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    "controller-manager/scheduler not ready: default ServiceAccount "
                    f"{'present' if status == 200 else 'missing'}, scheduler started: {_scheduler_started(log)}; "
                    f"logs {self.logs('controller-manager')}, {self.logs('scheduler')}"
                )
            time.sleep(0.1)


def _scheduler_started(log: str) -> bool:
    return "Starting Kubernetes Scheduler" in log


def env_kubeconfig(cp: ControlPlane) -> dict[str, str]:
    """The environment for a subprocess (kubectl, helm, an operator) that should use the admin identity."""
    return {**os.environ, "KUBECONFIG": str(cp.kubeconfig_path)}
