"""A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) for tests/kube.

Fixtures:

- ``control_plane`` (session): a ``tokenpools.infra.kube_local.ControlPlane``, started once per pytest
  session. The binaries are built from their Go modules on first use and cached under
  ``$TOKENPOOLS_CACHE/tools`` (a cold build takes ~10 minutes on 2 cores; its progress is printed).
- ``kube`` (session): an admin ``kubernetes.client.ApiClient`` (group system:masters).
- ``node_agent`` (session): a ``tests.kube.node_agent.NodeAgent`` playing the kubelet of one Node,
  so pods bound to it run (vLLM emulators for pods labelled ``app.kubernetes.io/component: vllm``) in
  network namespaces of their own and become Ready. Needs root (network namespaces).
- ``kube_namespace`` (function): a fresh Namespace for one test, deleted afterwards.

Every test in tests/kube gets a 30-minute timeout (the suite's default is 10): the first one waits for
the cold build.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path

import kubernetes.client
import pytest

# The suite's Kafka fixtures, for the tests here that also need a broker (operator, end to end).
from tests.integration.conftest import kafka, kafka_io, prefix  # noqa: F401
from tests.kube.node_agent import NodeAgent
from tokenpools.infra.kube_local import ControlPlane, ensure_binaries

KUBE_TIMEOUT = 1800
HERE = Path(__file__).resolve().parent
_namespaces = itertools.count(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(KUBE_TIMEOUT))


@pytest.fixture(scope="session")
def control_plane(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    # Show a cold build's progress live instead of after minutes of silence.
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        binaries = ensure_binaries()
    cp = ControlPlane(tmp_path_factory.mktemp("kube"), binaries=binaries)
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Iterator[kubernetes.client.ApiClient]:
    with control_plane.api_client() as client:
        yield client


@pytest.fixture(scope="session")
def node_agent(kube: kubernetes.client.ApiClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    if os.geteuid() != 0:
        pytest.skip("the node agent makes network namespaces and a bridge: it needs root")
    agent = NodeAgent(kube, "tokenpools-node", log_dir=tmp_path_factory.mktemp("node-agent"))
    agent.start()
    try:
        yield agent
    finally:
        agent.close()


@pytest.fixture
def kube_namespace(kube: kubernetes.client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    name = re.sub(r"[^a-z0-9-]+", "-", f"t{next(_namespaces)}-{request.node.name.lower()}")[:50].rstrip("-")
    core = kubernetes.client.CoreV1Api(kube)
    core.create_namespace(kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        with contextlib.suppress(kubernetes.client.ApiException):
            core.delete_namespace(name)
