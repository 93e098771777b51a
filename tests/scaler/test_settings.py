"""ScalerSettings: what `tokenpools scaler` runs with, from options, TOKENPOOLS_SCALER_* and the Kafka block."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from scaler.settings import ScalerSettings
from tests.kafka.test_settings import clear_settings_env

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_settings_env(monkeypatch)


def test_defaults_and_the_kafka_block() -> None:
    s = ScalerSettings(config_paths=[Path("pools.yaml")])
    assert (s.kafka.bootstrap, s.kafka.prefix, s.pools, s.speedup, s.report_every, s.log_level) == \
        ("127.0.0.1:9092", "", [], 1.0, 10.0, "info")
    assert ScalerSettings(config_paths=["a"], bootstrap_servers="h:1", topic_prefix="t.").kafka.prefix == "t."


def test_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k:1")
    monkeypatch.setenv("TOKENPOOLS_SCALER_CONFIG_PATHS", '["deploy/examples"]')
    monkeypatch.setenv("TOKENPOOLS_SCALER_POOLS", '["a", "b"]')
    monkeypatch.setenv("TOKENPOOLS_SCALER_REPORT_EVERY", "2.5")
    monkeypatch.setenv("TOKENPOOLS_SCALER_SPEEDUP", "4")
    monkeypatch.setenv("TOKENPOOLS_SCALER_LOG_LEVEL", "DEBUG")
    s = ScalerSettings()
    assert (s.kafka.bootstrap, s.config_paths, s.pools, s.report_every, s.speedup, s.log_level) == \
        ("k:1", [Path("deploy/examples")], ["a", "b"], 2.5, 4.0, "debug")


@pytest.mark.parametrize("values", [
    {}, {"config_paths": []}, {"config_paths": ["a"], "speedup": float("nan")},
    {"config_paths": ["a"], "report_every": 0}, {"config_paths": ["a"], "report_every": float("inf")},
    {"config_paths": ["a"], "log_level": "chatty"},
])
def test_checks(values: dict) -> None:
    with pytest.raises(ValidationError):
        ScalerSettings(**values)


def test_the_command_refuses_bad_settings_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from tokenpools.cli import app

    monkeypatch.setattr("asyncio.run", lambda *a, **k: pytest.fail("must not start"))
    result = CliRunner().invoke(app, ["scaler", "--config", str(EXAMPLES), "--bootstrap", "nohost"])
    assert result.exit_code == 2 and "error: kafka.bootstrap: Kafka bootstrap server" in result.output
    result = CliRunner().invoke(app, ["scaler"])
    assert result.exit_code == 2 and "error: config_paths: Field required" in result.output


def test_the_kubernetes_actuator_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = ScalerSettings(config_paths=["a"])
    assert (s.actuator, s.namespace, s.kubeconfig, s.pool_label, s.port_name) == \
        ("local", None, None, "tokenpools.dev/pool", "http")
    monkeypatch.setenv("TOKENPOOLS_SCALER_ACTUATOR", "kubernetes")
    monkeypatch.setenv("TOKENPOOLS_SCALER_NAMESPACE", "pools")
    monkeypatch.setenv("TOKENPOOLS_SCALER_KUBECONFIG", "/etc/kube.yaml")
    s = ScalerSettings(config_paths=["a"])
    assert (s.actuator, s.namespace, s.kubeconfig) == ("kubernetes", "pools", Path("/etc/kube.yaml"))
    for bad in ({"actuator": "k8s"}, {"namespace": "Not_A_Namespace"}, {"kube_cache_ttl": -1}):
        with pytest.raises(ValidationError):
            ScalerSettings(config_paths=["a"], **bad)


def test_the_kubernetes_command_says_which_configs_it_tried(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tokenpools.cli import app

    monkeypatch.setattr("asyncio.run", lambda *a, **k: pytest.fail("must not start"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    result = CliRunner().invoke(app, ["scaler", "--config", str(EXAMPLES), "--actuator", "kubernetes"])
    assert result.exit_code == 2
    assert "in-cluster config: not in a pod" in result.output and f"kubeconfig {tmp_path / 'none'}" in result.output
