"""`tokenpools experiment overload|fairness|regions` and `tokenpools demo`: the claims, with numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from tokenpools.cli.options import finite

app = typer.Typer(help="Reproduce the experiments in simulated time (JSON, Markdown and PNG results).",
                  no_args_is_help=True)
console = Console()

SEED = typer.Option(None, "--seed", help="Arrival seed (default: the workload's own).", min=0)
DURATION = typer.Option(None, "--duration", help="Stretch or shrink the workload's timeline to this many seconds.",
                        parser=finite(min=10.0))


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
    config: Path | None = typer.Option(
        None, "--config", help="Config folder or file: pool, entitlements and workloads (default: deploy/examples)."),
    workload: str = typer.Option("fairness", "--workload",
                                 help="Workload to run; at least two of its tenants must be elastic."),
) -> None:
    """Experiment 2: debt drives elastic tenants to weighted fair shares under scarcity."""
    from sim.experiments import fairness as experiment

    try:  # the config and workload are checked before anything runs
        summary = experiment.run(seed=seed, duration=duration, out=out, console=console, config_dir=config,
                                 workload=workload)
    except experiment.FairnessInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _exit_on_failure(summary["pass"])


@app.command("regions")
def regions(
    seed: int | None = SEED,
    duration: float | None = typer.Option(None, "--duration", help="Simulated seconds (default 240, at least 100).",
                                          parser=finite(min=100.0)),
    out: Path = typer.Option(Path("results/regions"), "--out", help="Folder for regions.json, table.md, PNG."),
    regions: int = typer.Option(5, "--regions", help="Regions.", min=2),
    pools: int = typer.Option(50, "--pools", help="Pools: models x regions (a multiple of --regions).", min=2),
    entitlements: int = typer.Option(5000, "--entitlements", help="Global entitlements.", min=1),
) -> None:
    """Experiment 3: global entitlements split over regional pools, a region lost (simulated time)."""
    from sim.experiments import regions as experiment

    if pools % regions:
        console.print(f"[red]error:[/red] --pools ({pools}) must be a multiple of --regions ({regions})")
        raise typer.Exit(2)
    summary = experiment.run(seed=44 if seed is None else seed, duration=duration, out=out, console=console,
                             regions=regions, pools=pools, entitlements=entitlements)
    _exit_on_failure(summary["checks"])


@app.command("closed-loop")
def closed_loop(
    out: Path = typer.Option(Path("results/closed-loop"), "--out", help="Folder for summary.json, table.md, PNG."),
) -> None:
    """The live platform on real Kafka: tokenpools up, a workload through both admitters, what the loop did."""
    _exit_on_failure(_closed_loop(out)["pass"])


def _closed_loop(out: Path) -> dict[str, Any]:
    from tokenpools.experiments import closed_loop

    try:
        return closed_loop.run(out, console=console)
    except closed_loop.UpFailed as exc:
        console.print(f"[red]error:[/red] {exc}")
        console.print("The live part needs Java 17+ and Maven on the PATH (Kafka's jars are resolved with Maven "
                      "on the first run), or a Kafka to use: see the README.")
        raise typer.Exit(1) from None


def demo(
    out: Path = typer.Option(Path("results"), "--out", help="Folder for every part's results."),
    regions: bool = typer.Option(True, "--regions/--no-regions",
                                 help="Also run the multi-region experiment at full scale (part 3, about 10 minutes)."),
    live: bool = typer.Option(True, "--live/--no-live",
                              help="Also run the closed loop on real Kafka (part 4, about 4 minutes)."),
) -> None:
    """The main job: the experiments in simulated time, then the closed loop live on Kafka."""
    from sim.experiments import fairness as fairness_experiment
    from sim.experiments import overload as overload_experiment

    console.rule("Part 1: overload (simulated time)")
    first = overload_experiment.run(out=out / "overload", console=console)
    console.rule("Part 2: fairness under scarcity (simulated time)")
    second = fairness_experiment.run(out=out / "fairness", console=console)
    checks = {**first["checks"]["pass"], **second["pass"]}
    parts = ["overload", "fairness"]
    if regions:
        from sim.experiments import regions as regions_experiment

        console.rule("Part 3: global entitlements over 5 regions, one lost (simulated time)")
        third = regions_experiment.run(seed=44, duration=None, out=out / "regions", console=console)
        checks.update({f"regions: {name}": ok for name, ok in third["checks"].items()})
        parts.append("regions")
    if live:
        console.rule("Part 4: the closed loop, live on Kafka")
        checks.update(_closed_loop(out / "closed-loop")["pass"])
        parts.append("closed-loop")
    console.rule("Results")
    for name in parts:
        folder = out / name
        console.print(f"{name}: {folder}/table.md, " + ", ".join(str(p) for p in sorted(folder.glob("*.json"))) +
                      ", " + ", ".join(str(p) for p in sorted(folder.glob("*.png"))))
    _exit_on_failure(checks)


def _exit_on_failure(checks: dict[str, bool]) -> None:
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        console.print(f"[red]claims not met: {', '.join(failed)}[/red]")
        raise typer.Exit(1)
