"""The operator: TokenPool, Entitlement and GlobalEntitlement CRs onto ``tokenpools.config``, and status
back onto the CRs.

Admitters and pipeline workers read config only from Kafka; Kubernetes is where platform engineers
write it. The operator joins the two (the process is ``tokenpools operator``):

- **CRs to the config topic.** A ``Watcher`` per kind lists and watches the CRs (one namespace or
  all) into a cache; the config topic is read to its end into a view of what it holds. Whenever the
  cache changes, and every ``resync_seconds`` besides (so a record lost or overwritten on the topic is
  put right), the operator compares the manifest of every CR (``scaler.kube.crs.to_manifest``) with the
  topic's record under its key (``schemas.topics.config_key``) and writes only what differs, with an
  idempotent ``acks=all`` producer; a key on the topic without a CR gets a tombstone. Nothing is
  written before the topic was read to its end and every kind was listed, so a restarted operator
  writes nothing new. A CR the model refuses is not written (the topic keeps its last good version)
  and gets ``Provisionable=False`` with the reason. The topic holds one document per kind and name, so
  in all-namespaces mode a second CR of a name is refused the same way. Each record carries a
  ``tokenpools-writer`` header naming the replica that wrote it. After writing, the operator waits
  until its own reader has read the records back, so the next comparison sees them.
- **Status from the state topics.** ``tokenpools.entitlement-state`` and ``tokenpools.pool-state`` are
  followed; every ``status_interval`` the status each CR should have (``scaler.kube.status``) is
  compared with the last one written, and a changed one is patched through the ``status`` subresource
  with the CR's ``resourceVersion`` (a merge patch): a 409 means the CR changed in between, so it is
  re-read and the status recomputed (observedGeneration included). At most one write per CR every
  ``status_every`` seconds. A GlobalEntitlement's status is that of this region's share (the
  Entitlement of the same name its global loop writes), and the share itself: each region's cluster
  runs its own operator and sees only its own share.
- **One writer.** Every replica watches, reads and serves the webhook; only the holder of the Lease
  (``scaler.kube.leader``) writes to Kafka or to status, and it checks that it still holds it right
  before every write, so a replica that loses the Lease stops writing at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from scaler.kube import status as st
from scaler.kube.crs import (
    ENTITLEMENT,
    GLOBAL_ENTITLEMENT,
    GROUP,
    KINDS,
    TOKEN_POOL,
    VERSION,
    Kind,
    Refused,
    generation_of,
    to_manifest,
)
from scaler.kube.leader import LeaderElector, LeaseSettings
from scaler.kube.watch import Watcher
from schemas.records import EntitlementState, PoolState
from schemas.regions import GLOBAL_LABEL, REGION_LABEL
from schemas.topics import Topics, config_key, config_value
from schemas.wire import BadRecords, decode
from tokenpools.kafka.connection import bootstrap_of, connection
from tokenpools.kafka.progress import Partition
from tokenpools.kafka.reader import CompactedReader
from tokenpools.kafka.settings import KafkaSettings

log = logging.getLogger("tokenpools.operator")

WRITER_HEADER = "tokenpools-writer"
ObjKey = tuple[str, str, str]  # (plural, namespace, name)


@dataclass(frozen=True)
class OperatorOptions:
    lease: LeaseSettings
    namespace: str | None = None  # None: every namespace
    topic_prefix: str = ""
    resync_seconds: float = 60.0
    status_every: float = 5.0  # at most one status write per CR per this many seconds
    status_interval: float = 1.0  # how often statuses are recomputed
    ready_within: float = 30.0  # a state record older than this makes Ready=False
    watch_timeout: int = 300
    write_timeout: float = 30.0

    @property
    def identity(self) -> str:
        return self.lease.identity


@dataclass
class OperatorStats:
    config_writes: int = 0  # records (tombstones included) this replica wrote
    status_writes: int = 0
    status_conflicts: int = 0  # 409s on a status write, each followed by a re-read
    reconciles: int = 0  # comparisons of the CRs with the topic (as leader, synced)
    refused: dict[ObjKey, str] = field(default_factory=dict)


class Operator:
    """See the module doc. ``start`` then ``stop``; ``stop(release=False)`` plays a crash."""

    def __init__(self, api: client.ApiClient, kafka: KafkaSettings | str, options: OperatorOptions) -> None:
        self.api = api
        self.kafka = kafka
        self.options = options
        self.topics = Topics(options.topic_prefix)
        self.custom = client.CustomObjectsApi(api)
        self.cache: dict[str, dict[tuple[str, str], dict[str, Any]]] = {k.plural: {} for k in KINDS}
        self.listed: set[str] = set()
        self.topic_docs: dict[str, Any] = {}  # config key -> the JSON document the topic holds
        self.entitlement_states: dict[str, tuple[EntitlementState, float]] = {}
        self.pool_states: dict[str, tuple[PoolState, float]] = {}
        self.stats = OperatorStats()
        self.bad = BadRecords()
        self.conflicts: dict[ObjKey, str] = {}  # name clashes across namespaces
        self.throttle = st.Throttle(options.status_every)
        self.written_status: dict[ObjKey, dict[str, Any]] = {}
        # Test seam: called (in the writer's thread) between reading a CR and patching its status.
        self.before_status_write: Callable[[ObjKey, dict[str, Any]], None] | None = None
        self.elector = LeaderElector(api, options.lease, on_change=self._leader_changed)
        self.watchers = {k.plural: Watcher(api, k, options.namespace, self._from_thread,
                                           watch_timeout=options.watch_timeout) for k in KINDS}
        self.config_reader = CompactedReader(
            kafka, {self.topics.config: self._on_config}, bad=self.bad, client_id="tokenpools-operator-config",
            name="operator config reader", keeps="writing nothing until it is back", logger=log)
        self.state_reader = CompactedReader(
            kafka, {self.topics.entitlement_state: self._on_entitlement_state,
                    self.topics.pool_state: self._on_pool_state},
            bad=self.bad, client_id="tokenpools-operator-state", name="operator state reader",
            keeps="keeping the last statuses", logger=log)
        self._producer: AIOKafkaProducer | None = None
        self._dirty = asyncio.Event()
        self._listed_all = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.config_reader.start()
        await self.state_reader.start()
        for watcher in self.watchers.values():
            watcher.start()
        self.elector.start()
        self._tasks = [asyncio.create_task(self._config_loop(), name="operator-config"),
                       asyncio.create_task(self._status_loop(), name="operator-status")]

    async def stop(self, release: bool = True) -> None:
        """A clean stop releases the Lease; ``release=False`` leaves it to expire (a killed replica)."""
        await self.elector.stop(release=release)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for watcher in self.watchers.values():
            watcher.stop()
        await self.config_reader.stop()
        await self.state_reader.stop()
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await producer.stop()

    @property
    def identity(self) -> str:
        return self.options.identity

    @property
    def synced(self) -> bool:
        """Every kind listed and the config topic read to its end: only then may it write."""
        return len(self.listed) == len(KINDS) and self.config_reader.caught_up.is_set()

    async def wait_synced(self, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._listed_all.wait()
                await self.config_reader.caught_up.wait()
        return self.synced

    # -- the Kubernetes side ---------------------------------------------------------------------

    def _from_thread(self, what: str, kind: Kind, payload: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._apply, what, kind, payload)

    def _apply(self, what: str, kind: Kind, payload: Any) -> None:
        objs = self.cache[kind.plural]
        if what == "list":
            objs.clear()
            for obj in payload:
                objs[_where(obj)] = obj
            self.listed.add(kind.plural)
            if len(self.listed) == len(KINDS):
                self._listed_all.set()
        elif what == "DELETED":
            objs.pop(_where(payload), None)
            self.throttle.forget((kind.plural, *_where(payload)))
            self.written_status.pop((kind.plural, *_where(payload)), None)
        elif what in ("ADDED", "MODIFIED"):
            payload.setdefault("apiVersion", f"{GROUP}/{VERSION}")
            payload.setdefault("kind", kind.kind)
            objs[_where(payload)] = payload
        self._dirty.set()

    def _leader_changed(self, leading: bool) -> None:
        if leading:
            self.written_status.clear()  # another replica may have written since
            self._dirty.set()

    # -- the Kafka side --------------------------------------------------------------------------

    def _on_config(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        skey = key.decode("utf-8", "replace")
        if value is None:
            self.topic_docs.pop(skey, None)
        else:
            try:
                self.topic_docs[skey] = orjson.loads(value)
            except orjson.JSONDecodeError:
                self.topic_docs[skey] = None  # unreadable: differs from any manifest, so it is rewritten

    def _on_entitlement_state(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            if key is not None:
                self.entitlement_states.pop(key.decode("utf-8", "replace"), None)
            return
        state = decode(EntitlementState, value, self.topics.entitlement_state, self.bad)
        if state is not None:
            self.entitlement_states[state.id] = (state, time.monotonic())

    def _on_pool_state(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            if key is not None:
                self.pool_states.pop(key.decode("utf-8", "replace"), None)
            return
        state = decode(PoolState, value, self.topics.pool_state, self.bad)
        if state is not None:
            self.pool_states[state.id] = (state, time.monotonic())

    # -- config: CRs onto the topic ---------------------------------------------------------------

    async def _config_loop(self) -> None:
        # A change seen while this replica cannot write yet (not synced, not leading) stays pending and
        # is retried at a short interval, not at the next resync.
        pending = True
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.25 if pending else self.options.resync_seconds):
                    await self._dirty.wait()
            self._dirty.clear()
            if not (self.synced and self.elector.is_leader):
                pending = True
                continue
            pending = False
            try:
                await self.reconcile_config()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("writing to %s failed (%r); retrying", self.topics.config, exc)
                await self._drop_producer()
                await asyncio.sleep(1.0)
                self._dirty.set()

    def desired_config(self) -> tuple[dict[str, Any], set[str], dict[ObjKey, str]]:
        """What the topic should hold (key -> document), every key a CR stands for, and the refusals."""
        desired: dict[str, Any] = {}
        present: dict[str, str] = {}
        refusals: dict[ObjKey, str] = {}
        for kind in KINDS:
            for (ns, name), obj in sorted(self.cache[kind.plural].items()):
                key = f"{kind.kind}/{name}"
                if key in present:
                    refusals[(kind.plural, ns, name)] = (
                        f"a {kind.kind} named '{name}' exists in namespace '{present[key]}' too; the config topic "
                        f"holds one {kind.kind} per name: rename one of them")
                    continue
                present[key] = ns
                try:
                    manifest = to_manifest(obj)
                except Refused as exc:
                    refusals[(kind.plural, ns, name)] = str(exc)
                    continue
                desired[config_key(manifest)] = orjson.loads(config_value(manifest))
        return desired, set(present), refusals

    async def reconcile_config(self) -> int:
        """Write what differs between the CRs and the topic; returns the records written."""
        self.stats.reconciles += 1
        desired, present, refusals = self.desired_config()
        self.conflicts = {k: v for k, v in refusals.items() if "config topic holds one" in v}
        self.stats.refused = refusals
        kinds = {k.kind for k in KINDS}
        upserts = [(k, v) for k, v in desired.items() if self.topic_docs.get(k, ()) != v]
        # A region's share of a GlobalEntitlement is written by its global loop, not from a CR: not ours.
        gone = [k for k in self.topic_docs if k.split("/", 1)[0] in kinds and k not in present
                and not _regional_share(self.topic_docs[k])]
        # Pools before the entitlements that name them; entitlements gone before their pools.
        upserts.sort(key=lambda kv: (not kv[0].startswith(TOKEN_POOL.kind + "/"), kv[0]))
        gone.sort(key=lambda k: (not k.startswith(ENTITLEMENT.kind + "/"), k))
        todo: list[tuple[str, bytes | None]] = [(k, orjson.dumps(v)) for k, v in upserts] + [(k, None) for k in gone]
        if not todo:
            return 0
        written: dict[Partition, int] = {}
        count = 0
        for key, value in todo:
            if not self.elector.is_leader:
                log.info("%s lost the lease; stopping writes to %s", self.identity, self.topics.config)
                break
            producer = await self._get_producer()
            async with asyncio.timeout(self.options.write_timeout):
                meta = await producer.send_and_wait(self.topics.config, value, key=key.encode(),
                                                    headers=[(WRITER_HEADER, self.identity.encode())])
            self.stats.config_writes += 1
            count += 1
            tp = Partition(meta.topic, meta.partition)
            written[tp] = max(written.get(tp, -1), meta.offset)
            log.info("config: %s %s", "deleted" if value is None else "wrote", key)
        await self._read_back(written)
        return count

    async def _read_back(self, written: Mapping[Partition, int]) -> None:
        """Wait until the reader is past what was written, so the next comparison sees it."""
        deadline = time.monotonic() + self.options.write_timeout
        while any(self.config_reader.position(tp) <= offset for tp, offset in written.items()):
            if time.monotonic() > deadline:
                log.warning("the config reader did not read back this replica's writes in %.0f s",
                            self.options.write_timeout)
                return
            await asyncio.sleep(0.05)

    async def _get_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            # Idempotent: a retried batch never lands twice, and records keep their order, so a CR's
            # later version can never be overtaken by an earlier one.
            producer = AIOKafkaProducer(**connection(self.kafka), acks="all", enable_idempotence=True,
                                        client_id=f"tokenpools-operator-{self.identity}")
            try:
                await producer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            self._producer = producer
            log.info("writing CRs to %s on Kafka at %s", self.topics.config, bootstrap_of(self.kafka))
        return self._producer

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await producer.stop()

    # -- status: state topics onto the CRs ----------------------------------------------------------

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.status_interval)
            if not (self.synced and self.elector.is_leader):
                continue
            try:
                await self.write_statuses()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("writing status failed: %r", exc)

    async def write_statuses(self) -> int:
        """Patch every CR whose status changed (within the rate limit); returns how many were patched."""
        now, mono = time.time(), time.monotonic()
        patched = 0
        for kind in KINDS:
            for (ns, name), obj in list(self.cache[kind.plural].items()):
                key: ObjKey = (kind.plural, ns, name)
                want = self.status_for(kind, obj, now)
                last = self.written_status.get(key, obj.get("status"))
                if st.same(want, last) or not self.throttle.allows(key, mono):
                    continue
                if not self.elector.is_leader:
                    return patched
                self.throttle.wrote(key, mono)
                written = await asyncio.to_thread(self._patch_status, kind, ns, name)
                if written is not None:
                    self.written_status[key] = written
                    patched += 1
        return patched

    def status_for(self, kind: Kind, obj: Mapping[str, Any], now: float) -> dict[str, Any]:
        name = str(obj["metadata"]["name"])
        where: ObjKey = (kind.plural, str(obj["metadata"].get("namespace", "")), name)
        refusal = self.conflicts.get(where)
        if refusal is None:
            try:
                to_manifest(obj)
            except Refused as exc:
                refusal = str(exc)
        previous = obj.get("status") if isinstance(obj.get("status"), Mapping) else None
        generation = generation_of(obj)
        if kind is ENTITLEMENT:
            es = self.entitlement_states.get(name)
            return st.entitlement_status(generation=generation, refusal=refusal, state=es[0] if es else None,
                                         seen=es[1] if es else None, ready_within=self.options.ready_within,
                                         previous=previous, now=now)
        if kind is GLOBAL_ENTITLEMENT:
            es = self.entitlement_states.get(name)
            return st.global_entitlement_status(
                generation=generation, refusal=refusal, state=es[0] if es else None, seen=es[1] if es else None,
                shares=self._regional_shares(name), ready_within=self.options.ready_within,
                previous=previous, now=now)
        ps = self.pool_states.get(name)
        return st.pool_status(generation=generation, refusal=refusal, state=ps[0] if ps else None,
                              seen=ps[1] if ps else None, ready_within=self.options.ready_within,
                              previous=previous, now=now)

    def _patch_status(self, kind: Kind, namespace: str, name: str, attempts: int = 5) -> dict[str, Any] | None:
        """Read, compute, patch with the read resourceVersion; on 409 read again (blocking)."""
        for _ in range(attempts):
            try:
                obj: Any = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, kind.plural, name)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            if self.before_status_write is not None:
                self.before_status_write((kind.plural, namespace, name), obj)
            want = self.status_for(kind, obj, time.time())
            body = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "status": want}
            if not self.elector.is_leader:
                return None
            try:
                self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, kind.plural, name, body)
            except ApiException as exc:
                if exc.status == 409:
                    self.stats.status_conflicts += 1
                    continue
                if exc.status == 404:
                    return None
                raise
            self.stats.status_writes += 1
            return want
        log.warning("status of %s %s/%s: still conflicting after %d attempts; retrying later", kind.kind,
                    namespace, name, attempts)
        return None

    def _regional_shares(self, name: str) -> dict[str, dict[str, float]]:
        """This region's share of GlobalEntitlement ``name`` as its global loop wrote it to the config topic."""
        doc = self.topic_docs.get(f"{ENTITLEMENT.kind}/{name}")
        if not _regional_share(doc):
            return {}
        labels = doc["metadata"]["labels"]
        burst = (doc.get("spec") or {}).get("burst") or {}
        region = labels.get(REGION_LABEL)
        if not isinstance(region, str) or not isinstance(burst, dict):
            return {}
        return {region: {d: float(v) for d, v in burst.items() if isinstance(v, int | float)}}

    def counts(self) -> dict[str, Counter[str]]:
        return {plural: w.counts for plural, w in self.watchers.items()}


def _where(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


def _regional_share(doc: Any) -> bool:
    labels = (doc.get("metadata") or {}).get("labels") or {} if isinstance(doc, dict) else {}
    return isinstance(labels, dict) and GLOBAL_LABEL in labels
