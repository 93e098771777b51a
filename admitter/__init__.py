"""The edge admitter: an OpenAI-compatible gateway that enforces token pools per request.

Public API:

- ``create_app(settings, config=None, sink=None, limits=None, ...) -> FastAPI`` (``admitter.http.app``)
- ``AdmitterSettings`` (``admitter.settings``): where to listen, admin key, timeouts, backends...
- ``EventSink`` protocol and ``InMemorySink`` (``admitter.events``): where request events go
- ``LimitSource`` protocol and ``LocalAllocator`` (``admitter.admission.limits``): where limits come from

Subpackages, by concern:

- ``http``: the app, the completion routes (``completions``, the hot path), admin and usage routes
  (``admin``, ``views``), request bodies, credentials, OpenAI-shaped errors and refusals, OpenAPI, uvicorn options;
- ``admission``: the per-pool ``gate`` (decide / queue / release around the capacity model, cancel
  handles), ``limits`` (where limits come from) and ``usage`` counters;
- ``upstream``: replicas (membership, picking), the relay with its retries, the HTTP clients;
- ``kafka``: the spooled event sink, the state follower (limits), the config sync, replica
  discovery, and ``parts`` (all of them built from settings).

Beside them: ``settings``, ``state`` (the runtime object the routes share, and the config change
path), ``events`` (the sink protocol), ``metrics`` and ``stats`` (what the background parts report).
Run it with ``tokenpools admitter --config PATH``.
"""

from admitter.admission.limits import LimitSource, LocalAllocator
from admitter.events import EventSink, InMemorySink
from admitter.http.app import create_app
from admitter.settings import AdmitterSettings

__all__ = ["AdmitterSettings", "EventSink", "InMemorySink", "LimitSource", "LocalAllocator", "create_app"]
