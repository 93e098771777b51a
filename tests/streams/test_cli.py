"""`tokenpools streams worker`: options are checked before anything connects to Kafka."""

from __future__ import annotations

from typer.testing import CliRunner

from tokenpools.cli import app

runner = CliRunner()


def test_help_lists_the_worker_options() -> None:
    result = runner.invoke(app, ["streams", "worker", "--help"])
    assert result.exit_code == 0
    for option in ("--bootstrap", "--config", "--web-port", "--metrics-port", "--app-id", "--topic-prefix"):
        assert option in result.output


def test_bad_options_exit_2_with_one_line() -> None:
    result = runner.invoke(app, ["streams", "worker", "--processing-guarantee", "maybe_once"])
    assert result.exit_code == 2 and "error: processing_guarantee must be one of" in result.output
    result = runner.invoke(app, ["streams", "worker", "--hop-size-seconds", "5", "--hop-step-seconds", "10"])
    assert result.exit_code == 2 and "at least as long as its step" in result.output


def test_settings_from_the_environment_are_checked_too(monkeypatch) -> None:
    monkeypatch.setenv("TOKENPOOLS_STREAMS_PARTITIONS", "0")
    result = runner.invoke(app, ["streams", "worker"])
    assert result.exit_code == 2 and "error: partitions: Input should be greater than or equal to 1" in result.output
    monkeypatch.delenv("TOKENPOOLS_STREAMS_PARTITIONS")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "nohost")
    result = runner.invoke(app, ["streams", "worker"])
    assert result.exit_code == 2 and "error: kafka.bootstrap: Kafka bootstrap server must be HOST:PORT" in result.output
