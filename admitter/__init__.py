"""The edge admitter: an OpenAI-compatible gateway that enforces token pools per request.

Public API:

- ``create_app(settings, config=None, sink=None, limits=None) -> FastAPI`` (``admitter.app``)
- ``AdmitterSettings`` (``admitter.settings``): where to listen, admin key, timeouts, backends...
- ``EventSink`` protocol and ``InMemorySink`` (``admitter.events``): where request events go
- ``LimitSource`` protocol and ``LocalAllocator`` (``admitter.limits``): where limits come from

Modules: ``handler`` (the completion routes, the hot path), ``gate`` (decide / queue / release
around the capacity model, cancel handles), ``proxy`` and ``clients`` (replicas, relay, retries),
``body`` (request checks), ``auth``, ``errors``, ``admin``, ``metrics``, ``usage``, ``state``.
Run it with ``tokenpools admitter --config PATH``.
"""

from admitter.app import create_app
from admitter.events import EventSink, InMemorySink
from admitter.limits import LimitSource, LocalAllocator
from admitter.settings import AdmitterSettings

__all__ = ["AdmitterSettings", "EventSink", "InMemorySink", "LimitSource", "LocalAllocator", "create_app"]
