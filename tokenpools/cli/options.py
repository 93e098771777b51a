"""Shared option parsers for the CLI.

Typer parses a float option with Python's ``float()``, which takes ``nan``, ``inf`` and ``1e999``;
a range such as ``min=0`` lets ``inf`` through, and an option without a range lets ``nan`` through.
Either then reaches the simulator, the scaler or the pipeline as a duration or a rate. Every float
option uses ``finite(...)`` instead of ``min``/``max``, so the range check and the finiteness check
are one rule with one message.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import typer

from schemas.echo import echo


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
