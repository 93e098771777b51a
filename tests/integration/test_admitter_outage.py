"""Broker outage under a live admitter (issue 5): Kafka is stopped mid-run and restarted.

Everything is real: the suite's local Kafka (stopped and started on the same port), a pipeline worker
subprocess, emulated vLLM replicas, and an admitter app (``create_app`` with a ``KafkaSink`` and a
``StateFollower``) served by uvicorn on 127.0.0.1. A steady request loop runs through the admitter the
whole time. The admitter's events also go to an in-memory sink (``FanOutSink``) so the test knows
exactly what it emitted and can compare it with the pipeline's cumulative totals.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from admitter.events import FanOutSink, InMemorySink
from admitter.http.app import create_app
from admitter.kafka.sink import KafkaSink
from admitter.kafka.state_follower import StateFollower
from admitter.settings import AdmitterSettings
from schemas.loader import load_config
from schemas.records import Outcome, Phase, RequestEvent
from sim.server import EmulatorServer
from tests.admitter.conftest import serve
from tests.integration.harness import KAFKA_WAIT_S, POOLS_YAML, TICK_S, Kafka, Worker, eventually, settled, totals_are

pytestmark = pytest.mark.integration

ADM = "adm-outage"
OUTAGE_S = 10.0
ENTITLEMENTS = {"gold": "guaranteed", "flex": "elastic"}
ENT_YAML = """\
apiVersion: tokenpools.dev/v1alpha1
kind: Entitlement
metadata: {name: %(name)s}
spec:
  pool: p
  tenant: t-%(name)s
  tier: %(tier)s
  guarantee: %(guarantee)s
  burst: {throughput: 100000, kv: 1000000, concurrency: 1000}
  weight: 1
  apiKeys: [{sha256: %(sha)s}]
"""


def key_of(name: str) -> str:
    return f"tp-outage-{name}-0123456789abcdef"


def write_config(path: Path) -> Path:
    docs = [POOLS_YAML % {"pool": "p", "tick": TICK_S}]
    for name, tier in ENTITLEMENTS.items():
        guarantee = "{throughput: 100, kv: 1000, concurrency: 1}" if tier == "guaranteed" else "{}"
        docs.append(ENT_YAML % {"name": name, "tier": tier, "guarantee": guarantee,
                                "sha": hashlib.sha256(key_of(name).encode()).hexdigest()})
    path.write_text("---\n".join(docs))
    return path


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    text = (await client.get("/metrics")).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(("tokenpools_admitter_" + name, tuple(sorted(labels.items()))), 0.0)


@dataclass
class Answer:
    entitlement: str
    kafka_down: bool  # sent after the broker was stopped and answered before it was started again
    status: int | str  # HTTP status, or what went wrong ("timeout", an exception name)


class Load:
    """Sequential requests per entitlement, a few dozen per second in all (2 shared cores)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.kafka_down = False
        self.answers: list[Answer] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(name)) for name in ENTITLEMENTS]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _loop(self, name: str) -> None:
        body = {"model": "m-p", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}
        headers = {"Authorization": f"Bearer {key_of(name)}", "x-emulator-output-tokens": "4"}
        async with httpx.AsyncClient(base_url=self.url, timeout=15.0) as client:
            while not self._stop.is_set():
                down_at_send = self.kafka_down
                status: int | str
                try:
                    status = (await client.post("/v1/chat/completions", json=body, headers=headers)).status_code
                except httpx.TimeoutException:
                    status = "timeout"
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.answers.append(Answer(name, down_at_send and self.kafka_down, status))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self._stop.wait()


def expected_totals(events: list[RequestEvent]) -> dict[str, dict[str, int]]:
    out: dict[str, Counter[str]] = {name: Counter() for name in ENTITLEMENTS}
    for e in events:
        t = out[e.entitlement]
        t["events"] += 1
        if e.phase is Phase.DECISION:
            t["decisions"] += 1
            t["refused" if e.outcome is Outcome.REFUSED else "admitted"] += 1
        else:
            t["finished"] += 1
            t[e.outcome.value] += 1
            t["prompt_tokens"] += e.prompt_tokens
            t["output_tokens"] += e.output_tokens
    keys = ("events", "decisions", "admitted", "refused", "finished", "completed", "prompt_tokens", "output_tokens")
    return {name: {k: t[k] for k in keys} for name, t in out.items()}


