"""`tokenpools experiment overload|fairness` and `tokenpools demo`: the claims, with numbers."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="Reproduce the experiments in simulated time (JSON, Markdown and PNG results).",
                  no_args_is_help=True)
console = Console()

SEED = typer.Option(None, "--seed", help="Arrival seed (default: the workload's own).", min=0)
DURATION = typer.Option(None, "--duration", help="Stretch or shrink the workload's timeline to this many seconds.",
                        min=10.0)


@app.command("overload")
def overload(
    seed: int | None = SEED,
    duration: float | None = DURATION,
    out: Path = typer.Option(Path("results/overload"), "--out", help="Folder for summary.json, table.md, PNG."),
) -> None:
    """Experiment 1: guaranteed P99 TTFT stays bounded while spot demand surges past 3x capacity."""
    from sim.experiments import overload as experiment

    summary = experiment.run(seed=42 if seed is None else seed, duration=duration, out=out, console=console)
    _exit_on_failure(summary["checks"]["pass"])


@app.command("fairness")
def fairness(
    seed: int | None = SEED,
    duration: float | None = DURATION,
    out: Path = typer.Option(Path("results/fairness"), "--out", help="Folder for summary.json, table.md, PNG."),
) -> None:
    """Experiment 2: debt drives elastic tenants to weighted fair shares under scarcity."""
    from sim.experiments import fairness as experiment

    summary = experiment.run(seed=43 if seed is None else seed, duration=duration, out=out, console=console)
    _exit_on_failure(summary["pass"])


def demo(out: Path = typer.Option(Path("results"), "--out", help="Folder for both experiments' results.")) -> None:
    """The main job: both experiments with their default seeds and durations."""
    from sim.experiments import fairness as fairness_experiment
    from sim.experiments import overload as overload_experiment

    console.rule("Experiment 1: overload")
    first = overload_experiment.run(out=out / "overload", console=console)
    console.rule("Experiment 2: fairness under scarcity")
    second = fairness_experiment.run(out=out / "fairness", console=console)
    console.rule("Results")
    for name in ("overload", "fairness"):
        folder = out / name
        console.print(f"{name}: {folder}/table.md, {folder}/summary.json, " +
                      ", ".join(str(p) for p in sorted(folder.glob("*.png"))))
    _exit_on_failure({**first["checks"]["pass"], **second["pass"]})


def _exit_on_failure(checks: dict[str, bool]) -> None:
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        console.print(f"[red]claims not met: {', '.join(failed)}[/red]")
        raise typer.Exit(1)
