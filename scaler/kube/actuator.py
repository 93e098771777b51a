"""Scale each pool's vLLM Deployment on Kubernetes, and say which of its pods serve.

``KubernetesActuator`` implements ``scaler.actuator.Actuator`` and ``EndpointSource`` in one
namespace. A pool's objects are found by label, ``tokenpools.dev/pool=<pool>`` (``pool_label``):

- **the Deployment**: exactly one Deployment with the label; none or several is an error naming them.
- **the Service**: the Service carries the same label. The actuator never reads Services (its
  Role has no ``services`` rule): the EndpointSlice controller copies a Service's labels onto its
  slices, so the slices are listed by the pool label, and ``kubernetes.io/service-name`` says whose
  they are. Two Services of one pool (say a headless one beside the ClusterIP one) give the same
  endpoints, which are deduplicated.

What each call reads:

- ``current(pool)``: ``spec.replicas`` of the Deployment's ``scale`` subresource.
- ``ready(pool)``: the Ready endpoints of the pool's EndpointSlices that are pods of its Deployment.
  The Deployment's ``status.readyReplicas`` is read too and kept beside it (``view(pool)``), but the
  slices win: they are what kube-proxy and the admitters route by, so capacity counts exactly the
  pods that get traffic. The two differ for a moment at every change (a pod turns Ready before the
  EndpointSlice controller lists it; a deleted pod leaves ``readyReplicas`` before its endpoint is
  marked terminating); a difference is logged at debug level, not acted on.
- ``endpoints(pool)``: ``http://<ip>:<port>`` of those endpoints, sorted: ``conditions.ready`` true
  and not ``terminating`` (an unset ``ready`` means ready, as the API defines it), the port that of
  the slice's port named ``port_name`` (``http``; a slice with a single unnamed port when
  ``port_name`` is None). A pod "of the Deployment" is told from the endpoint's ``targetRef`` name,
  which the ReplicaSet controller generates as ``<deployment>-<pod-template-hash>-<5 chars>`` (the
  part before the 5 chars cut to 58 characters): reading pods or ReplicaSets to follow
  ownerReferences would need more RBAC for no better answer.
- ``scale(pool, n)``: a merge patch of ``{"spec": {"replicas": n}}`` on the ``scale`` subresource with
  field manager ``tokenpools-scaler`` (so ``managedFields`` says who set the replicas), ``n`` clamped
  to the pool's [min, max] as a guard (the loop clamps already).

**Another autoscaler.** Before every ``scale``, the namespace's HorizontalPodAutoscalers
(``autoscaling/v2``) are listed afresh; one whose ``scaleTargetRef`` is the pool's Deployment makes
the actuator refuse: it does not patch, and logs one warning naming the HPA and saying that two
autoscalers would fight, once per conflict (not at every tick), and one line when the HPA is gone
and it acts again. ``scale`` then returns without acting rather than raising, so that the loop
goes on publishing the pool's ready replicas and endpoints (the HPA's pods still need routing);
``conflict(pool)`` returns the ``AutoscalerConflict`` (None when there is none) for callers and
tests that want the error itself, and ``check(pool)`` raises it.

**Caching.** The loop asks ``current``, ``ready`` and ``endpoints`` of every pool at every pool
state. One *snapshot* answers them for all pools: three list calls (Deployments and EndpointSlices
by the pool label, HPAs of the namespace), refreshed at most every ``ttl`` seconds (1 s), plus one
scale read per pool per ``ttl``; concurrent callers share one refresh. ``scale`` updates the cached
scale from its response. ``requests`` counts the API calls made. When a refresh fails (the API
server restarting), the last snapshot is served and the failure logged once per outage, as an
admitter keeps its last limits; with no snapshot yet, the error is raised.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kubernetes import client

from schemas.specs import TokenPool

log = logging.getLogger("tokenpools.scaler.kube")

POOL_LABEL = "tokenpools.dev/pool"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
FIELD_MANAGER = "tokenpools-scaler"
MERGE_PATCH = "application/merge-patch+json"
# The API server cuts a generateName base to 63 - 5 characters before adding the random suffix.
GENERATED_BASE_MAX = 58
_ALNUM = re.compile(r"[a-z0-9]+")

T = TypeVar("T")


class DeploymentNotFound(LookupError):
    """No Deployment, or more than one, carries the pool's label."""


