"""``create_app``: the admitter as one FastAPI application.

The completion routes are raw ASGI endpoints (``completions.py``) mounted on the FastAPI router, so
they skip FastAPI's per-request dependency and model machinery; everything else (admin, usage,
metrics, health) is ordinary FastAPI. The lifespan runs ``AdmitterState.start`` / ``stop``: replica
discovery (if wired) first, the upstream client, the limit source (the allocator ticker in local
mode) and, with Kafka, the config sync; on shutdown the same in reverse, and the event sink.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.routing import Route

from admitter.admission.limits import LimitSource
from admitter.events import EventSink
from admitter.http.admin import build_router, json_response, require_admin
from admitter.http.auth import request_token
from admitter.http.body import CHAT, COMPLETIONS
from admitter.http.completions import CompletionEndpoint
from admitter.http.errors import install_handlers
from admitter.http.openapi import install_openapi
from admitter.kafka.config_sync import ConfigSync
from admitter.kafka.discovery import ReplicaDiscovery
from admitter.kafka.parts import kafka_parts
from admitter.settings import AdmitterSettings
from admitter.state import AdmitterState
from schemas.loader import PlatformConfig, load_config


def create_app(settings: AdmitterSettings, config: PlatformConfig | None = None, sink: EventSink | None = None,
               limits: LimitSource | None = None, config_sync: ConfigSync | None = None,
               discovery: ReplicaDiscovery | None = None) -> FastAPI:
    """Build the admitter; ``config`` defaults to loading ``settings.config_paths``.

    ``sink`` defaults to an ``InMemorySink``; ``limits`` to a ``LocalAllocator`` (in-process ticks).
    With ``settings.kafka_bootstrap`` the defaults are Kafka's instead (``admitter.kafka.parts``): a
    ``KafkaSink``, a ``StateFollower``, a ``ConfigSync`` seeded with ``config`` and, with
    ``settings.discover``, a ``ReplicaDiscovery``. ``discovery`` may also be given without Kafka settings.
    The state is on ``app.state.admitter`` (tests and embedding code read it).
    """
    if config is None:
        config = load_config(*settings.config_paths)
    if settings.kafka_bootstrap is not None:
        parts = kafka_parts(settings, config, sink, limits, config_sync, discovery)
        sink, limits, config_sync, discovery = parts.sink, parts.limits, parts.config_sync, parts.discovery
    state = AdmitterState(settings, config, sink=sink, limits=limits, config_sync=config_sync, discovery=discovery)
    state.metrics.watch_stats(lambda: state.sink, lambda: state.limits, lambda: state.config_sync)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    # No slash redirects: a 307 with an empty body is no answer for an API client (PUT /admin/entitlements/
    # was one); a path that matches nothing gets the JSON 404 instead.
    app = FastAPI(title="tokenpools admitter", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  redirect_slashes=False)
    app.state.admitter = state
    install_handlers(app)
    install_openapi(app)  # GET /openapi.json: hand-written, as the routes read Request themselves
    for path, kind in (("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETIONS)):
        app.router.routes.append(Route(path, CompletionEndpoint(state, kind, path), methods=["POST"]))
    app.include_router(build_router())

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if settings.public_metrics:
            request_token(request.scope["headers"])  # two Authorization headers are a 400 here too
        else:
            require_admin(request)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok", "admitter_id": settings.admitter_id, "passthrough": settings.passthrough,
                              "pools": sorted(state.gates)})

    return app
