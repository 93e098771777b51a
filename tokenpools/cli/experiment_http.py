"""`tokenpools experiment overload-http`: experiment 1 over real HTTP (emulator, admitter, load generator).

Registered on the `experiment` group next to the simulated-time experiments; heavy imports happen
inside the command.
"""

from __future__ import annotations

from pathlib import Path

import typer

from tokenpools.cli.options import finite


def overload_http(
    seed: int | None = typer.Option(None, "--seed", min=0, help="Arrival seed (default: the workload's, 42)."),
    duration: float | None = typer.Option(None, "--duration", parser=finite(min=5.0),
                                          help="Stretch or shrink the 90 s timeline to this many seconds."),
    drain: float = typer.Option(
        10.0, "--drain", parser=finite(min=0.0),
        help="Seconds the replicas get after the last arrival before waiting requests are cut."),
    out: Path = typer.Option(Path("results/overload-http"), "--out", help="Folder for summary.json, table.md, PNG."),
    simulation: bool = typer.Option(True, "--simulation/--no-simulation",
                                    help="Also run the same arrivals in simulated time, for comparison."),
) -> None:
    """Experiment 1 over HTTP: pass-through vs enforcing admitter in front of emulated replicas (~4 min)."""
    from rich.console import Console

    from tokenpools.experiments import overload_http

    summary = overload_http.run(out, seed=seed, duration=duration, drain=drain, console=Console(),
                                with_simulation=simulation)
    failed = [name for name, ok in summary["checks"].get("pass", {}).items() if not ok]
    if failed:
        typer.echo(f"claims not met: {', '.join(failed)}", err=True)
        raise typer.Exit(1)
