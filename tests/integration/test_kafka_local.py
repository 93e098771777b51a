"""The local Kafka broker: real Apache Kafka started by tokenpools.infra.kafka_local."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from tokenpools.infra.kafka_local import KafkaStartError, LocalKafka, broker, jars, process
from tokenpools.infra.kafka_local import config as broker_config

if TYPE_CHECKING:
    from tests.integration.conftest import KafkaUnderTest

REPO = Path(__file__).resolve().parents[2]


# --- unit: no broker ---------------------------------------------------------------------------


def test_deploy_pom_is_the_packaged_pom() -> None:
    assert (REPO / "deploy/kafka/pom.xml").read_text() == jars.POM_XML


def test_jar_cache_key_is_unchanged() -> None:
    # CI caches ~/.cache/tokenpools/kafka outside the repo: a new key re-resolves every jar.
    # Change this only together with a deliberate change of pom.xml or the versions.
    assert jars._cache_key("4.1.1", "2.25.3") == "kafka 4.1.1 log4j 2.25.3 pom 75b489a88847076e\n"


def test_deploy_log4j2_config_is_the_packaged_one() -> None:
    assert (REPO / "deploy/kafka/log4j2.properties").read_text() == broker_config.LOG4J2_PROPERTIES


def test_single_node_config_binds_loopback_with_replication_one(tmp_path: Path) -> None:
    config = broker_config.default_server_config(19092, 19093, tmp_path)
    assert config["process.roles"] == "broker,controller"
    assert config["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "min.insync.replicas",
    ):
        assert config[key] == "1"
    assert config["group.initial.rebalance.delay.ms"] == "0"
    assert config["auto.create.topics.enable"] == "false"


def test_cluster_ids_never_look_like_an_option() -> None:
    ids = {broker.new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def _fake_tool(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake_mvn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An `mvn` that 'resolves' one jar slowly and counts its calls, to test the cache lock."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "mvn-calls"
    _fake_tool(
        bin_dir,
        "mvn",
        f'echo call >> {calls}\nsleep 1\nfor a in "$@"; do case "$a" in -DoutputDirectory=*) '
        'out="${a#-DoutputDirectory=}";; esac; done\nmkdir -p "$out" && touch "$out/kafka_2.13-9.9.9.jar"\n',
    )
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TOKENPOOLS_CACHE", str(tmp_path / "cache"))
    return calls


def test_concurrent_resolves_run_maven_once(fake_mvn: Path) -> None:
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(jars.ensure_jars("9.9.9"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fake_mvn.read_text().count("call") == 1
    assert len(set(results)) == 1 and (results[0] / "kafka_2.13-9.9.9.jar").is_file()
    jars.ensure_jars("9.9.9")
    assert fake_mvn.read_text().count("call") == 1


def test_maven_failure_shows_its_last_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_tool(tmp_path / "bin", "mvn", 'echo "[ERROR] Could not transfer artifact: Network is unreachable"\nexit 1\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TOKENPOOLS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(KafkaStartError, match=r"Maven could not resolve .*Network is unreachable") as info:
        jars.ensure_jars("9.9.8")
    assert "\n" not in str(info.value)


def test_missing_maven_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("TOKENPOOLS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(KafkaStartError, match="Maven not found"):
        jars.ensure_jars("9.9.7")


def test_missing_java_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(KafkaStartError, match="Java not found") as info:
        LocalKafka(tmp_path / "data").start()
    assert "\n" not in str(info.value)


# --- integration: a real broker ----------------------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.integration
def test_port_in_use_is_reported(tmp_path: Path, busy_port: int) -> None:
    with pytest.raises(KafkaStartError, match=rf"port 127\.0\.0\.1:{busy_port} is already in use"):
        LocalKafka(tmp_path, port=busy_port).start()
    with pytest.raises(KafkaStartError, match=r"controller port .* already in use"):
        LocalKafka(tmp_path / "b", controller_port=busy_port).start()


@pytest.mark.integration
def test_broker_exiting_early_shows_its_log(tmp_path: Path) -> None:
    # The storage tool ignores the authorizer; the broker fails to load it and exits.
    broker = LocalKafka(tmp_path, overrides={"authorizer.class.name": "no.such.Authorizer"})
    with pytest.raises(KafkaStartError, match=r"exited early .*no\.such\.Authorizer") as info:
        broker.start(timeout=60)
    assert "\n" not in str(info.value)
    assert not broker.is_running()


@pytest.mark.integration
async def test_broker_answers_metadata(kafka: KafkaUnderTest) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    assert cluster["brokers"] and cluster["controller_id"] >= 0


async def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()


async def _consume_one(bootstrap: str, topic: str, within: float = 120.0) -> bytes:
    """The topic's first record: fetched until one comes (a fresh consumer's first fetches may be empty
    while it finds the partition's leader and offset), failing after ``within`` seconds."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[Any] = []
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while not records:
                    batches = await consumer.getmany(timeout_ms=1000, max_records=1)
                    records = [record for batch in batches.values() for record in batch]
    finally:
        await consumer.stop()
    assert records, f"no record on {topic} within {within} s"
    return records[0].value


@pytest.mark.integration
async def test_produce_and_consume(kafka: KafkaUnderTest, kafka_topic: str) -> None:
    await _produce(kafka.bootstrap_servers, kafka_topic, b"hello")
    assert await _consume_one(kafka.bootstrap_servers, kafka_topic) == b"hello"


@pytest.mark.integration
async def test_restart_keeps_records_and_port(kafka: KafkaUnderTest, kafka_topic: str) -> None:
    await _produce(kafka.bootstrap_servers, kafka_topic, b"survives")
    before = kafka.bootstrap_servers
    await kafka.astop()
    assert not kafka.is_running()
    await kafka.astart()
    assert kafka.bootstrap_servers == before
    assert await _consume_one(kafka.bootstrap_servers, kafka_topic) == b"survives"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokenpools.infra.kafka_local", *args],
        capture_output=True, text=True, cwd=REPO, timeout=180,
    )  # fmt: skip


@pytest.mark.integration
def test_cli_detach_status_stop(tmp_path: Path) -> None:
    data = str(tmp_path)
    started = _cli("start", "--data-dir", data, "--detach")
    assert started.returncode == 0, started.stderr
    bootstrap = started.stdout.strip()
    try:
        status = _cli("status", "--data-dir", data)
        assert status.returncode == 0 and f"bootstrap={bootstrap} ready" in status.stdout
    finally:
        stopped = _cli("stop", "--data-dir", data)
    assert stopped.returncode == 0, stopped.stderr
    assert _cli("status", "--data-dir", data).returncode == 3
    assert not (tmp_path / broker.PID_FILE).exists()


@pytest.mark.integration
def test_cli_foreground_stops_on_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenpools.infra.kafka_local", "start", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        bootstrap = proc.stdout.readline().strip() if proc.stdout else ""
        assert bootstrap.startswith("127.0.0.1:")
        pid = int((tmp_path / broker.PID_FILE).read_text())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert not process.pid_alive(pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
