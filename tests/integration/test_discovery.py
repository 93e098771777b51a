"""Replica discovery through a real broker: the scaler's reports on the replicas topic steer an admitter.

Real parts: Kafka, the ``ScalerLoop`` publishing through aiokafka, the ``LocalActuator`` with emulator
replicas on loopback, an admitter under uvicorn with a ``ReplicaDiscovery``. The pipeline is not run:
the scaler is handed pool states directly (``ScalerLoop.observe``) with an injected clock, so the
test says which demand it saw and when, instead of waiting for windows to fill.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from admitter.http.app import create_app
from admitter.kafka.discovery import ReplicaDiscovery
from admitter.settings import AdmitterSettings
from scaler.local import LocalActuator
from scaler.loop import ScalerLoop, kafka_publisher
from schemas.records import Amounts, PoolState
from schemas.specs import TokenPool
from schemas.topics import COMPACTED
from tests.admitter.conftest import auth, chat, ent, platform, serve
from tests.factories import emulators
from tests.factories import pool as make_pool
from tests.integration.harness import eventually

pytestmark = pytest.mark.integration
WINDOW = 30.0


def scaled_pool() -> TokenPool:
    return make_pool("p", replicas=1, max_replicas=4, contextLength=4096, scaling={
        "headroom": 0.0, "stabilisationWindowSeconds": WINDOW, "forecastHalfLifeSeconds": 0.01})


def demand(seq: int, throughput: float) -> PoolState:
    return PoolState(id="p", seq=seq, ts=0.0, ready_replicas=1, capacity=Amounts(), guarantees=Amounts(),
                     demand={"elastic": Amounts(throughput=throughput)})


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def served_by(actuator: LocalActuator) -> dict[str, int]:
    """Requests each live replica has received (the emulator's own count)."""
    return {rep.url: rep.stats()["requests"] for rep in actuator.servers["p"].replicas}


async def test_admitter_routes_to_replicas_the_scaler_adds_and_stops_using_removed_ones(
        kafka: Any, make_topic: Any) -> None:
    topic = await make_topic(config=COMPACTED, hint="replicas")
    spec = scaled_pool()
    actuator = LocalActuator({"p": 1}, server_factory=emulators(200.0))
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await producer.start()
    clock = Clock()
    scaler = ScalerLoop({"p": spec}, actuator, clock=clock, publish=kafka_publisher(producer, topic))
    adm_served = None
    try:
        await actuator.start()
        first = actuator.urls("p")
        await scaler.report_all()
        await producer.flush()

        settings = AdmitterSettings(backends={"p": first}, admitter_id="adm-discovery")
        discovery = ReplicaDiscovery(kafka.bootstrap_servers, topic=topic, client_id="tokenpools-discovery-adm")
        app = create_app(settings, platform([spec], [ent("acme")]), discovery=discovery)
        adm_served = await serve(app)
        assert discovery.caught_up.is_set() and discovery.reports["p"].endpoints == first
        members = app.state.admitter.upstream.replicas["p"]

        # Demand for 3 replicas: the scaler starts two more, the admitter learns of them from Kafka.
        step = await scaler.observe(demand(1, 2.5 * spec.spec.sellable_per_replica()[0]))
        assert step is not None and step.decision.replicas == 3
        grown = actuator.urls("p")
        assert len(grown) == 3 and grown[0] == first[0]
        await producer.flush()
        await eventually(lambda: _equal(members.urls, grown))

        async with httpx.AsyncClient(base_url=adm_served.url, timeout=10) as client:
            before = served_by(actuator)
            for _ in range(9):  # sequential: least outstanding with rotating ties spreads them over all 3
                r = await client.post("/v1/chat/completions", json=chat(max_tokens=4), headers=auth("acme"))
                assert r.status_code == 200, r.text
            after = served_by(actuator)
            assert all(after[u] > before[u] for u in grown), (before, after)  # the new replicas got traffic
            assert sum(after.values()) - sum(before.values()) == 9

            # Demand gone and the window past: back to one replica; the removed ones get nothing new.
            objects = {r.url: r for r in members.replicas}
            tried = {u: r.requests for u, r in objects.items()}
            clock.now += WINDOW + 1
            step = await scaler.observe(demand(2, 0.0))
            assert step is not None and step.decision.replicas == 1
            assert actuator.urls("p") == first
            await producer.flush()
            await eventually(lambda: _equal(members.urls, first))
            removed = {r.url: r for r in members.draining}
            assert not removed  # nothing was in flight
            before = served_by(actuator)
            for _ in range(5):
                r = await client.post("/v1/chat/completions", json=chat(max_tokens=4), headers=auth("acme"))
                assert r.status_code == 200, r.text
            assert served_by(actuator)[first[0]] - before[first[0]] == 5
            assert members.urls == first and members.replicas[0] is objects[first[0]]
            assert {u: r.requests for u, r in objects.items() if u not in first} == {
                u: n for u, n in tried.items() if u not in first}  # never even tried
            assert all(r.failures == 0 for r in objects.values())
        assert discovery.bad.total() == 0 and discovery.changes == 2
    finally:
        if adm_served is not None:
            await adm_served.stop()
        await producer.stop()
        await actuator.close()


async def _equal(a: list[str], b: list[str]) -> bool:
    return a == b
