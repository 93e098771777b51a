"""The Kafka block's security options reach every Kafka client of the product (no broker).

There is no SASL or TLS broker here (the integration tests start a PLAINTEXT one), so the aiokafka
classes are replaced, where each module looks them up, by ``Refused``: it records the keyword
arguments it was built with and raises, so each call site is exercised up to the constructor and no
connection is attempted. Faust's clients are not built either: ``faust_credentials`` is checked
against what faust's own aiokafka driver turns credentials into (``credentials_to_aiokafka_auth``).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

import admitter.kafka.config_sync
import admitter.kafka.sink
import streams.config_table
import streams.gaps
import streams.topics
import streams.worker
import tokenpools.kafka.reader
from admitter.kafka.parts import kafka_parts
from admitter.settings import AdmitterSettings
from scaler.loop import ScalerLoop
from streams.app import faust_credentials, faust_settings
from streams.settings import PipelineSettings
from tests.admitter.conftest import ent, platform, pool
from tokenpools.cli.up import _wait_for_leaders
from tokenpools.kafka.connection import bootstrap_of, connection
from tokenpools.kafka.settings import KafkaSettings

SASL_ENV = {
    "TOKENPOOLS_KAFKA_BOOTSTRAP": "kafka-1.example:9093,kafka-2.example:9093",
    "TOKENPOOLS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "TOKENPOOLS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "TOKENPOOLS_KAFKA_SASL_USERNAME": "tenant-a",
    "TOKENPOOLS_KAFKA_SASL_PASSWORD": "s3cret",
}


def sasl_ssl() -> KafkaSettings:
    return KafkaSettings(bootstrap="kafka-1.example:9093", security_protocol="SASL_SSL",
                         sasl_mechanism="SCRAM-SHA-512", sasl_username="tenant-a", sasl_password="s3cret")


def assert_sasl_ssl(kwargs: dict[str, Any], bootstrap: str = "kafka-1.example:9093") -> None:
    assert kwargs["bootstrap_servers"] == bootstrap
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("tenant-a", "s3cret")
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)


class Refused(Exception):
    pass


class Recorder:
    """Stands in for an aiokafka client class: records the constructor's kwargs, then refuses."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        raise Refused


# -- the function ------------------------------------------------------------------------------------


def test_a_bootstrap_string_and_plaintext_settings_give_exactly_the_bootstrap() -> None:
    assert connection("h:1,h:2") == {"bootstrap_servers": "h:1,h:2"}
    assert connection(KafkaSettings(bootstrap="h:1")) == {"bootstrap_servers": "h:1"}
    assert bootstrap_of("h:1") == bootstrap_of(KafkaSettings(bootstrap="h:1")) == "h:1"


def test_sasl_ssl_settings_give_the_security_options() -> None:
    assert_sasl_ssl(connection(sasl_ssl()))
    assert "s3cret" not in bootstrap_of(sasl_ssl())


def test_sasl_plaintext_has_no_ssl_context_and_ssl_no_sasl() -> None:
    plain = connection(KafkaSettings(bootstrap="h:1", security_protocol="SASL_PLAINTEXT",
                                     sasl_username="u", sasl_password="p"))
    assert plain["security_protocol"] == "SASL_PLAINTEXT" and "ssl_context" not in plain
    tls = connection(KafkaSettings(bootstrap="h:1", security_protocol="SSL"))
    assert tls["security_protocol"] == "SSL" and "sasl_mechanism" not in tls


# -- every call site -----------------------------------------------------------------------------------