class AutoscalerConflict(RuntimeError):
    """An HPA targets the pool's Deployment: two autoscalers on one Deployment would fight."""

    def __init__(self, pool: str, namespace: str, deployment: str, hpas: Sequence[str]) -> None:
        self.pool, self.namespace, self.deployment, self.hpas = pool, namespace, deployment, tuple(hpas)
        names = ", ".join(f"{namespace}/{h}" for h in self.hpas)
        noun = "HorizontalPodAutoscaler" if len(self.hpas) == 1 else "HorizontalPodAutoscalers"
        verb = "scales" if len(self.hpas) == 1 else "scale"
        super().__init__(
            f"pool {pool}: {noun} {names} already {verb} Deployment {namespace}/{deployment}; the token-pool "
            f"scaler refuses to scale it, since two autoscalers on one Deployment would fight (each undoing the "
            f"other's replicas). Delete the HPA, or leave this pool out of the scaler (--pool).")


@dataclass(frozen=True)
class PoolView:
    """What the API server says of one pool at one snapshot."""

    pool: str
    deployment: str | None
    deployment_ready: int  # the Deployment's status.readyReplicas
    endpoints: tuple[str, ...]  # Ready endpoints of its pods in the pool's EndpointSlices, sorted
    services: tuple[str, ...]  # Services whose slices carry the pool label
    problem: str | None = None  # why ``deployment`` is None

    @property
    def ready(self) -> int:
        return len(self.endpoints)


@dataclass
class _Snapshot:
    at: float
    views: dict[str, PoolView]
    hpas: list[client.V2HorizontalPodAutoscaler]


@dataclass
class _Scale:
    at: float
    replicas: int


@dataclass(frozen=True)
class Bounds:
    min: int
    max: int


def pod_of(deployment: str, pod: str) -> bool:
    """Whether ``pod`` is named as the ReplicaSet controller names the pods of ``deployment``."""
    if len(pod) <= 5 or not _ALNUM.fullmatch(pod[-5:]):
        return False
    base, prefix = pod[:-5], deployment + "-"
    if len(prefix) >= GENERATED_BASE_MAX:
        return base == prefix[:GENERATED_BASE_MAX]
    if not base.startswith(prefix):
        return False
    rest = base[len(prefix):]  # "<pod-template-hash>-", possibly cut short
    if len(base) == GENERATED_BASE_MAX:
        return re.fullmatch(r"[a-z0-9]*-?", rest) is not None
    return re.fullmatch(r"[a-z0-9]+-", rest) is not None


def _labels(meta: client.V1ObjectMeta | None) -> dict[str, str]:
    return (meta.labels or {}) if meta is not None else {}


def _url(address: str, port: int) -> str:
    return f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"


def slice_port(eps: client.V1EndpointSlice, port_name: str | None) -> int | None:
    """The slice's port named ``port_name``; with ``port_name`` None, its only port."""
    ports = [p for p in eps.ports or [] if p.port is not None]
    if port_name is None:
        return ports[0].port if len(ports) == 1 else None
    return next((p.port for p in ports if p.name == port_name), None)


def ready_endpoints(slices: Iterable[client.V1EndpointSlice], deployment: str, port_name: str | None) -> list[str]:
    """Sorted, deduplicated URLs of the Ready, not terminating endpoints of ``deployment``'s pods."""
    urls: set[str] = set()
    for eps in slices:
        if eps.address_type not in ("IPv4", "IPv6"):
            continue  # FQDN slices are deprecated and say nothing of pods
        port = slice_port(eps, port_name)
        if port is None:
            continue
        for ep in eps.endpoints or []:
            cond = ep.conditions
            ready = cond is None or cond.ready is None or cond.ready  # the API: "nil ... interpreted as true"
            terminating = cond is not None and cond.terminating is True
            ref = ep.target_ref
            if not ready or terminating or ref is None or ref.kind != "Pod" or not pod_of(deployment, ref.name or ""):
                continue
            if ep.addresses:
                # Every address of one endpoint is the same pod; the first is the one to dial, as kube-proxy does.
                urls.add(_url(ep.addresses[0], port))
    return sorted(urls)


def hpas_targeting(hpas: Iterable[client.V2HorizontalPodAutoscaler], deployment: str) -> list[str]:
    """Names of the HPAs whose scaleTargetRef is the Deployment ``deployment``, sorted."""
    out = []
    for hpa in hpas:
        ref = hpa.spec.scale_target_ref if hpa.spec is not None else None
        if ref is None or ref.kind != "Deployment" or ref.name != deployment:
            continue
        if ref.api_version and not ref.api_version.startswith("apps/"):
            continue  # another group's kind that happens to be called Deployment
        out.append(hpa.metadata.name if hpa.metadata is not None and hpa.metadata.name else "?")
    return sorted(out)


@dataclass
class _Reported:
    """Conditions already logged, so each is said once and not at every tick."""

    conflicts: dict[str, AutoscalerConflict] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    outage: bool = False


