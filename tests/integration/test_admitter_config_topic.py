"""Admitters on a real broker share pools and entitlements through ``tokenpools.config``.

Admitters run in this process under uvicorn on 127.0.0.1 (``tests.admitter.conftest.serve``) with a
scriptable fake replica, a ``ConfigSync`` on the real broker and, so that requests are admitted
without a pipeline worker, the in-process ``LocalAllocator`` for limits and an ``InMemorySink`` for
events (the Kafka parts for those are covered by their own tests, and by the CLI test below, which
runs the real ``tokenpools admitter --kafka`` process with all three).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from admitter.admission.limits import LocalAllocator
from admitter.events import InMemorySink
from admitter.http.app import create_app
from admitter.settings import AdmitterSettings
from schemas.loader import PlatformConfig
from schemas.specs import Manifest
from schemas.topics import CONFIG, REQUESTS, Topics, config_key, config_value
from schemas.wire import BadRecords, decode_request_events
from streams.topics import create_topics
from tests.admitter.conftest import ADMIN, ADMIN_KEY, FakeReplica, Served, auth, chat, ent, platform, pool, sha
from tests.admitter.conftest import serve as serve_app
from tests.integration.harness import REPO, Kafka, eventually, free_port
from tokenpools.cli import app as cli

pytestmark = pytest.mark.integration


def manifest(name: str, tenant: str, *, pool_name: str = "p", keys: tuple[str, ...] = (),
             concurrency: float = 5) -> dict[str, Any]:
    return {"apiVersion": "tokenpools.dev/v1alpha1", "kind": "Entitlement", "metadata": {"name": name},
            "spec": {"pool": pool_name, "tenant": tenant, "tier": "elastic",
                     "burst": {"throughput": 1000, "kv": 10000, "concurrency": concurrency},
                     "apiKeys": [{"sha256": sha(k)} for k in keys]}}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Edge:
    """One in-process admitter and an HTTP client for it."""

    def __init__(self, app: Any, served: Served) -> None:
        self.app = app
        self.served = served
        self.http = httpx.AsyncClient(base_url=served.url, timeout=15)

    @property
    def state(self) -> Any:
        return self.app.state.admitter

    async def chat(self, headers: dict[str, str], model: str = "p") -> int:
        return (await self.http.post("/v1/chat/completions", json=chat(model=model), headers=headers)).status_code

    async def config(self) -> dict[str, Any]:
        return (await self.http.get("/admin/config", headers=ADMIN)).json()

    async def close(self) -> None:
        await self.http.aclose()
        await self.served.stop()


StartEdge = Callable[..., Awaitable[Edge]]


@pytest.fixture
async def replica() -> AsyncIterator[FakeReplica]:
    fake = FakeReplica("replica")
    served = await serve_app(fake.app())
    fake.url = served.url
    yield fake
    await served.stop()


@pytest.fixture
async def topics(kafka: Any, prefix: str) -> str:
    await create_topics(kafka.bootstrap_servers, Topics(prefix).specs(partitions=1))
    return prefix


@pytest.fixture
async def edges(kafka: Any, topics: str, replica: FakeReplica, tmp_path: Path) -> AsyncIterator[StartEdge]:
    running: list[Edge] = []

    async def start(admitter_id: str, config: PlatformConfig, **settings: Any) -> Edge:
        settings.setdefault("config_wait_seconds", 30.0)
        s = AdmitterSettings(
            admitter_id=admitter_id, admin_key_sha256=sha(ADMIN_KEY), backends={"p": [replica.url], "q": [replica.url]},
            kafka_bootstrap=kafka.bootstrap_servers, topic_prefix=topics, spool_dir=tmp_path / admitter_id,
            **settings)
        app = create_app(s, config, sink=InMemorySink(), limits=LocalAllocator())
        edge = Edge(app, await serve_app(app))
        running.append(edge)
        return edge

    yield start
    for edge in running:
        await edge.close()


async def publish(kafka: Any, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def doc(m: Manifest) -> tuple[bytes, bytes]:
    return config_key(m).encode(), config_value(m)


async def topic_docs(kafka: Any, prefix: str) -> dict[str, bytes | None]:
    """The latest value per key on the config topic (None: a tombstone)."""
    io = Kafka(kafka.bootstrap_servers, prefix)
    try:
        return {k.decode(): v for k, v in await io.read_all(CONFIG) if k is not None}
    finally:
        await io.close()


def base() -> PlatformConfig:
    return platform([pool(max_replicas=2)], [ent("acme"), ent("globex")])


async def test_an_entitlement_written_at_one_admitter_works_at_the_other(edges: StartEdge, replica: FakeReplica,
                                                                         kafka: Any, prefix: str) -> None:
    a1 = await edges("a1", base())
    a2 = await edges("a2", base())
    for edge in (a1, a2):
        status = await edge.config()
        assert status["ready"] and status["source"] == "kafka", status
    key = "tp-test-initech-secret"
    assert await a2.chat(bearer(key)) == 401

    resp = await a1.http.put("/admin/entitlements/initech", json=manifest("initech", "initech", keys=(key,)),
                             headers=ADMIN)
    assert resp.status_code == 201, resp.text
    assert await a1.chat(bearer(key)) == 200  # the writer reads its own write at once
    await eventually(lambda: _is(a2.chat(bearer(key)), 200), every=0.2)
    assert len(replica.received) == 2  # both requests reached the replica

    # An update at the other admitter (burst concurrency 5 -> 1) reaches the first.
    resp = await a2.http.put("/admin/entitlements/initech",
                             json=manifest("initech", "initech", keys=(key,), concurrency=1), headers=ADMIN)
    assert resp.status_code == 200, resp.text
    assert a2.state.gates["p"].live.entitlements["initech"].burst[2] == 1

    async def updated() -> bool:
        return a1.state.gates["p"].live.entitlements["initech"].burst[2] == 1
    await eventually(updated, every=0.2)

    # A delete at the first: its key stops working there at once, and at the second soon after.
    assert (await a1.http.delete("/admin/entitlements/initech", headers=ADMIN)).status_code == 204
    assert await a1.chat(bearer(key)) == 401
    await eventually(lambda: _is(a2.chat(bearer(key)), 401), every=0.2)
    assert (await a2.http.get("/admin/entitlements/initech", headers=ADMIN)).status_code == 404
    assert (await a2.http.delete("/admin/entitlements/initech", headers=ADMIN)).status_code == 404
    assert await a2.chat(auth("acme")) == 200  # the others are untouched

    on_topic = await topic_docs(kafka, prefix)
    assert on_topic["Entitlement/initech"] is None  # a tombstone
    assert {"TokenPool/p", "Entitlement/acme", "Entitlement/globex"} <= set(on_topic)


async def test_a_late_admitter_gets_every_pool_and_entitlement_from_the_topic(edges: StartEdge, kafka: Any,
                                                                            prefix: str) -> None:
    a1 = await edges("a1", base())
    key = "tp-test-initech-secret"
    resp = await a1.http.put("/admin/entitlements/initech", json=manifest("initech", "initech", keys=(key,)),
                             headers=ADMIN)
    assert resp.status_code == 201, resp.text
    # A second pool that exists only on the topic, with an entitlement on it.
    q = pool("q", max_replicas=2)
    await publish(kafka, Topics(prefix).config, [doc(q), doc(ent("acme-q", pool_name="q"))])

    late = await edges("a3", platform([pool(max_replicas=2)], []))  # YAML: the pool, no entitlements
    assert sorted(late.state.config.entitlements) == ["acme", "acme-q", "globex", "initech"]
    assert sorted(late.state.gates) == ["p", "q"]
    assert (await late.config())["published_from_yaml"] == []  # its only document was already there
    assert await late.chat(bearer(key)) == 200
    assert await late.chat(auth("acme")) == 200
    assert await late.chat(auth("acme-q"), model="q") == 200  # a pool added from the topic routes

    # Pools change and go live too: q's context shrinks, then q and its entitlement are deleted.
    await publish(kafka, Topics(prefix).config, [doc(pool("q", max_replicas=2, contextLength=64))])

    async def shrunk() -> bool:
        return late.state.config.pools["q"].spec.context_length == 64
    await eventually(shrunk, every=0.2)
    too_long = await late.http.post("/v1/chat/completions", json=chat(model="q", max_tokens=100),
                                    headers=auth("acme-q"))
    assert too_long.status_code == 400 and "context length" in too_long.text
    await publish(kafka, Topics(prefix).config, [(b"Entitlement/acme-q", None), (b"TokenPool/q", None)])

    async def gone() -> bool:
        return "q" not in late.state.gates and "acme-q" not in late.state.config.entitlements
    await eventually(gone, every=0.2)
    assert await late.chat(auth("acme"), model="q") == 404
    assert (await late.config())["rejected"] == {}


async def test_bad_records_on_the_config_topic_are_counted_and_skipped(edges: StartEdge, kafka: Any,
                                                                     prefix: str) -> None:
    a1 = await edges("a1", base())
    good = ent("good")
    unknown_pool = ent("stray", pool_name="nowhere")
    bad_tier = manifest("bad", "bad")
    bad_tier["spec"]["tier"] = "platinum"
    await publish(kafka, Topics(prefix).config, [
        (b"Entitlement/x", b"not json"),
        (b"Entitlement/x", b"[1, 2]"),
        (b"Entitlement/other", config_value(ent("mismatch"))),
        (b"Entitlement/bad", orjson.dumps(bad_tier)),
        doc(unknown_pool),
        doc(good),
    ])

    async def applied() -> bool:
        return "good" in a1.state.config.entitlements
    await eventually(applied, every=0.2)
    status = await a1.config()
    # (A record without a key cannot be written: the broker refuses keyless records on a compacted topic.)
    assert status["bad_records"] == {"not_json": 1, "not_an_object": 1, "key_mismatch": 1, "invalid": 1,
                                     "rejected": 1}, status
    assert "unknown pool 'nowhere'" in status["rejected"]["Entitlement/stray"]
    assert not {"x", "other", "mismatch", "bad", "stray"} & set(a1.state.config.entitlements)
    assert await a1.chat(auth("good")) == 200
    assert await a1.chat(auth("acme")) == 200
    # The same counts on /metrics, for dashboards and alerts.
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families((await a1.http.get("/metrics", headers=ADMIN)).text)
               for s in family.samples}
    topic = Topics(prefix).config
    for reason, n in status["bad_records"].items():
        key = ("tokenpools_admitter_config_bad_records_total", (("reason", reason), ("topic", topic)))
        assert samples[key] == n, reason
    assert samples[("tokenpools_admitter_config_ready", ())] == 1.0
    assert samples[("tokenpools_admitter_config_rejected_documents", ())] == 1.0
    assert samples[("tokenpools_admitter_config_records_total", ())] >= 6


async def test_an_admin_write_without_kafka_is_503_and_changes_nothing(edges: StartEdge, kafka: Any,
                                                                       prefix: str) -> None:
    a1 = await edges("a1", base())
    before = dict(a1.state.config.entitlements)
    await kafka.astop()
    try:
        resp = await a1.http.put("/admin/entitlements/lost", json=manifest("lost", "lost", keys=("tp-lost",)),
                                 headers=ADMIN)
        assert resp.status_code == 503, resp.text
        assert resp.headers["retry-after"] == "5"
        assert resp.json()["error"]["code"] == "config_unavailable"
        assert "nothing was changed" in resp.json()["error"]["message"]
        assert (await a1.http.delete("/admin/entitlements/acme", headers=ADMIN)).status_code == 503
        assert a1.state.config.entitlements == before
        assert await a1.chat(bearer("tp-lost")) == 401
        assert await a1.chat(auth("acme")) == 200  # serving goes on with the last config
        # Validation still comes first: a bad body is 422, not 503.
        bad = manifest("bad", "bad")
        bad["spec"]["tier"] = "platinum"
        assert (await a1.http.put("/admin/entitlements/bad", json=bad, headers=ADMIN)).status_code == 422
    finally:
        await kafka.astart()

    async def written() -> bool:
        resp = await a1.http.put("/admin/entitlements/after", json=manifest("after", "after"), headers=ADMIN)
        return resp.status_code == 201
    await eventually(written, every=1.0)
    on_topic = await topic_docs(kafka, prefix)
    assert "Entitlement/after" in on_topic and "Entitlement/lost" not in on_topic
    assert "lost" not in a1.state.config.entitlements


async def test_an_admitter_starting_without_kafka_serves_its_yaml_then_catches_up(edges: StartEdge, kafka: Any,
                                                                                 prefix: str) -> None:
    await publish(kafka, Topics(prefix).config, [doc(pool(max_replicas=2)), doc(ent("from-topic"))])
    await kafka.astop()
    try:
        a1 = await edges("a1", base(), config_wait_seconds=1.0)
        status = await a1.config()
        assert not status["ready"] and status["source"].startswith("yaml")
        assert sorted(a1.state.config.entitlements) == ["acme", "globex"]
        assert await a1.chat(auth("acme")) == 200
        assert (await a1.http.put("/admin/entitlements/x", json=manifest("x", "x"), headers=ADMIN)).status_code == 503
    finally:
        await kafka.astart()

    async def caught_up() -> bool:
        return (await a1.config())["ready"]
    await eventually(caught_up)
    assert sorted(a1.state.config.entitlements) == ["acme", "from-topic", "globex"]
    assert await a1.chat(auth("from-topic")) == 200
    on_topic = await topic_docs(kafka, prefix)  # the YAML's absent documents were published
    assert {"Entitlement/acme", "Entitlement/globex", "Entitlement/from-topic", "TokenPool/p"} <= set(on_topic)


async def _is(status: Awaitable[int], want: int) -> bool:
    return await status == want


# -- the CLI ----------------------------------------------------------------------------------


async def test_the_cli_admitter_with_kafka_starts_serves_and_stops(kafka: Any, topics: str, replica: FakeReplica,
                                                                   tmp_path: Path) -> None:
    gold = ent("gold", "guaranteed", guarantee=(500, 5000, 5), burst=(500, 5000, 5))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump_all([m.model_dump(mode="json", by_alias=True)
                                          for m in (pool(max_replicas=2), gold)]))
    port = free_port()
    spool = tmp_path / "spool"
    log = tmp_path / "admitter.log"
    proc = _spawn(["admitter", "--kafka", kafka.bootstrap_servers, "--topic-prefix", topics,
                   "--spool-dir", str(spool), "--expected-admitters", "2", "--config", str(config),
                   "--backend", f"p={replica.url}", "--port", str(port), "--admin-key-sha256", sha(ADMIN_KEY),
                   "--admitter-id", "cli-1", "--log-level", "info"], log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            async def up() -> bool:
                assert proc.poll() is None, log.read_text()
                with contextlib.suppress(httpx.HTTPError):
                    return (await http.get("/admin/config", headers=ADMIN)).json()["ready"]
                return False
            await eventually(up, every=0.3)
            status = (await http.get("/admin/config", headers=ADMIN)).json()
            assert status["topic"] == topics + CONFIG
            assert sorted(status["published_from_yaml"]) == ["Entitlement/gold", "TokenPool/p"]
            resp = await http.post("/v1/chat/completions", json=chat(), headers=auth("gold"))
            assert resp.status_code == 200, resp.text  # guaranteed: its guarantee holds before any pipeline state

        io = Kafka(kafka.bootstrap_servers, topics)
        try:
            async def event_sent() -> bool:
                # A record is one event or a batch of one entitlement's events (KafkaSink packs them).
                events = [e for _, v in await io.read_all(REQUESTS)
                          for e in decode_request_events(v, REQUESTS, BadRecords())[0]]
                return any(e.entitlement == "gold" and e.admitter_id == "cli-1" for e in events)
            await eventually(event_sent)
        finally:
            await io.close()
        assert spool.is_dir() and any(spool.iterdir())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 30)
    text = log.read_text()
    # uvicorn shuts down cleanly, then re-raises the signal it caught, so -SIGTERM is a clean stop too.
    assert code in (0, -signal.SIGTERM) and "Application shutdown complete" in text, text[-3000:]
    assert f"kafka {kafka.bootstrap_servers}" in text and "spool " + str(spool) in text


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "tokenpools.cli", *args], stdout=out,
                                stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)


@pytest.mark.parametrize(("args", "needle"), [
    (["--kafka", "no-port-here"], "HOST:PORT"),
    (["--kafka", "127.0.0.1:99999"], "port 1-65535"),
    (["--kafka", " , "], "HOST:PORT"),
    (["--kafka", "127.0.0.1:9092", "--spool-dir", "{file}"], "is not a directory"),
    (["--kafka", "127.0.0.1:9092", "--spool-dir", "{file}/below"], "cannot create it"),
])
def test_bad_kafka_or_spool_dir_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        args: list[str], needle: str) -> None:
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("must not start"))
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(pool().model_dump(mode="json", by_alias=True)))
    args = [a.replace("{file}", str(a_file)) for a in args]
    result = CliRunner().invoke(cli, ["admitter", "--config", str(config), *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output


def test_without_kafka_the_config_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("must not start"))
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    result = CliRunner().invoke(cli, ["admitter"])
    assert result.exit_code == 2 and "--config is required without --kafka" in result.output
