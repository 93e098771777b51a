"""The Kafka block (tokenpools.kafka.settings): environment names, checks, and aiokafka's keyword arguments."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from tokenpools.kafka.settings import DEFAULT_BOOTSTRAP, KafkaSettings, parse_bootstrap


def clear_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop every variable a settings model reads, so the machine's environment cannot leak into a test."""
    for name in list(os.environ):
        if name.startswith("TOKENPOOLS_") or name == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_settings_env(monkeypatch)


def messages(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return " | ".join(e["msg"] for e in exc.value.errors())


def test_defaults_are_a_local_plaintext_broker() -> None:
    k = KafkaSettings()
    assert (k.bootstrap, k.prefix, k.security_protocol) == (DEFAULT_BOOTSTRAP, "", "PLAINTEXT")
    assert k.client_kwargs() == {"bootstrap_servers": DEFAULT_BOOTSTRAP, "security_protocol": "PLAINTEXT"}


def test_bootstrap_from_either_variable_and_values_given_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "a:1")
    assert KafkaSettings().bootstrap == "a:1"
    monkeypatch.setenv("TOKENPOOLS_KAFKA_BOOTSTRAP", "b:2, c:3")
    assert KafkaSettings().bootstrap == "b:2,c:3"  # the product's own name first; spaces dropped
    assert KafkaSettings(bootstrap="d:4").bootstrap == "d:4"
    monkeypatch.setenv("TOKENPOOLS_KAFKA_PREFIX", "run-1.")
    assert KafkaSettings().prefix == "run-1."


@pytest.mark.parametrize("value", ["", "host", "host:0", "host:65536", ":9092", "h:1,x" + "y" * 10_000])
def test_bad_bootstrap_is_refused_with_a_bounded_message(value: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT") as info:
        parse_bootstrap(value)
    assert len(str(info.value)) < 200
    with pytest.raises(ValidationError):
        KafkaSettings(bootstrap=value)


@pytest.mark.parametrize("prefix", ["a b", "t/", "x" * 101])
def test_bad_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ValidationError):
        KafkaSettings(prefix=prefix)


def test_sasl_needs_credentials_and_reaches_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError) as info:
        KafkaSettings(security_protocol="SASL_PLAINTEXT")
    assert "needs sasl_username and sasl_password" in messages(info)
    with pytest.raises(ValidationError) as info:
        KafkaSettings(sasl_username="u", sasl_password="p")
    assert "need security_protocol SASL_PLAINTEXT or SASL_SSL" in messages(info)

    monkeypatch.setenv("TOKENPOOLS_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("TOKENPOOLS_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("TOKENPOOLS_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("TOKENPOOLS_KAFKA_SASL_PASSWORD", "s3cret")
    k = KafkaSettings()
    assert "s3cret" not in repr(k) and "s3cret" not in str(k.model_dump())
    assert k.client_kwargs() == {
        "bootstrap_servers": DEFAULT_BOOTSTRAP, "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "svc", "sasl_plain_password": "s3cret",
    }


def test_ssl_gives_a_context_and_the_ca_file_needs_ssl(tmp_path: Path) -> None:
    kwargs = KafkaSettings(security_protocol="SSL").client_kwargs()
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext) and kwargs["security_protocol"] == "SSL"
    with pytest.raises(ValidationError):
        KafkaSettings(security_protocol="SSL", ssl_cafile=tmp_path / "missing.pem")
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    with pytest.raises(ValidationError) as info:
        KafkaSettings(ssl_cafile=ca)
    assert "ssl_cafile needs security_protocol SSL or SASL_SSL" in messages(info)


def test_unknown_protocol_and_names_are_refused() -> None:
    with pytest.raises(ValidationError):
        KafkaSettings(security_protocol="TLS")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        KafkaSettings(bootstrap_servers="a:1")  # type: ignore[call-arg]