async def test_admission_and_exact_counts_through_a_broker_outage(
    kafka: Any, kafka_io: Kafka, prefix: str, tmp_path: Path, workers: list[Worker]
) -> None:
    config = write_config(tmp_path / "config.yaml")
    worker = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "worker.log").start()
    workers.append(worker)
    await worker.wait_ready()

    memory = InMemorySink(maxlen=None)
    sink = KafkaSink(kafka.bootstrap_servers, tmp_path / "spool", topic_prefix=prefix, send_timeout=3.0,
                     max_backoff=1.0)
    follower = StateFollower(kafka.bootstrap_servers, ADM, topic_prefix=prefix, initial_wait=30.0,
                             retry_backoff=0.5, contact_timeout=2.0)
    async with EmulatorServer(1, model="m-p", speedup=50) as emulator:
        settings = AdmitterSettings(backends={"p": emulator.urls}, admitter_id=ADM, public_metrics=True)
        served = await serve(create_app(settings, load_config(config), sink=FanOutSink([memory, sink]),
                                        limits=follower))
        load = Load(served.url)
        try:
            async with httpx.AsyncClient(base_url=served.url, timeout=10.0) as client:
                load.start()

                async def pipeline_limits_applied() -> Samples | None:
                    # The states applied give this admitter a share (the split lists an admitter from the
                    # tick after its first event, and publishes a raise one tick late): from here on the
                    # limits kept through the outage are the pipeline's, not the first ticks' zeros.
                    states = [follower.entitlements.get(name) for name in ENTITLEMENTS]
                    if not all(s is not None and ADM in s.admitter_shares and s.admitter_shares[ADM].throughput > 0
                               for s in states):
                        return None
                    m = await scrape(client)
                    return m if value(m, "state_seq", pool="p") > 0 and value(m, "kafka_events_sent_total",
                                                                              topic=sink.topic) > 0 else None
                before = await eventually(pipeline_limits_applied)
                assert value(before, "state_connected") == 1 and value(before, "state_caught_up") == 1

                await kafka.astop()
                load.kafka_down = True
                try:
                    await asyncio.sleep(OUTAGE_S)
                    during = await scrape(client)
                finally:
                    load.kafka_down = False
                    await kafka.astart()
                assert worker.proc is not None and worker.proc.poll() is None, worker.tail()

                async def follower_back() -> Samples | None:
                    m = await scrape(client)
                    fresh = value(m, "state_seq", pool="p") > value(during, "state_seq", pool="p")
                    return m if fresh and value(m, "state_connected") == 1 else None
                after = await eventually(follower_back)
            await load.stop()

            # (a) Admission kept working: only normal answers, and admitted requests while Kafka was down.
            statuses = Counter(a.status for a in load.answers)
            assert set(statuses) <= {200, 429}, statuses
            during_outage = Counter(a.status for a in load.answers if a.kafka_down)
            assert during_outage[200] > 0, during_outage

            # Every answer's events have been emitted (finish events follow the last byte).
            async def all_finished() -> bool:
                return len(memory.finished()) == statuses[200]
            await settled(all_finished, every=0.1)
            async with asyncio.timeout(KAFKA_WAIT_S):
                await sink.drain()

            # (b) The pipeline counted every event exactly once.
            events = list(memory.events)
            assert len({e.id for e in events}) == len(events)
            expected = expected_totals(events)
            assert sum(t["decisions"] for t in expected.values()) == statuses[200] + statuses[429]
            assert sum(t["admitted"] for t in expected.values()) == statuses[200]
            await settled(totals_are(kafka_io, expected))
            duplicates = sum(t.get("duplicates", 0) for t in (await kafka_io.totals()).values())
            print(f"answers {dict(statuses)}; while Kafka was down {dict(during_outage)}; events {len(events)}; "
                  f"Kafka records {sink.records_sent}; send errors {sink.send_errors}; "
                  f"duplicates dropped by the pipeline {duplicates}")

            # (c) The metrics showed the outage, and its end.
            async with httpx.AsyncClient(base_url=served.url, timeout=10.0) as client:
                final = await scrape(client)
        finally:
            await served.stop()
    topic = {"topic": sink.topic}
    assert value(during, "kafka_spool_backlog_records", **topic) > 0
    assert value(during, "kafka_spool_backlog_bytes", **topic) > 0
    assert value(during, "kafka_spool_oldest_age_seconds", **topic) > 0
    assert value(during, "state_connected") == 0
    assert value(final, "kafka_send_errors_total", **topic) >= 1
    assert value(final, "kafka_spool_backlog_records", **topic) == 0
    assert value(final, "kafka_spool_backlog_bytes", **topic) == 0
    assert value(final, "kafka_spool_oldest_age_seconds", **topic) == 0
    assert value(final, "kafka_events_emitted_total", **topic) == len(events)
    assert value(final, "kafka_events_sent_total", **topic) == len(events)
    assert 0 < value(final, "kafka_records_sent_total", **topic) <= len(events)
    assert value(final, "kafka_producer_connected", **topic) == 1
    assert value(after, "state_reconnects_total") >= 1
    # Staleness grew through the outage and was reset by the first state after it.
    assert value(after, "state_staleness_seconds", pool="p") < value(during, "state_staleness_seconds", pool="p")
