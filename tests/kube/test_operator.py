"""The operator on a real control plane and a real Kafka: CRs onto ``tokenpools.config``, status back.

Every operator here runs in this process (``scaler.kube.operator.Operator``, as ``tokenpools operator``
runs it) against the session's kube-apiserver with the CRDs the chart ships
(``deploy/helm/tokenpools/crds``), in a namespace of its own, and against the integration suite's
broker with a fresh topic prefix. Lease timings are short (4 s lease, 3 s renew deadline) so a
takeover takes seconds; the takeover time is printed, not asserted.

The 410 is the API server's own: the watcher is told to watch again from resourceVersion 1, which the
API server no longer has, so it answers 410 Gone (``Watcher.restart_from`` is the only test seam
there); the operator must relist and miss nothing that changed meanwhile. The 409 is real too: the CR
is updated between the operator's read and its status patch (``Operator.before_status_write``).
"""

# ruff: noqa: F811  (the Kafka fixtures are imported by name, and taken as parameters)
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kubernetes.client import CoordinationV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from scaler.kube.crs import GROUP, VERSION, Refused, to_manifest
from scaler.kube.leader import LeaseSettings
from scaler.kube.operator import WRITER_HEADER, Operator, OperatorOptions
from schemas.records import Amounts, EntitlementState, PoolState
from schemas.regions import GlobalEntitlement, regional_entitlement
from schemas.specs import Resources, Tier
from schemas.topics import Topics, config_key, config_value
from schemas.wire import encode
from streams.topics import create_topics
from tests.integration.conftest import kafka, kafka_io, prefix  # noqa: F401
from tests.integration.harness import eventually

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "deploy" / "helm" / "tokenpools" / "crds"
WAIT = 60.0
LEASE = {"lease_duration": 4.0, "renew_deadline": 3.0, "retry_period": 0.5}


def apply_crds(kube: kubernetes.client.ApiClient) -> None:
    """Create (or replace) the chart's CRDs and wait until they are served."""
    from kubernetes.dynamic import DynamicClient

    files = sorted(CRDS.glob("*.yaml"))
    assert files, f"no CRDs in {CRDS}"
    crds = DynamicClient(kube).resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
    names = []
    for path in files:
        doc = yaml.safe_load(path.read_text())
        names.append(doc["metadata"]["name"])
        crds.server_side_apply(body=doc, field_manager="tokenpools-tests", force_conflicts=True)
    ext = kubernetes.client.ApiextensionsV1Api(kube)
    deadline = time.monotonic() + WAIT
    for name in names:
        while True:
            conditions = ext.read_custom_resource_definition(name).status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            assert time.monotonic() < deadline, f"CRD {name} not Established"
            time.sleep(0.1)


@pytest.fixture(scope="session")
def crds(kube: kubernetes.client.ApiClient) -> None:
    apply_crds(kube)


def pool_cr(name: str = "p", max_replicas: int = 4) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TokenPool", "metadata": {"name": name},
            "spec": {"model": "llama-3-8b", "perReplica": {"throughput": 1000, "kv": 100000, "concurrency": 16},
                     "replicas": {"min": 1, "max": max_replicas}}}


def entitlement_cr(name: str, pool: str = "p", guarantee: float = 100, weight: float = 1.0) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Entitlement", "metadata": {"name": name},
            "spec": {"pool": pool, "tenant": f"tenant-{name}", "tier": "guaranteed", "weight": weight,
                     "guarantee": {"throughput": guarantee},
                     "burst": {"throughput": 1000, "kv": 10000, "concurrency": 4}}}


def manifest_json(cr: dict[str, Any]) -> Any:
    """What the config topic should hold for ``cr``."""
    return orjson.loads(config_value(to_manifest(cr)))


