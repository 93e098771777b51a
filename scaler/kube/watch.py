"""List-then-watch one custom resource type, in a thread of its own (the client is blocking).

``Watcher.run`` lists the CRs (every namespace, or one), hands the whole list to ``sink``, then watches
from the list's ``resourceVersion`` and hands over every event, bookmarks keeping the version fresh.

- A watch the server closes (``timeoutSeconds``) is resumed from the last version seen: nothing is
  missed and nothing relisted.
- **410 Gone** (the version is older than what the API server still has, as an ``ERROR`` event or an
  HTTP 410) means events were lost: the watcher relists at once, and the sink tells the vanished
  objects from the list (the operator tombstones them).
- **Any other failure** (the API server away, a broken stream, 5xx) relists after an exponential
  backoff, since the watcher cannot know what it missed.

``interrupt`` closes the current stream from another thread (``stop`` and tests use it; a test also
sets ``resource_version`` to a too-old one first, to get a real 410 from the API server).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from scaler.kube.crs import GROUP, VERSION, Kind
from tokenpools.kafka.progress import Backoff

log = logging.getLogger("tokenpools.operator.watch")

Sink = Callable[[str, Kind, Any], None]  # ("list", kind, items) or ("ADDED"|"MODIFIED"|"DELETED", kind, obj)


class Gone(Exception):
    """The API server no longer has the history from our resourceVersion on (HTTP 410)."""


class Watcher:
    def __init__(self, api: client.ApiClient, kind: Kind, namespace: str | None, sink: Sink, *,
                 watch_timeout: int = 300, backoff: Backoff | None = None) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.kind = kind
        self.namespace = namespace
        self.sink = sink
        self.watch_timeout = watch_timeout
        self.backoff = backoff or Backoff(initial=0.5, cap=30.0)
        self.resource_version: str | None = None
        self.counts: Counter[str] = Counter()  # lists, gone, errors, events
        self._stop = threading.Event()
        self._interrupted = False
        self._resp: Any = None
        self._restart_at: str | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # A daemon thread: a blocked read never holds up the process's exit.
        self._thread = threading.Thread(target=self.run, name=f"watch-{self.kind.plural}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.interrupt()

    def interrupt(self) -> None:
        """End the current watch stream now; the loop goes on (relist or resume) unless stopped."""
        with self._lock:
            resp, self._interrupted = self._resp, True
        if resp is not None:
            shutdown = getattr(resp, "shutdown", None)  # urllib3 >= 2.3: unblocks a read in another thread
            try:
                if callable(shutdown):
                    shutdown()
                resp.close()
            except Exception as exc:
                log.debug("closing the %s watch: %r", self.kind.plural, exc)

    def restart_from(self, resource_version: str) -> None:
        """End the current stream and watch again from ``resource_version`` (tests: a too-old one gets a
        real 410 from the API server, which the watcher must survive by relisting)."""
        with self._lock:
            self._restart_at = resource_version
        self.interrupt()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self._list()
                self._watch()
            except Gone:
                self.counts["gone"] += 1
                log.info("%s watch expired (410 Gone at resourceVersion %s); relisting", self.kind.plural,
                         self.resource_version)
                self.resource_version = None
            except Exception as exc:
                if self._stop.is_set():
                    break
                with self._lock:
                    interrupted, self._interrupted = self._interrupted, False
                if interrupted:
                    continue  # closed on purpose: resume from the version we have
                self.counts["errors"] += 1
                self.resource_version = None
                delay = self.backoff.next()
                log.warning("%s watch failed (%s); relisting in %.1f s", self.kind.plural, _short(exc), delay)
                self._stop.wait(delay)

    def _call(self, **kwargs: Any) -> Any:
        if self.namespace is None:
            return self.custom.list_cluster_custom_object(GROUP, VERSION, self.kind.plural, **kwargs)
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, self.kind.plural, **kwargs)

    def _list(self) -> None:
        listed = self._call(_request_timeout=60)
        items = list(listed.get("items") or [])
        for item in items:  # list items carry no apiVersion/kind of their own
            item.setdefault("apiVersion", f"{GROUP}/{VERSION}")
            item.setdefault("kind", self.kind.kind)
        self.resource_version = str(listed["metadata"]["resourceVersion"])
        self.counts["lists"] += 1
        self.sink("list", self.kind, items)

    def _watch(self) -> None:
        with self._lock:
            if self._restart_at is not None:
                self.resource_version, self._restart_at = self._restart_at, None
        resp = self._call(watch=True, resource_version=self.resource_version, allow_watch_bookmarks=True,
                          timeout_seconds=self.watch_timeout, _preload_content=False,
                          _request_timeout=(10, self.watch_timeout + 30))
        with self._lock:
            self._resp, self._interrupted = resp, False
        try:
            if resp.status == 410:
                raise Gone()
            if not 200 <= resp.status < 300:
                raise ApiException(status=resp.status, reason=resp.reason, body=resp.data.decode("utf-8", "replace"))
            self.backoff.reset()
            for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                if self._stop.is_set():
                    return
                if line:
                    self._event(json.loads(line))
        finally:
            with self._lock:
                self._resp = None
            resp.close()
            resp.release_conn()

    def _event(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ApiException(status=obj.get("code"), reason=f"{obj.get('reason')}: {obj.get('message')}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind != "BOOKMARK":
            self.counts["events"] += 1
            self.sink(str(kind), self.kind, obj)
        if version:
            self.resource_version = str(version)


def _short(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"API server answered {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"