def call_sites(kafka: KafkaSettings, tmp_path: Path) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Each Kafka client of the product, built from ``kafka`` (its constructor is the Recorder)."""
    return {
        "admitter sink producer": lambda: admitter.kafka.sink.KafkaSink(kafka, tmp_path / "spool")._get_producer(),
        "admitter config producer": lambda: admitter.kafka.config_sync.ConfigSync(kafka)._get_producer(),
        "reader consumer": lambda: tokenpools.kafka.reader.CompactedReader(kafka, {"t": print}).run(),
        "reader metadata admin": lambda: tokenpools.kafka.reader.describe(kafka, ["t"], "c"),
        "scaler producer": lambda: ScalerLoop({}, None).run_kafka(kafka),  # type: ignore[arg-type]
        "pipeline topics admin": lambda: streams.topics.create_topics(kafka, []),
        "pipeline setup admin": lambda: streams.worker.partition_counts(kafka, ["t"]),
        "pipeline config seed": lambda: streams.config_table.seed_config(kafka, "t", [pool()]),
        "pipeline gaps consumer": lambda: streams.gaps.KafkaGapSource(kafka, "t", "g")._get(),
    }


@pytest.fixture
def recorders(monkeypatch: pytest.MonkeyPatch) -> list[Recorder]:
    """Every aiokafka class the product builds, replaced where it is looked up."""
    out: list[Recorder] = []
    for target in ["admitter.kafka.sink.AIOKafkaProducer", "admitter.kafka.config_sync.AIOKafkaProducer",
                   "tokenpools.kafka.reader.AIOKafkaConsumer", "tokenpools.kafka.reader.AIOKafkaAdminClient",
                   "aiokafka.AIOKafkaProducer",  # the scaler imports it when it runs
                   "aiokafka.admin.AIOKafkaAdminClient",  # tokenpools up too
                   "streams.topics.AIOKafkaAdminClient", "streams.worker.AIOKafkaAdminClient",
                   "streams.config_table.AIOKafkaProducer", "streams.gaps.AIOKafkaConsumer"]:
        recorder = Recorder()
        monkeypatch.setattr(target, recorder)
        out.append(recorder)

    async def nothing_present(*_args: Any, **_kwargs: Any) -> dict[bytes, bytes]:
        return {}

    # The seed reads the topic first (the reader's consumer, a call site of its own): its producer is this one.
    monkeypatch.setattr("streams.config_table.read_compacted", nothing_present)
    return out


@pytest.mark.parametrize("site", list(call_sites(KafkaSettings(), Path())))
async def test_every_client_gets_the_security_options(site: str, recorders: list[Recorder], tmp_path: Path) -> None:
    with pytest.raises(Refused):
        await call_sites(sasl_ssl(), tmp_path)[site]()
    calls = [kwargs for r in recorders for kwargs in r.calls]
    assert len(calls) == 1
    assert_sasl_ssl(calls[0])


@pytest.mark.parametrize("site", list(call_sites(KafkaSettings(), Path())))
async def test_plaintext_clients_get_the_bootstrap_alone(site: str, recorders: list[Recorder], tmp_path: Path) -> None:
    with pytest.raises(Refused):
        await call_sites(KafkaSettings(bootstrap="h:1"), tmp_path)[site]()
    calls = [kwargs for r in recorders for kwargs in r.calls]
    assert len(calls) == 1 and {k: v for k, v in calls[0].items() if k.startswith(("bootstrap", "s"))} == \
        {"bootstrap_servers": "h:1"}


async def test_tokenpools_up_passes_its_bootstrap_as_plaintext(recorders: list[Recorder]) -> None:
    with pytest.raises(Refused):
        await _wait_for_leaders("h:1", ["t"])
    assert [kwargs["bootstrap_servers"] for r in recorders for kwargs in r.calls] == ["h:1"]
    assert not any("security_protocol" in kwargs for r in recorders for kwargs in r.calls)


def test_the_admitter_parts_take_the_kafka_block_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    for name, value in SASL_ENV.items():
        monkeypatch.setenv(name, value)
    parts = kafka_parts(AdmitterSettings(admitter_id="a", spool_dir=tmp_path), platform([pool()], [ent("acme")]))
    bootstrap = SASL_ENV["TOKENPOOLS_KAFKA_BOOTSTRAP"]
    assert_sasl_ssl(connection(parts.sink.kafka), bootstrap)  # type: ignore[attr-defined]
    assert_sasl_ssl(connection(parts.config_sync.kafka), bootstrap)
    assert_sasl_ssl(connection(parts.config_sync.reader.kafka), bootstrap)
    assert_sasl_ssl(connection(parts.limits.reader.kafka), bootstrap)  # type: ignore[attr-defined]
    assert parts.sink.bootstrap_servers == bootstrap  # type: ignore[attr-defined]  # log lines: no secrets
    parts.sink.spool.close()  # type: ignore[attr-defined]


# -- Faust ----------------------------------------------------------------------------------------------


def test_faust_gets_no_credentials_with_plaintext() -> None:
    assert faust_credentials(KafkaSettings()) is None
    assert "broker_credentials" not in faust_settings(PipelineSettings())


def test_faust_credentials_become_the_same_aiokafka_options() -> None:
    credentials = faust_credentials(sasl_ssl())
    assert isinstance(credentials, SASLCredentials)
    assert_sasl_ssl({"bootstrap_servers": "kafka-1.example:9093", **credentials_to_aiokafka_auth(credentials)})
    assert faust_settings(PipelineSettings(kafka=sasl_ssl()))["broker_credentials"] is not None
    tls = faust_credentials(KafkaSettings(security_protocol="SSL"))
    assert isinstance(tls, SSLCredentials)
    assert credentials_to_aiokafka_auth(tls)["security_protocol"] == "SSL"
    sasl = credentials_to_aiokafka_auth(faust_credentials(KafkaSettings(
        security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="p")))
    assert (sasl["security_protocol"], sasl["sasl_mechanism"], sasl["ssl_context"]) == ("SASL_PLAINTEXT", "PLAIN", None)
