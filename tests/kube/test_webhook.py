"""The operator's admission webhook, called by the real kube-apiserver.

The webhook (``scaler.kube.webhook.WebhookServer``) serves HTTPS on 127.0.0.1 with a serving
certificate signed by a CA made here with the ``openssl`` CLI; a ValidatingWebhookConfiguration
points the API server at it by URL with that CA as ``caBundle``, for this test's namespace only (a
``namespaceSelector``), so other tests never meet it. Then every create and update below goes through
the API server as ``kubectl apply`` would, and the refusals are read from the ApiException's body.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes.client
import pytest
from kubernetes.client import (
    AdmissionregistrationV1Api,
    AdmissionregistrationV1WebhookClientConfig,
    CustomObjectsApi,
    V1LabelSelector,
    V1ObjectMeta,
    V1RuleWithOperations,
    V1ValidatingWebhook,
    V1ValidatingWebhookConfiguration,
)
from kubernetes.client.exceptions import ApiException

from scaler.kube.crs import GROUP, VERSION
from scaler.kube.webhook import ApiLookup, WebhookServer
from tests.integration.harness import eventually
from tests.kube.test_operator import apply_crds, entitlement_cr, pool_cr

pytestmark = pytest.mark.integration

WAIT = 30.0
# perReplica throughput 1000 at the default targetUtilisation 0.9: 900 sellable per replica.
TOO_MUCH = ("guarantees on pool 'p' total 2000 throughput but the pool can provision at most 1800 at maxReplicas=2; "
            "lower the guarantee or raise maxReplicas to 3")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(ca.crt, server.crt, server.key): a self-signed CA and a serving cert for IP 127.0.0.1."""
    d = tmp_path_factory.mktemp("webhook-tls")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
            "-subj", "/CN=tokenpools-test-ca", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "1", "-extfile", "san.ext", cwd=d)
    return d / "ca.crt", d / "server.crt", d / "server.key"


@pytest.fixture(scope="module")
def crds(kube: kubernetes.client.ApiClient) -> None:
    apply_crds(kube)


@pytest.fixture
async def webhook(control_plane: Any, tls: tuple[Path, Path, Path]) -> AsyncIterator[WebhookServer]:
    api = control_plane.api_client()
    server = WebhookServer(ApiLookup(api), cert=tls[1], key=tls[2])
    await server.start()
    yield server
    await server.stop()
    api.close()


@pytest.fixture
def registered(kube: kubernetes.client.ApiClient, webhook: WebhookServer, tls: tuple[Path, Path, Path],
               kube_namespace: str, crds: None) -> Iterator[str]:
    name = f"tokenpools-test-{uuid.uuid4().hex[:8]}"
    bundle = base64.b64encode(tls[0].read_bytes()).decode()
    only_here = V1LabelSelector(match_labels={"kubernetes.io/metadata.name": kube_namespace})

    def hook(plural: str) -> V1ValidatingWebhook:
        return V1ValidatingWebhook(
            name=f"{plural}.tokenpools.dev",
            client_config=AdmissionregistrationV1WebhookClientConfig(
                url=f"https://127.0.0.1:{webhook.port}/validate/{plural}", ca_bundle=bundle),
            rules=[V1RuleWithOperations(api_groups=[GROUP], api_versions=[VERSION], operations=["CREATE", "UPDATE"],
                                        resources=[plural], scope="Namespaced")],
            admission_review_versions=["v1"], side_effects="None", failure_policy="Fail", timeout_seconds=10,
            namespace_selector=only_here)

    admission = AdmissionregistrationV1Api(kube)
    admission.create_validating_webhook_configuration(V1ValidatingWebhookConfiguration(
        metadata=V1ObjectMeta(name=name), webhooks=[hook("entitlements"), hook("tokenpools")]))
    try:
        yield name
    finally:
        admission.delete_validating_webhook_configuration(name)


class Crs:
    def __init__(self, kube: kubernetes.client.ApiClient, namespace: str) -> None:
        self.api = CustomObjectsApi(kube)
        self.ns = namespace

    async def create(self, cr: dict[str, Any]) -> Any:
        plural = "tokenpools" if cr["kind"] == "TokenPool" else "entitlements"
        return await asyncio.to_thread(self.api.create_namespaced_custom_object, GROUP, VERSION, self.ns, plural, cr)

    async def patch_pool(self, name: str, body: dict[str, Any]) -> Any:
        return await asyncio.to_thread(self.api.patch_namespaced_custom_object, GROUP, VERSION, self.ns,
                                       "tokenpools", name, body)

    async def delete(self, plural: str, name: str) -> None:
        await asyncio.to_thread(self.api.delete_namespaced_custom_object, GROUP, VERSION, self.ns, plural, name)


def refusal(exc: ApiException) -> tuple[int, str]:
    body = json.loads(exc.body or "{}")
    return int(exc.status or 0), str(body.get("message", ""))


async def test_the_api_server_refuses_what_the_pool_cannot_provision(
        kube: kubernetes.client.ApiClient, kube_namespace: str, registered: str) -> None:
    crs = Crs(kube, kube_namespace)
    await crs.create(pool_cr("p", max_replicas=2))
    await crs.create(entitlement_cr("g1", guarantee=1000))

    # The API server picks up a new webhook configuration within a moment: until then a create passes.
    async def refused() -> tuple[int, str]:
        try:
            await crs.create(entitlement_cr("g2", guarantee=1000))
        except ApiException as exc:
            return refusal(exc)
        await crs.delete("entitlements", "g2")
        return (0, "")

    code, message = await eventually(refused, within=WAIT, every=0.5)
    assert code == 422, message
    assert TOO_MUCH in message and "Entitlement 'g2'" in message

    # What fits is accepted (elastic holds no guarantee; a small guarantee fits in 1800).
    await crs.create(entitlement_cr("g3", guarantee=700))

    # Lowering maxReplicas below what the guarantees (1700) need is refused, and says what would do.
    with pytest.raises(ApiException) as lower:
        await crs.patch_pool("p", {"spec": {"replicas": {"max": 1}}})
    code, message = refusal(lower.value)
    assert code == 422
    assert ("guarantees on pool 'p' total 1700 throughput but the pool can provision at most 900 at maxReplicas=1; "
            "lower the guarantee or raise maxReplicas to 2") in message

    # Raising it makes room for g2.
    await crs.patch_pool("p", {"spec": {"replicas": {"max": 3}}})
    await crs.create(entitlement_cr("g2", guarantee=1000))


async def test_a_malformed_review_gets_400(webhook: WebhookServer, tls: tuple[Path, Path, Path]) -> None:
    context = ssl.create_default_context(cafile=str(tls[0]))
    async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{webhook.port}", verify=context) as http:
        bad = await http.post("/validate/entitlements", content=b"not json")
        assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
        wrong = await http.post("/validate/entitlements",
                                json={"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"})
        assert wrong.status_code == 400 and "admission.k8s.io/v1" in wrong.json()["error"]
        no_uid = await http.post("/validate/tokenpools", json={"apiVersion": "admission.k8s.io/v1",
                                                               "kind": "AdmissionReview", "request": {}})
        assert no_uid.status_code == 400 and "uid" in no_uid.json()["error"]
        delete = await http.post("/validate/entitlements", json={
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u1", "operation": "DELETE", "oldObject": entitlement_cr("x")}})
        assert delete.json()["response"] == {"uid": "u1", "allowed": True}
