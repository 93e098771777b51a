"""The validating admission webhook: the API server refuses what the pool could never provision.

"What is promised can be provisioned" (``schemas.loader.provisioning_problems``) is checked by the
loader and the admitter's admin API; this puts the same rule in front of ``kubectl apply``. The CRD's
CEL rules cover what one object shows alone (guarantee <= burst, fields per tier); the sum of the
guarantees on a pool needs the other objects, so it is this webhook's:

- ``POST /validate/entitlements``: an Entitlement CREATE or UPDATE is refused when, with it in place
  of its old version among the namespace's entitlements of its pool, a dimension's guaranteed total
  exceeds what the pool provides at ``maxReplicas`` and the change raised that total (a change that
  lowers an already-too-high total is let through, or it could never be fixed). The message is the
  loader's: the totals, the ceiling and the ``maxReplicas`` that would do.
- ``POST /validate/tokenpools``: a TokenPool CREATE or UPDATE is refused when it would leave the
  guarantees of its entitlements unprovisionable (lowering ``maxReplicas`` or the per-replica capacity).
- A spec the model refuses is refused with the model's message; an Entitlement whose pool does not
  exist (yet) is allowed with a warning, since ``kubectl apply -f dir/`` creates them in any order.
- A request that is not an ``admission.k8s.io/v1`` AdmissionReview gets HTTP 400 with the reason.

Refusals carry ``status.code`` 422 (the API server answers the client with it: the request is
well-formed, the object is not acceptable; unlike 409 it invites no automatic retry). Pools and the
namespace's entitlements are read from the API server (a quorum read at each review), so two
replicas' answers never differ by what their caches hold. Every operator replica serves it, leader
or not: admission must not stop during a leader change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from scaler.kube.crs import ENTITLEMENT, GROUP, TOKEN_POOL, VERSION, Refused, bounded, name_of, to_manifest
from schemas.loader import provisioning_problems
from schemas.specs import DIMENSIONS, Entitlement, Tier, TokenPool, Triple

log = logging.getLogger("tokenpools.operator.webhook")

REVIEW_VERSION: Final = "admission.k8s.io/v1"
REFUSED: Final = 422
MAX_BODY: Final = 3 * 1024 * 1024  # the API server sends at most ~3 MiB objects


class Lookup(Protocol):
    """Where the webhook reads the other objects (blocking calls, run in a thread)."""

    def pool(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def entitlements(self, namespace: str) -> list[dict[str, Any]]: ...


class ApiLookup:
    """The API server itself."""

    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)

    def pool(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: Any = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, TOKEN_POOL.plural, name,
                                                           _request_timeout=5)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(obj)

    def entitlements(self, namespace: str) -> list[dict[str, Any]]:
        listed: Any = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, ENTITLEMENT.plural,
                                                           _request_timeout=5)
        items = [dict(i) for i in listed.get("items") or []]
        for item in items:
            item.setdefault("apiVersion", f"{GROUP}/{VERSION}")
            item.setdefault("kind", ENTITLEMENT.kind)
        return items


class BadReview(ValueError):
    """Not an AdmissionReview this webhook can answer (HTTP 400)."""


def _guarantees(entitlements: Iterable[Entitlement]) -> Triple:
    totals = [0.0, 0.0, 0.0]
    for ent in entitlements:
        if ent.spec.tier is Tier.GUARANTEED:
            for i, dim in enumerate(DIMENSIONS):
                totals[i] += ent.spec.guarantee.get(dim)
    return (totals[0], totals[1], totals[2])


def _over(totals: Triple, ceiling: Triple) -> set[int]:
    return {i for i in range(3) if totals[i] > 0 and totals[i] > ceiling[i] * (1 + 1e-9)}


def _messages(pool: TokenPool, entitlements: list[Entitlement], dims: set[int]) -> list[str]:
    """The loader's message for each offending dimension, at the full total (its last problem there)."""
    last: dict[str, str] = {}
    for _, fld, msg in provisioning_problems(pool, entitlements):
        last[fld] = msg
    return [last[f"spec.guarantee.{DIMENSIONS[i].value}"] for i in sorted(dims)
            if f"spec.guarantee.{DIMENSIONS[i].value}" in last]