class KubernetesActuator:
    """``Actuator`` and ``EndpointSource`` on the pools' Deployments in ``namespace``."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        pools: Mapping[str, Bounds],
        *,
        pool_label: str = POOL_LABEL,
        port_name: str | None = "http",
        field_manager: str = FIELD_MANAGER,
        ttl: float = 1.0,
        request_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        may_act: Callable[[], bool] | None = None,
    ) -> None:
        """``pools``: the pools managed and their replica bounds; others raise KeyError. ``may_act``: asked
        right before every scale (a Lease's ``is_leader``), so of several scaler replicas only the leader
        changes a Deployment; the others go on reading and reporting, ready to take over."""
        self.api = api
        self.namespace = namespace
        self.pools = dict(pools)
        self.pool_label = pool_label
        self.port_name = port_name
        self.field_manager = field_manager
        self.ttl = ttl
        self.request_timeout = request_timeout
        self.clock = clock
        self.apps = client.AppsV1Api(api)
        self.discovery = client.DiscoveryV1Api(api)
        self.autoscaling = client.AutoscalingV2Api(api)
        self.requests = 0  # API calls made (what the cache saves is measured with it)
        self._snapshot: _Snapshot | None = None
        self._scales: dict[str, _Scale] = {}
        self._refresh_lock = asyncio.Lock()
        self._scale_locks: dict[str, asyncio.Lock] = {}
        self._reported = _Reported()
        self.may_act = may_act
        self.patches = 0  # scale patches sent (two replicas must never both send one for the same decision)
        self._standing_by = False

    @classmethod
    def for_pools(cls, api: client.ApiClient, namespace: str, pools: Mapping[str, TokenPool],
                  **kw: Any) -> KubernetesActuator:
        """From ``schemas.specs.TokenPool``s (their ``spec.replicas`` min and max)."""
        bounds = {n: Bounds(p.spec.replicas.min, p.spec.replicas.max) for n, p in pools.items()}
        return cls(api, namespace, bounds, **kw)

    # -- API calls (the client is synchronous: each runs in a thread) ----------------------------

    async def _call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        self.requests += 1
        return await asyncio.to_thread(fn, *args, _request_timeout=self.request_timeout, **kw)

    def _bounds(self, pool: str) -> Bounds:
        if pool not in self.pools:
            raise KeyError(pool)
        return self.pools[pool]

    async def _read(self) -> _Snapshot:
        selector = self.pool_label  # every object carrying the label, whatever the pool: one list per kind
        deps, slices, hpas = await asyncio.gather(
            self._call(self.apps.list_namespaced_deployment, self.namespace, label_selector=selector),
            self._call(self.discovery.list_namespaced_endpoint_slice, self.namespace, label_selector=selector),
            self._call(self.autoscaling.list_namespaced_horizontal_pod_autoscaler, self.namespace))
        by_pool: dict[str, list[client.V1Deployment]] = {}
        for dep in deps.items:
            by_pool.setdefault(_labels(dep.metadata).get(self.pool_label, ""), []).append(dep)
        slices_of: dict[str, list[client.V1EndpointSlice]] = {}
        for eps in slices.items:
            slices_of.setdefault(_labels(eps.metadata).get(self.pool_label, ""), []).append(eps)
        views = {pool: self._view(pool, by_pool.get(pool, []), slices_of.get(pool, [])) for pool in self.pools}
        return _Snapshot(self.clock(), views, list(hpas.items))

    def _view(self, pool: str, deps: list[client.V1Deployment], slices: list[client.V1EndpointSlice]) -> PoolView:
        names = sorted(d.metadata.name for d in deps if d.metadata is not None and d.metadata.name)
        services = tuple(sorted({_labels(s.metadata).get(SERVICE_NAME_LABEL, "?") for s in slices}))
        if len(names) != 1:
            where = f"label {self.pool_label}={pool} in namespace {self.namespace}"
            problem = (f"no Deployment has {where}" if not names
                       else f"{len(names)} Deployments have {where} ({', '.join(names)}); one is expected")
            return PoolView(pool, None, 0, (), services, problem)
        dep = deps[0]
        status_ready = (dep.status.ready_replicas or 0) if dep.status is not None else 0
        urls = tuple(ready_endpoints(slices, names[0], self.port_name))
        if len(urls) != status_ready:
            log.debug("pool %s: %d Ready endpoints in EndpointSlices, Deployment %s reports %d readyReplicas "
                      "(the slices count)", pool, len(urls), names[0], status_ready)
        return PoolView(pool, names[0], status_ready, urls, services)

    async def snapshot(self, *, fresh: bool = False) -> _Snapshot:
        snap = self._snapshot
        if not fresh and snap is not None and self.clock() - snap.at < self.ttl:
            return snap
        async with self._refresh_lock:
            snap = self._snapshot
            if not fresh and snap is not None and self.clock() - snap.at < self.ttl:
                return snap  # another caller refreshed while this one waited
            try:
                snap = self._snapshot = await self._read()
            except Exception as exc:  # ApiException, and urllib3's errors, which are no OSErrors
                if self._snapshot is None:
                    raise
                if not self._reported.outage:
                    self._reported.outage = True
                    log.warning("cannot read pools from the API server (%r); serving the last snapshot until it "
                                "answers", exc)
                return self._snapshot
            if self._reported.outage:
                self._reported.outage = False
                log.info("the API server answers again")
            for view in snap.views.values():
                self._note_problem(view)
            return snap

    def _note_problem(self, view: PoolView) -> None:
        said = self._reported.problems.get(view.pool)
        if view.problem != said:
            if view.problem is not None:
                log.warning("pool %s: %s", view.pool, view.problem)
                self._reported.problems[view.pool] = view.problem
            else:
                log.info("pool %s: Deployment %s found", view.pool, view.deployment)
                self._reported.problems.pop(view.pool, None)

    async def view(self, pool: str) -> PoolView:
        self._bounds(pool)
        return (await self.snapshot()).views[pool]

    async def _deployment(self, pool: str, *, fresh: bool = False) -> str:
        self._bounds(pool)
        view = (await self.snapshot(fresh=fresh)).views[pool]
        if view.deployment is None:
            raise DeploymentNotFound(f"pool {pool}: {view.problem}")
        return view.deployment

    # -- Actuator --------------------------------------------------------------------------------

    async def current(self, pool: str) -> int:
        name = await self._deployment(pool)
        cached = self._scales.get(name)
        if cached is not None and self.clock() - cached.at < self.ttl:
            return cached.replicas
        scale = await self._call(self.apps.read_namespaced_deployment_scale, name, self.namespace)
        replicas = (scale.spec.replicas or 0) if scale.spec is not None else 0
        self._scales[name] = _Scale(self.clock(), replicas)
        return replicas

    async def ready(self, pool: str) -> int:
        return (await self.view(pool)).ready

    async def endpoints(self, pool: str) -> list[str]:
        return list((await self.view(pool)).endpoints)

    async def conflict(self, pool: str, *, fresh: bool = True) -> AutoscalerConflict | None:
        """The HPA conflict that keeps this actuator from scaling ``pool``, if any (HPAs listed afresh)."""
        name = await self._deployment(pool)
        if fresh:
            hpas = (await self._call(self.autoscaling.list_namespaced_horizontal_pod_autoscaler, self.namespace)).items
            if self._snapshot is not None:
                self._snapshot.hpas = list(hpas)
        else:
            hpas = (await self.snapshot()).hpas
        names = hpas_targeting(hpas, name)
        return AutoscalerConflict(pool, self.namespace, name, names) if names else None

    async def check(self, pool: str) -> None:
        """Raise ``AutoscalerConflict`` when an HPA targets the pool's Deployment."""
        found = await self.conflict(pool)
        if found is not None:
            raise found

    async def scale(self, pool: str, replicas: int) -> None:
        bounds = self._bounds(pool)
        lock = self._scale_locks.setdefault(pool, asyncio.Lock())
        async with lock:
            found = await self.conflict(pool)
            if found is not None:
                said = self._reported.conflicts.get(pool)
                if said is None or said.hpas != found.hpas:
                    log.warning("%s", found)
                self._reported.conflicts[pool] = found
                return
            if self._reported.conflicts.pop(pool, None) is not None:
                log.info("pool %s: no HorizontalPodAutoscaler targets its Deployment any more; scaling it again", pool)
            if self.may_act is not None and not self.may_act():
                if not self._standing_by:
                    log.info("not the leader: leaving pool %s's Deployment to the scaler that holds the Lease", pool)
                self._standing_by = True
                return
            if self._standing_by:
                log.info("now the leader: scaling pool %s", pool)
                self._standing_by = False
            target = min(max(replicas, bounds.min), bounds.max)
            if target != replicas:
                log.warning("pool %s: asked for %d replicas, outside [%d, %d]; scaling to %d", pool, replicas,
                            bounds.min, bounds.max, target)
            name = await self._deployment(pool)
            scale = await self._call(self.apps.patch_namespaced_deployment_scale, name, self.namespace,
                                     {"spec": {"replicas": target}}, field_manager=self.field_manager,
                                     _content_type=MERGE_PATCH)
            self.patches += 1
            done = (scale.spec.replicas or 0) if scale.spec is not None else target
            self._scales[name] = _Scale(self.clock(), done)

    async def close(self) -> None:
        await asyncio.to_thread(self.api.close)
