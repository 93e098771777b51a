"""Every float option of every command refuses NaN and infinities with exit code 2 and a clear line.

Typer parses floats with ``float()``, which accepts ``nan``, ``inf`` and ``1e999``; ``min=`` lets
``inf`` through and an option without a range lets ``nan`` through, and either then reached the
simulator or the scaler (``experiment overload --duration inf`` and ``scaler --speedup nan`` ended
in tracebacks). The options are found by walking the real command tree, so a float option added
later is covered without touching this file. Nothing runs: the value is refused while parsing.
"""

from __future__ import annotations

from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from tokenpools.cli import app
from tokenpools.cli.options import finite

ROOT = typer.main.get_command(app)


def _command(path: tuple[str, ...]) -> Any:
    command: Any = ROOT
    for name in path:
        command = command.commands[name]
    return command


def _float_options() -> list[tuple[tuple[str, ...], str]]:
    found: list[tuple[tuple[str, ...], str]] = []

    def walk(command: object, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, (*path, name))
            return
        for param in command.params:  # type: ignore[attr-defined]
            if "float" in str(param.type_descriptor.annotation) and param.opts[0].startswith("--"):
                found.append((path, param.opts[0]))

    walk(ROOT, ())
    return found


FLOAT_OPTIONS = _float_options()


def test_the_walk_finds_the_options() -> None:
    assert (("experiment", "overload"), "--duration") in FLOAT_OPTIONS
    assert (("streams", "worker"), "--tumbling-seconds") in FLOAT_OPTIONS
    assert len(FLOAT_OPTIONS) >= 25


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
@pytest.mark.parametrize(("command", "option"), FLOAT_OPTIONS, ids=[f"{' '.join(c)} {o}" for c, o in FLOAT_OPTIONS])
def test_non_finite_float_option_is_refused(command: tuple[str, ...], option: str, value: str) -> None:
    # Parse only (make_context), so an option that wrongly accepts the value cannot start a server.
    with pytest.raises(Exception) as info:
        _command(command).make_context("tokenpools", [option, value])
    assert getattr(info.value, "exit_code", None) == 2, repr(info.value)
    assert "finite number" in info.value.format_message()  # type: ignore[attr-defined]


def test_the_refusal_reaches_the_user_as_exit_2() -> None:
    result = CliRunner().invoke(app, ["experiment", "overload", "--duration", "inf"])
    assert result.exit_code == 2, result.output
    assert "must be a finite number" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("parser", "value", "expected"),
    [(finite(min=0), "0", 0.0), (finite(min=1, max=2), "1.5", 1.5), (finite(above=0), "1e-9", 1e-9)],
)
def test_finite_accepts_values_in_range(parser, value, expected) -> None:
    assert parser(value) == expected


@pytest.mark.parametrize(
    ("parser", "value", "message"),
    [
        (finite(min=1), "0.5", "at least 1"),
        (finite(max=1), "2", "at most 1"),
        (finite(above=0), "0", "greater than 0"),
        (finite(), "ten", "must be a number"),
        (finite(), "x" * 10_000, "must be a number"),
    ],
)
def test_finite_refuses_with_a_bounded_message(parser, value, message) -> None:
    with pytest.raises(typer.BadParameter) as info:
        parser(value)
    assert message in str(info.value)
    assert len(str(info.value)) < 200