def _valid(objs: Iterable[Mapping[str, Any]]) -> list[Entitlement]:
    out = []
    for obj in objs:
        with contextlib.suppress(Refused):
            manifest = to_manifest(obj)
            if isinstance(manifest, Entitlement):
                out.append(manifest)
    return out


def check_entitlement(new: Entitlement, old: Entitlement | None, pool: TokenPool,
                      others: list[Entitlement]) -> str | None:
    """Why ``new`` (replacing ``old``) cannot be admitted on ``pool`` beside ``others``; None if it can."""
    ceiling = pool.spec.capacity(pool.spec.replicas.max)
    after = _guarantees([*others, new])
    before = _guarantees([*others, old] if old is not None and old.spec.pool == pool.name else others)
    worse = {i for i in _over(after, ceiling) if after[i] > before[i] * (1 + 1e-12)}
    if not worse:
        return None
    text = "; ".join(_messages(pool, [*others, new], worse))
    return bounded(f"Entitlement '{new.name}': {text}")


def check_pool(new: TokenPool, old: TokenPool | None, entitlements: list[Entitlement]) -> str | None:
    """Why ``new`` (replacing ``old``) would leave its entitlements' guarantees unprovisionable."""
    mine = [e for e in entitlements if e.spec.pool == new.name]
    totals = _guarantees(mine)
    ceiling = new.spec.capacity(new.spec.replicas.max)
    over = _over(totals, ceiling)
    if old is not None:
        was = old.spec.capacity(old.spec.replicas.max)
        over = {i for i in over if ceiling[i] < was[i]}
    if not over:
        return None
    text = "; ".join(_messages(new, mine, over))
    return bounded(f"TokenPool '{new.name}' would not provision the guarantees of its entitlements: {text}")


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        review = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadReview(f"the body is not JSON ({exc})") from None
    if not isinstance(review, dict) or review.get("kind") != "AdmissionReview":
        raise BadReview("expected an AdmissionReview object")
    if review.get("apiVersion") != REVIEW_VERSION:
        raise BadReview(f"expected apiVersion {REVIEW_VERSION} (register the webhook with admissionReviewVersions: "
                        "[v1])")
    request = review.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str) or not request["uid"]:
        raise BadReview("the AdmissionReview has no request with a uid")
    if not isinstance(request.get("operation"), str):
        raise BadReview("the AdmissionReview's request has no operation")
    for part in ("object", "oldObject"):
        if request.get(part) is not None and not isinstance(request[part], dict):
            raise BadReview(f"request.{part} must be an object")
    return request