class Crs:
    """Create, patch, read and delete CRs of one namespace (blocking calls, run in a thread)."""

    def __init__(self, kube: kubernetes.client.ApiClient, namespace: str) -> None:
        self.api = CustomObjectsApi(kube)
        self.ns = namespace

    async def create(self, cr: dict[str, Any]) -> dict[str, Any]:
        plural = _plural(cr)
        return await asyncio.to_thread(self.api.create_namespaced_custom_object, GROUP, VERSION, self.ns, plural, cr)

    async def patch(self, kind: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self.patch_now, kind, name, body)

    def patch_now(self, kind: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.api.patch_namespaced_custom_object(GROUP, VERSION, self.ns, _PLURALS[kind],
                                                                         name, body)
        return result

    async def get(self, kind: str, name: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.api.get_namespaced_custom_object, GROUP, VERSION, self.ns,
                                       _PLURALS[kind], name)

    async def delete(self, kind: str, name: str) -> None:
        await asyncio.to_thread(self.api.delete_namespaced_custom_object, GROUP, VERSION, self.ns, _PLURALS[kind], name)


_PLURALS = {"TokenPool": "tokenpools", "Entitlement": "entitlements", "GlobalEntitlement": "globalentitlements"}


def _plural(cr: dict[str, Any]) -> str:
    return _PLURALS[cr["kind"]]


async def config_records(bootstrap: str, topic: str) -> list[tuple[str, Any, str]]:
    """Every record of the config topic: (key, decoded document or None, writer header)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[tuple[str, Any, str]] = []
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                for r in records:
                    writer = dict(r.headers or ()).get(WRITER_HEADER, b"").decode()
                    out.append((r.key.decode(), orjson.loads(r.value) if r.value is not None else None, writer))
        return out
    finally:
        await consumer.stop()


def live(records: list[tuple[str, Any, str]]) -> dict[str, Any]:
    view: dict[str, Any] = {}
    for key, doc, _ in records:
        if doc is None:
            view.pop(key, None)
        else:
            view[key] = doc
    return view


@pytest.fixture
async def topics(kafka: Any, prefix: str) -> Topics:
    names = Topics(prefix)
    await create_topics(kafka.bootstrap_servers, names.specs(partitions=1))
    return names


Make = Callable[..., Awaitable[Operator]]


@pytest.fixture
async def operators(control_plane: Any, kafka: Any, topics: Topics, kube_namespace: str,
                    crds: None) -> AsyncIterator[Make]:
    started: list[Operator] = []

    async def make(identity: str, **options: Any) -> Operator:
        api = control_plane.api_client()
        lease = LeaseSettings(namespace=kube_namespace, identity=identity, **LEASE)
        opts = OperatorOptions(lease=lease, namespace=kube_namespace, topic_prefix=topics.prefix,
                               status_every=options.pop("status_every", 0.5), status_interval=0.2, **options)
        op = Operator(api, kafka.bootstrap_servers, opts)
        await op.start()
        started.append(op)
        return op

    yield make
    for op in started:
        with contextlib.suppress(Exception):
            await op.stop()
        op.api.close()


@pytest.fixture
def crs(kube: kubernetes.client.ApiClient, kube_namespace: str) -> Iterator[Crs]:
    yield Crs(kube, kube_namespace)


async def leader_of(*ops: Operator) -> Operator:
    async def one() -> Operator | None:
        leading = [op for op in ops if op.elector.is_leader]
        return leading[0] if len(leading) == 1 else None

    found: Operator = await eventually(one, within=WAIT, every=0.1)
    return found


async def test_crs_onto_the_config_topic_edits_deletes_and_a_restart_writes_nothing(
        operators: Make, crs: Crs, kafka: Any, topics: Topics) -> None:
    pool, ent = pool_cr(), entitlement_cr("e1")
    await crs.create(pool)
    await crs.create(ent)
    op = await operators("op-a")
    await leader_of(op)

    async def topic_is(expected: dict[str, Any]) -> list[tuple[str, Any, str]]:
        records = await config_records(kafka.bootstrap_servers, topics.config)
        assert live(records) == expected
        return records

    await eventually(lambda: topic_is({"TokenPool/p": manifest_json(pool), "Entitlement/e1": manifest_json(ent)}),
                     within=WAIT)

    await crs.patch("Entitlement", "e1", {"spec": {"weight": 3}})
    ent["spec"]["weight"] = 3
    await eventually(lambda: topic_is({"TokenPool/p": manifest_json(pool), "Entitlement/e1": manifest_json(ent)}),
                     within=WAIT)

    await crs.delete("Entitlement", "e1")
    records = await eventually(lambda: topic_is({"TokenPool/p": manifest_json(pool)}), within=WAIT)
    assert records[-1][:2] == ("Entitlement/e1", None)  # a tombstone, not a rewrite of the pool
    assert {writer for *_, writer in records} == {"op-a"}
    written = op.stats.config_writes
    assert written == len(records)

    # A restart (same identity, as a pod restarted in place) reads the topic to its end and writes nothing.
    await op.stop()
    again = await operators("op-a")
    await leader_of(again)
    assert await again.wait_synced(WAIT)
    await eventually(lambda: _true(again.stats.reconciles >= 1), within=WAIT, every=0.1)
    assert await again.reconcile_config() == 0
    assert again.stats.config_writes == 0
    assert len(await config_records(kafka.bootstrap_servers, topics.config)) == len(records)

    # A region's share of a GlobalEntitlement is written by the region's global loop, with no CR behind it:
    # the operator leaves it alone.
    share = regional_entitlement(
        GlobalEntitlement.model_validate({"metadata": {"name": "g1"}, "spec": {
            "model": "llama", "regions": ["local"], "tenant": "t", "tier": "elastic", "burst": {"throughput": 10}}}),
        "p", "local", Resources(throughput=5), Resources())
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(topics.config, config_value(share), key=config_key(share).encode())
    finally:
        await producer.stop()
    await eventually(lambda: _true(config_key(share) in again.topic_docs), within=WAIT, every=0.1)
    assert await again.reconcile_config() == 0


async def _true(value: bool) -> bool:
    return value


async def test_an_expired_watch_relists_and_misses_nothing(operators: Make, crs: Crs, kafka: Any,
                                                          topics: Topics) -> None:
    pool = pool_cr()
    await crs.create(pool)
    await crs.create(entitlement_cr("e1"))
    op = await operators("op-a")
    await leader_of(op)
    assert await op.wait_synced(WAIT)
    watcher = op.watchers["entitlements"]
    lists = watcher.counts["lists"]

    # Watch again from a version the API server no longer keeps: it answers 410 Gone. The changes made
    # right after can only be seen through the relist (or the watch that follows it).
    watcher.restart_from("1")
    e2 = entitlement_cr("e2", guarantee=50)
    await crs.create(e2)
    await crs.delete("Entitlement", "e1")

    await eventually(lambda: _true(watcher.counts["gone"] >= 1 and watcher.counts["lists"] > lists), within=WAIT,
                     every=0.1)

    async def topic_right() -> bool:
        view = live(await config_records(kafka.bootstrap_servers, topics.config))
        assert view == {"TokenPool/p": manifest_json(pool), "Entitlement/e2": manifest_json(e2)}
        return True

    await eventually(topic_right, within=WAIT)
    assert set(op.cache["entitlements"]) == {(crs.ns, "e2")}


def _state(name: str, seq: int, throughput: float, admitters: int = 2) -> EntitlementState:
    share = Amounts(throughput=throughput / admitters, kv=500, concurrency=2)
    return EntitlementState(id=name, pool="p", tier=Tier.GUARANTEED, seq=seq, ts=time.time(),
                            limits=Amounts(throughput=throughput, kv=1000, concurrency=4),
                            admitter_shares={f"adm-{i}": share for i in range(admitters)},
                            debt=0.25, effective_weight=0.75, fair_share=0.5)


async def test_status_from_the_state_topics_survives_a_conflict(operators: Make, crs: Crs, kafka_io: Any) -> None:
    await crs.create(pool_cr())
    await crs.create(entitlement_cr("e1"))
    op = await operators("op-a")
    await leader_of(op)

    async def publish(*records: EntitlementState | PoolState) -> None:
        for record in records:
            topic = "tokenpools.entitlement-state" if isinstance(record, EntitlementState) else "tokenpools.pool-state"
            await kafka_io.send(topic, encode(record), record.id.encode())
        assert kafka_io.producer is not None
        await kafka_io.producer.flush()

    pool_state = PoolState(id="p", seq=1, ts=time.time(), ready_replicas=2, desired_replicas=3,
                           capacity=Amounts(throughput=1800, kv=180000, concurrency=28), guarantees=Amounts())
    await publish(_state("e1", 1, 400), pool_state)

    async def entitlement_status(throughput: float, generation: int | None = None) -> dict[str, Any]:
        obj = await crs.get("Entitlement", "e1")
        status = obj.get("status") or {}
        assert status.get("limits") == {"throughput": throughput, "kv": 1000, "concurrency": 4}
        assert status.get("admitters") == 2 and status.get("debt") == 0.25
        assert status.get("effectiveWeight") == 0.75 and status.get("fairShare") == 0.5
        assert status.get("observedGeneration") == (generation or obj["metadata"]["generation"])
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        assert conditions == {"Provisionable": "True", "Ready": "True"}
        return obj

    await eventually(lambda: entitlement_status(400), within=WAIT)

    async def pool_status() -> bool:
        status = (await crs.get("TokenPool", "p")).get("status") or {}
        assert status.get("readyReplicas") == 2 and status.get("desiredReplicas") == 3
        assert status.get("capacity") == {"throughput": 1800, "kv": 180000, "concurrency": 28}
        return True

    await eventually(pool_status, within=WAIT)

    # Between the operator's read and its patch, someone edits the spec: the patch (carrying the
    # resourceVersion read) gets 409, the operator reads again and writes the new generation.
    edited: list[int] = []

    def edit_once(key: tuple[str, str, str], obj: dict[str, Any]) -> None:
        if key[0] == "entitlements" and not edited:
            edited.append(crs.patch_now("Entitlement", "e1", {"spec": {"weight": 2}})["metadata"]["generation"])

    op.before_status_write = edit_once
    conflicts = op.stats.status_conflicts
    await publish(_state("e1", 2, 600))
    obj = await eventually(lambda: entitlement_status(600), within=WAIT)
    assert edited and obj["metadata"]["generation"] == edited[0] == obj["status"]["observedGeneration"]
    assert op.stats.status_conflicts > conflicts


def global_cr(name: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GlobalEntitlement", "metadata": {"name": name},
            "spec": {"model": "llama-3-8b", "regions": ["local", "far"], "tenant": "t-global", "tier": "elastic",
                     "burst": {"throughput": 800, "kv": 8000, "concurrency": 8}}}


async def test_a_global_entitlement_cr_reaches_the_topic_and_its_status_shows_this_regions_share(
        operators: Make, crs: Crs, kafka: Any, kafka_io: Any, topics: Topics) -> None:
    """The region's global loop is stood in for by writing its share onto the config topic by hand."""
    pool, glob = pool_cr(), global_cr("g1")
    await crs.create(pool)
    await crs.create(glob)
    op = await operators("op-a")
    await leader_of(op)

    async def topic_has(key: str, doc: Any) -> bool:
        view = live(await config_records(kafka.bootstrap_servers, topics.config))
        assert view.get(key) == doc
        return True

    await eventually(lambda: topic_has("GlobalEntitlement/g1", manifest_json(glob)), within=WAIT)

    share = regional_entitlement(GlobalEntitlement.model_validate(glob), "p", "local",
                                 Resources(throughput=300, kv=3000, concurrency=3), Resources())
    await kafka_io.send("tokenpools.config", config_value(share), config_key(share).encode())
    await kafka_io.send("tokenpools.entitlement-state", encode(_state("g1", 1, 300)), b"g1")
    assert kafka_io.producer is not None
    await kafka_io.producer.flush()

    async def status() -> dict[str, Any]:
        got = (await crs.get("GlobalEntitlement", "g1")).get("status") or {}
        assert got.get("shares") == {"local": {"throughput": 300, "kv": 3000, "concurrency": 3}}
        assert {c["type"]: c["status"] for c in got.get("conditions", [])} == {"Provisionable": "True",
                                                                                 "Ready": "True"}
        return got

    await eventually(status, within=WAIT)

    # Deleting the CR tombstones its document; the share is the global loop's to remove, not the operator's.
    await crs.delete("GlobalEntitlement", "g1")
    await eventually(lambda: topic_has("GlobalEntitlement/g1", None), within=WAIT)
    assert live(await config_records(kafka.bootstrap_servers, topics.config))[config_key(share)] is not None


async def test_two_replicas_one_leader_and_a_takeover(operators: Make, crs: Crs, kafka: Any, topics: Topics,
                                                      kube: kubernetes.client.ApiClient, kube_namespace: str,
                                                      kafka_io: Any) -> None:
    a = await operators("op-a")
    b = await operators("op-b")
    leader = await leader_of(a, b)
    other = b if leader is a else a
    coord = CoordinationV1Api(kube)

    async def holder() -> str | None:
        lease = await asyncio.to_thread(coord.read_namespaced_lease, "tokenpools-operator", kube_namespace)
        return lease.spec.holder_identity

    assert await holder() == leader.identity

    pool, ent = pool_cr(), entitlement_cr("e1")
    await crs.create(pool)
    await crs.create(ent)
    await kafka_io.send("tokenpools.entitlement-state", encode(_state("e1", 1, 400)), b"e1")
    assert kafka_io.producer is not None
    await kafka_io.producer.flush()

    async def on_topic(expected: dict[str, Any]) -> list[tuple[str, Any, str]]:
        records = await config_records(kafka.bootstrap_servers, topics.config)
        assert live(records) == expected
        return records

    records = await eventually(lambda: on_topic({"TokenPool/p": manifest_json(pool),
                                                 "Entitlement/e1": manifest_json(ent)}), within=WAIT)

    async def status_written() -> bool:
        return bool(((await crs.get("Entitlement", "e1")).get("status") or {}).get("limits"))

    await eventually(status_written, within=WAIT)
    assert {w for *_, w in records} == {leader.identity}
    assert other.stats.config_writes == 0 and other.stats.status_writes == 0
    assert leader.stats.status_writes >= 1

    # Kill the leader: its tasks stop, the Lease stays as it was until it expires.
    await leader.stop(release=False)
    killed = time.monotonic()
    writes_at_kill = (leader.stats.config_writes, leader.stats.status_writes)
    await leader_of(other)
    took = time.monotonic() - killed
    print(f"\ntakeover after the leader was killed: {took:.2f} s (lease duration {LEASE['lease_duration']:g} s)")
    assert await holder() == other.identity

    await crs.patch("Entitlement", "e1", {"spec": {"weight": 5}})
    ent["spec"]["weight"] = 5
    records = await eventually(lambda: on_topic({"TokenPool/p": manifest_json(pool),
                                                 "Entitlement/e1": manifest_json(ent)}), within=WAIT)
    assert records[-1][2] == other.identity
    assert {w for *_, w in records} == {leader.identity, other.identity}
    assert (leader.stats.config_writes, leader.stats.status_writes) == writes_at_kill

    async def observed_new_generation() -> bool:
        obj = await crs.get("Entitlement", "e1")
        return bool((obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"])

    await eventually(observed_new_generation, within=WAIT)
    assert other.stats.status_writes >= 1


def test_a_spec_the_model_refuses_is_said_on_its_condition() -> None:
    """What the CRD's schema lets through but the model refuses never reaches the topic (unit level:
    the CRD's CEL rules cover every check the model makes that fits in one object)."""
    from scaler.kube import status

    cr = entitlement_cr("e1")
    cr["spec"]["guarantee"] = {"throughput": 5000}  # above burst
    with pytest.raises(Refused) as refused:
        to_manifest(cr)
    assert "guarantee.throughput (5000) exceeds burst.throughput (1000)" in str(refused.value)
    out = status.entitlement_status(generation=3, refusal=str(refused.value), state=None, seen=None, ready_within=30,
                                    previous=None, now=time.time())
    provisionable = next(c for c in out["conditions"] if c["type"] == "Provisionable")
    assert provisionable["status"] == "False" and provisionable["reason"] == "Invalid"
    assert "exceeds burst" in provisionable["message"] and out["observedGeneration"] == 3


async def test_an_api_server_refusal_is_not_swallowed(crs: Crs, crds: None) -> None:
    """The CRD itself refuses what CEL can see (so the operator's refusal path is the second line)."""
    cr = entitlement_cr("bad")
    cr["spec"]["guarantee"] = {"throughput": 5000}
    with pytest.raises(ApiException) as refused:
        await crs.create(cr)
    assert refused.value.status == 422
