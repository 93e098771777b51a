"""How an admitter is served: the one set of uvicorn options ``tokenpools admitter`` and ``tokenpools up`` share.

Both must serve with the same protections (``tokenpools.infra.slow_clients``: head and body read
timeouts, a cap on connections still sending their request), so both build their uvicorn options
here instead of each calling ``uvicorn.Config`` with its own idea of the defaults.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from fastapi import FastAPI

from admitter.settings import AdmitterSettings
from tokenpools.infra.slow_clients import ConnectionGuard, guarded_protocol


def connection_guard(settings: AdmitterSettings) -> ConnectionGuard:
    return ConnectionGuard(head_timeout=settings.header_timeout_seconds,
                           body_idle_timeout=settings.body_idle_timeout_seconds,
                           body_timeout=settings.body_timeout_seconds,
                           max_unadmitted=settings.max_unauthenticated_connections)


def uvicorn_options(app: FastAPI, settings: AdmitterSettings, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run(app, ...)`` / ``uvicorn.Config(app, ...)``.

    Also exports the guard's counters on the app's ``/metrics`` (one guard per served app).
    """
    guard = connection_guard(settings)
    app.state.admitter.metrics.watch_connections(guard)
    options: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "lifespan": "on", "log_level": "warning",
        "http": guarded_protocol(guard), "ws": "none",  # no websocket routes: an Upgrade gets plain HTTP
    }
    options.update(overrides)
    return options


def uvicorn_config(app: FastAPI, settings: AdmitterSettings, **overrides: Any) -> uvicorn.Config:
    """The ``uvicorn.Config`` of an admitter served in-process (``tokenpools up``)."""
    return uvicorn.Config(app, **uvicorn_options(app, settings, **overrides))
