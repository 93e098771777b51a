"""`tokenpools streams regional`: options are checked before anything connects to Kafka."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tokenpools.cli import app

runner = CliRunner()


def test_help_lists_the_options() -> None:
    result = runner.invoke(app, ["streams", "regional", "--help"])
    assert result.exit_code == 0
    for option in ("--region", "--bootstrap", "--topic-prefix", "--metrics-port", "--metrics-host", "--log-level"):
        assert option in result.output


@pytest.mark.parametrize(("args", "message"), [
    ([], "error: region: Field required"),
    (["--region", "Not_A_Name"], "error: region: 'Not_A_Name' is not a valid name"),
    (["--region", "a", "--bootstrap", "nohost"], "error: kafka.bootstrap: Kafka bootstrap server must be HOST:PORT"),
    (["--region", "a", "--log-level", "loud"], "error: log_level: Input should be"),
    (["--region", "a", "--topic-prefix", "bad prefix"], "error: kafka.prefix:"),
])
def test_bad_options_exit_2_with_one_line(args: list[str], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENPOOLS_REGIONAL_REGION", raising=False)
    result = runner.invoke(app, ["streams", "regional", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), result.output


def test_a_bad_setting_from_the_environment_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENPOOLS_REGIONAL_MIN_TICK_S", "0")
    result = runner.invoke(app, ["streams", "regional", "--region", "a"])
    assert result.exit_code == 2 and "error: min_tick_s: Input should be greater than 0" in result.output