def _answer(uid: str, allowed: bool, message: str = "", code: int = REFUSED,
            warnings: list[str] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if not allowed:
        response["status"] = {"code": code, "message": message, "reason": "Invalid" if code == REFUSED else ""}
    if warnings:
        response["warnings"] = [bounded(w, 256) for w in warnings]
    return {"apiVersion": REVIEW_VERSION, "kind": "AdmissionReview", "response": response}


def _old_manifest(obj: Mapping[str, Any] | None) -> Any:
    if obj is None:
        return None
    try:
        return to_manifest(obj)
    except Refused:
        return None


async def review_entitlement(request: Mapping[str, Any], lookup: Lookup) -> dict[str, Any]:
    uid = request["uid"]
    if request["operation"] not in ("CREATE", "UPDATE") or request.get("object") is None:
        return _answer(uid, True)
    obj = request["object"]
    try:
        new = to_manifest(obj)
    except Refused as exc:
        return _answer(uid, False, f"Entitlement '{name_of(obj)}': {exc}")
    if not isinstance(new, Entitlement):
        return _answer(uid, False, f"expected an Entitlement, got a {new.kind}")
    namespace = str(request.get("namespace") or (obj.get("metadata") or {}).get("namespace") or "")
    try:
        pool_obj, listed = await asyncio.gather(asyncio.to_thread(lookup.pool, namespace, new.spec.pool),
                                                asyncio.to_thread(lookup.entitlements, namespace))
    except Exception as exc:
        return _answer(uid, False, f"cannot check the guarantees on pool '{new.spec.pool}': reading it from the API "
                                   f"server failed ({_short(exc)}); retry", code=503)
    if pool_obj is None:
        if new.spec.tier is Tier.GUARANTEED:
            return _answer(uid, True, warnings=[
                f"pool '{new.spec.pool}' does not exist in namespace '{namespace}' yet: the guarantee is checked "
                "against it only when the pool is created"])
        return _answer(uid, True)
    try:
        pool = to_manifest(pool_obj)
    except Refused:
        return _answer(uid, True, warnings=[f"pool '{new.spec.pool}' is not valid; the guarantee was not checked"])
    assert isinstance(pool, TokenPool)
    others = [e for e in _valid(listed) if e.name != new.name and e.spec.pool == pool.name]
    old = _old_manifest(request.get("oldObject"))
    problem = check_entitlement(new, old if isinstance(old, Entitlement) else None, pool, others)
    return _answer(uid, problem is None, problem or "")


async def review_pool(request: Mapping[str, Any], lookup: Lookup) -> dict[str, Any]:
    uid = request["uid"]
    if request["operation"] not in ("CREATE", "UPDATE") or request.get("object") is None:
        return _answer(uid, True)
    obj = request["object"]
    try:
        new = to_manifest(obj)
    except Refused as exc:
        return _answer(uid, False, f"TokenPool '{name_of(obj)}': {exc}")
    if not isinstance(new, TokenPool):
        return _answer(uid, False, f"expected a TokenPool, got a {new.kind}")
    namespace = str(request.get("namespace") or (obj.get("metadata") or {}).get("namespace") or "")
    try:
        listed = await asyncio.to_thread(lookup.entitlements, namespace)
    except Exception as exc:
        return _answer(uid, False, f"cannot check the guarantees on pool '{new.name}': listing its entitlements "
                                   f"failed ({_short(exc)}); retry", code=503)
    old = _old_manifest(request.get("oldObject"))
    problem = check_pool(new, old if isinstance(old, TokenPool) else None, _valid(listed))
    return _answer(uid, problem is None, problem or "")


def create_app(lookup: Lookup) -> FastAPI:
    app = FastAPI(title="tokenpools operator webhook", openapi_url=None, docs_url=None, redoc_url=None)

    async def handle(request: Request, review: Any) -> Response:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return JSONResponse({"error": f"the review is larger than {MAX_BODY} bytes"}, status_code=413)
        try:
            parsed = _parse(raw)
        except BadReview as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        answer = await review(parsed, lookup)
        response = answer["response"]
        if not response["allowed"]:
            log.info("refused %s %s: %s", parsed["operation"], name_of(parsed.get("object") or {}),
                     response["status"]["message"])
        return Response(orjson.dumps(answer), media_type="application/json")

    @app.post("/validate/entitlements")
    async def entitlements(request: Request) -> Response:
        return await handle(request, review_entitlement)

    @app.post("/validate/tokenpools")
    async def tokenpools(request: Request) -> Response:
        return await handle(request, review_pool)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the operator's process owns its signals
        pass

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


class WebhookServer:
    """The webhook app under uvicorn with TLS (the API server only calls HTTPS webhooks)."""

    def __init__(self, lookup: Lookup, *, cert: Path, key: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = create_app(lookup)
        self.host, self.requested_port = host, port
        self.cert, self.key = cert, key
        self.port = 0
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Listen (port 0: any free one); returns the port."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.requested_port))
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(self.app, ssl_certfile=str(self.cert), ssl_keyfile=str(self.key), log_level="warning",
                                lifespan="off", access_log=False, timeout_graceful_shutdown=1)
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="operator-webhook")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the webhook server stopped during startup")
            await asyncio.sleep(0.01)
        log.info("webhook serving https://%s:%d/validate/{entitlements,tokenpools}", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 10)


def _short(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"API server answered {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"
