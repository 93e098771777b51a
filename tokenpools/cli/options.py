"""Shared option parsers for the CLI, and the one path from options and environment to settings.

``given`` takes the options set on the command line, ``build_settings`` builds a command's settings
model from them (the model reads the rest from the environment, then its defaults) or exits 2 with
one ``error:`` line per problem (``problems``).

Typer parses a float option with Python's ``float()``, which takes ``nan``, ``inf`` and ``1e999``;
a range such as ``min=0`` lets ``inf`` through, and an option without a range lets ``nan`` through.
Either then reaches the simulator, the scaler or the pipeline as a duration or a rate. Every float
option uses ``finite(...)`` instead of ``min``/``max``, so the range check and the finiteness check
are one rule with one message.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from schemas.echo import echo, echo_str

if TYPE_CHECKING:  # pydantic is imported by the commands that build settings, not by every command
    from pydantic import ValidationError
    from pydantic_settings import BaseSettings

EXIT_BAD_OPTIONS = 2  # click's own code for a bad option, used for bad settings too


def finite(min: float | None = None, max: float | None = None, *, above: float | None = None) -> Callable[[str], float]:
    """A parser for a finite float in ``[min, max]`` (``above``: strictly greater than it)."""

    def parse(value: str | float) -> float:
        if isinstance(value, float | int):  # a default, already a number
            number = float(value)
        else:
            try:
                number = float(value)
            except ValueError:
                raise typer.BadParameter(f"must be a number, got {echo(value)}") from None
        if not math.isfinite(number):
            raise typer.BadParameter(f"must be a finite number, got {echo(value)}")
        if above is not None and not number > above:
            raise typer.BadParameter(f"must be greater than {above:g}, got {number:g}")
        if min is not None and number < min:
            raise typer.BadParameter(f"must be at least {min:g}, got {number:g}")
        if max is not None and number > max:
            raise typer.BadParameter(f"must be at most {max:g}, got {number:g}")
        return number

    return parse


def given(ctx: typer.Context, fields: Mapping[str, str]) -> dict[str, Any]:
    """The options set on the command line, as settings input: ``{field: value}``.

    ``fields`` maps an option's parameter name to its settings field (``"kafka.bootstrap"`` nests).
    Options left out are not passed, so the settings model fills them from the environment, then its
    defaults (the same as the options' own): one path from options and environment to settings.
    """
    values: dict[str, Any] = {}
    for param, field in fields.items():
        source = ctx.get_parameter_source(param)  # an enum of typer's own copy of click: compared by name
        if source is None or source.name != "COMMANDLINE":
            continue
        *outer, name = field.split(".")
        target = values
        for key in outer:
            target = target.setdefault(key, {})
        target[name] = ctx.params[param]
    return values


def problems(exc: ValidationError) -> list[str]:
    """One line per problem: where (a settings field, dotted) and what to fix, never the input itself."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        lines.append(message if not where or message.startswith(where.rsplit(".", 1)[-1]) else f"{where}: {message}")
    return lines


S = TypeVar("S", bound="BaseSettings")


def build_settings(cls: type[S], values: Mapping[str, Any]) -> S:
    """``cls(**values)`` (and the environment), or exit 2 with ``error: <problem>`` lines."""
    from pydantic import ValidationError

    try:
        return cls(**values)
    except ValidationError as exc:
        lines = problems(exc)
    except ValueError as exc:  # e.g. pydantic-settings' SettingsError: a variable that is not valid JSON
        lines = [echo_str(str(exc), limit=300)]
    for line in lines:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(EXIT_BAD_OPTIONS)
