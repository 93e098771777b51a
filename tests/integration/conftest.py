"""Fixtures for tests that need a real Kafka.

Which Kafka, in order:
1. `KAFKA_BOOTSTRAP_SERVERS` set: that cluster. The suite does not own it, so `stop()`/`start()`
   skip the calling test (outage tests need a broker they can take down).
2. `TOKENPOOLS_KAFKA_BACKEND=docker`, or no Java here but a reachable Docker engine: testcontainers'
   KafkaContainer (outage tests skip too: a restarted container gets new host ports).
3. Otherwise `LocalKafka` from tokenpools.infra.kafka_local in a temporary directory; it can be
   stopped and started again on the same port with its data intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.integration.harness import Kafka, Worker
from tokenpools.infra.kafka_local import KafkaStartError, LocalKafka, find_java


class KafkaUnderTest(Protocol):
    bootstrap_servers: str

    def start(self) -> object: ...
    def stop(self) -> None: ...
    async def astart(self) -> object: ...
    async def astop(self) -> None: ...
    def is_running(self) -> bool: ...


class UnownedKafka:
    """A cluster the suite cannot take down: outage tests skip instead of failing."""

    def __init__(self, bootstrap_servers: str, why: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self._why = why

    def start(self) -> object:
        pytest.skip(f"needs a broker the suite can stop and start ({self._why})")

    def stop(self) -> None:
        pytest.skip(f"needs a broker the suite can stop and start ({self._why})")

    async def astart(self) -> object:
        return self.start()

    async def astop(self) -> None:
        self.stop()

    def is_running(self) -> bool:
        return True


def _docker_reachable() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


def _java_available() -> bool:
    try:
        find_java()
    except KafkaStartError:
        return False
    return True


def _backend() -> str:
    chosen = os.environ.get("TOKENPOOLS_KAFKA_BACKEND", "auto")
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return "external"
    if chosen != "auto":
        return chosen
    return "docker" if not _java_available() and _docker_reachable() else "local"


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaUnderTest]:
    """One broker for the whole session (startup costs ~5 s)."""
    backend = _backend()
    if backend == "external":
        yield UnownedKafka(os.environ["KAFKA_BOOTSTRAP_SERVERS"], "KAFKA_BOOTSTRAP_SERVERS is set")
    elif backend == "docker":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield UnownedKafka(container.get_bootstrap_server(), "testcontainers Kafka")
    else:
        broker = LocalKafka(tmp_path_factory.mktemp("kafka"))
        try:
            broker.start()
        except KafkaStartError as exc:
            pytest.fail(f"local Kafka did not start: {exc}", pytrace=False)
        yield broker
        broker.stop()


@pytest.fixture(autouse=True)
def _kafka_up_after_outage_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that stopped the shared broker and failed must not take the next tests down too."""
    handle = request.getfixturevalue("kafka") if "kafka" in request.fixturenames else None
    yield
    if isinstance(handle, LocalKafka) and not handle.is_running():
        handle.start()


def unique_topic_name(hint: str) -> str:
    """Topic names allow [A-Za-z0-9._-] and 249 characters; a uuid keeps reruns independent."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", hint).strip("-.")[:180] or "topic"
    return f"{cleaned}-{uuid.uuid4().hex[:8]}"


async def create_topic(
    bootstrap_servers: str,
    name: str,
    partitions: int = 1,
    config: Mapping[str, str] | None = None,
    leader_wait_s: float = 120.0,
) -> str:
    """Returns only once every partition has a leader, so a producer's first send does not race."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        topic = NewTopic(name, partitions, 1, topic_configs=dict(config or {}))
        await admin.create_topics([topic])
        async with asyncio.timeout(leader_wait_s):
            while True:  # metadata propagates asynchronously: poll, there is nothing to wait on
                if _has_leaders(await admin.describe_topics([name]), partitions):
                    break
                await asyncio.sleep(0.1)
    finally:
        await admin.close()
    return name


def _has_leaders(described: list[dict], partitions: int) -> bool:
    for topic in described:
        if topic.get("error_code", 0) != 0:
            return False
        parts = topic.get("partitions") or []
        return len(parts) == partitions and all(p.get("leader", -1) >= 0 for p in parts)
    return False


async def delete_topics(bootstrap_servers: str, names: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=5000)
    try:
        await admin.start()
        await admin.delete_topics(names)
    finally:
        await admin.close()


MakeTopic = Callable[..., Awaitable[str]]


@pytest.fixture
async def make_topic(kafka: KafkaUnderTest, request: pytest.FixtureRequest) -> AsyncIterator[MakeTopic]:
    """Factory: `await make_topic(partitions=3, config={"cleanup.policy": "compact"})`."""
    created: list[str] = []

    async def make(partitions: int = 1, config: Mapping[str, str] | None = None, hint: str | None = None) -> str:
        name = unique_topic_name(hint or request.node.name)
        created.append(await create_topic(kafka.bootstrap_servers, name, partitions, config))
        return name

    yield make
    if created and kafka.is_running():
        with contextlib.suppress(Exception):
            await delete_topics(kafka.bootstrap_servers, created)


@pytest.fixture
async def kafka_topic(make_topic: MakeTopic) -> str:
    """A fresh single-partition topic for this test."""
    return await make_topic()


# -- the pipeline harness (tests/integration/harness.py) -------------------------------------


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
async def kafka_io(kafka: Any, prefix: str) -> AsyncIterator[Kafka]:
    io = Kafka(kafka.bootstrap_servers, prefix)
    yield io
    await io.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()
