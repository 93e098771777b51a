"""AdmitterSettings: every field from TOKENPOOLS_*, the Kafka block, and the cross-field checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from admitter.settings import HISTORY_ENV, AdmitterCommandSettings, AdmitterSettings
from tests.kafka.test_settings import clear_settings_env


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_settings_env(monkeypatch)


# A non-default value for every field, as an environment variable would spell it.
FROM_ENV: dict[str, tuple[str, Any]] = {
    "config_paths": ('["a.yaml", "b"]', [Path("a.yaml"), Path("b")]),
    "history_url": ("http://history:8090/", "http://history:8090"),
    "history_token": ("t0ken", SecretStr("t0ken")),
    "history_timeout_seconds": ("2", 2.0),
    "host": ("0.0.0.0", "0.0.0.0"),
    "port": ("9000", 9000),
    "admitter_id": ("edge-9", "edge-9"),
    "admin_key_sha256": ("AB" * 32, "ab" * 32),
    "passthrough": ("true", True),
    "max_body_bytes": ("2048", 2048),
    "header_timeout_seconds": ("1.5", 1.5),
    "body_idle_timeout_seconds": ("2.5", 2.5),
    "body_timeout_seconds": ("30", 30.0),
    "max_unauthenticated_connections": ("7", 7),
    "connect_timeout": ("0.5", 0.5),
    "read_timeout": ("60", 60.0),
    "write_timeout": ("3", 3.0),
    "upstream_client": ("aiohttp", "aiohttp"),
    "upstream_keepalive_seconds": ("2", 2.0),
    "max_idle_connections_per_replica": ("8", 8),
    "backends": ('{"p": ["http://10.0.0.1:8000"]}', {"p": ["http://10.0.0.1:8000"]}),
    "backend_cooldown_seconds": ("0", 0.0),
    "max_queue": ("5", 5),
    "public_metrics": ("1", True),
    "log_level": ("INFO", "info"),
    "access_log": ("yes", True),
    "spool_dir": ("/tmp/spool", Path("/tmp/spool")),
    "expected_admitters": ("3", 3),
    "config_wait_seconds": ("0", 0.0),
    "config_write_timeout": ("9", 9.0),
    "discover": ("true", True),
}


def test_every_field_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(FROM_ENV) | {"kafka"} == set(AdmitterSettings.model_fields)  # a new field needs a line above
    for name, (raw, _) in FROM_ENV.items():
        monkeypatch.setenv(HISTORY_ENV.get(name, f"TOKENPOOLS_{name.upper()}"), raw)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k:9092")  # discover needs Kafka
    s = AdmitterSettings()
    for name, (_, expected) in FROM_ENV.items():
        assert getattr(s, name) == expected, name


def test_standalone_unless_a_bootstrap_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AdmitterSettings().kafka is None and AdmitterSettings().kafka_bootstrap is None
    monkeypatch.setenv("TOKENPOOLS_KAFKA_PREFIX", "t.")
    assert AdmitterSettings().kafka is None  # a prefix alone names no cluster
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k:1")
    s = AdmitterSettings()
    assert (s.kafka_bootstrap, s.topic_prefix) == ("k:1", "t.")
    s = AdmitterSettings(kafka={"bootstrap": "given:2"})  # given wins, the rest of the block from the env
    assert (s.kafka_bootstrap, s.topic_prefix) == ("given:2", "t.")


def test_the_flat_kafka_names_still_build_the_block() -> None:
    s = AdmitterSettings(kafka_bootstrap="h:1", topic_prefix="x.")
    assert s.kafka is not None and (s.kafka.bootstrap, s.kafka.prefix) == ("h:1", "x.")
    assert AdmitterSettings(kafka_bootstrap=None).kafka is None


def test_discover_needs_kafka() -> None:
    with pytest.raises(ValidationError, match="--discover needs --kafka"):
        AdmitterSettings(discover=True)
    assert AdmitterSettings(discover=True, kafka_bootstrap="h:1").discover


def test_the_command_needs_config_without_kafka() -> None:
    with pytest.raises(ValidationError, match="--config is required without --kafka"):
        AdmitterCommandSettings()
    assert AdmitterCommandSettings(config_paths=[Path("p.yaml")]).kafka is None
    assert AdmitterCommandSettings(kafka_bootstrap="h:1").config_paths == []
    AdmitterSettings()  # code that passes its platform config to create_app needs neither


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_non_finite_floats_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("TOKENPOOLS_READ_TIMEOUT", value)
    with pytest.raises(ValidationError, match="finite number"):
        AdmitterSettings()


@pytest.mark.parametrize(("field", "value"), [
    ("read_timeout", 86_401.0), ("max_body_bytes", 2 ** 40), ("port", 70_000), ("expected_admitters", 0),
    ("admin_key_sha256", "z" * 64), ("log_level", "loud"), ("upstream_client", "curl"),
])
def test_out_of_range_values_are_refused(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        AdmitterSettings(**{field: value})
    assert info.value.errors()[0]["loc"] == (field,)


def test_messages_do_not_echo_long_input() -> None:
    url = "ftp://" + "x" * 100_000
    with pytest.raises(ValidationError) as info:
        AdmitterSettings(backends={"p": [url]})
    (error,) = info.value.errors(include_input=False)
    assert "http(s) URL" in error["msg"] and len(error["msg"]) < 300


def test_bad_json_in_the_environment_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENPOOLS_BACKENDS", "{not json")
    with pytest.raises(ValueError, match="backends"):
        AdmitterSettings()


def test_settings_are_frozen_and_reject_unknown_names() -> None:
    s = AdmitterSettings()
    with pytest.raises(ValidationError):
        s.port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        AdmitterSettings(prot=1)  # type: ignore[call-arg]
    assert json.loads(s.model_dump_json())["kafka"] is None
