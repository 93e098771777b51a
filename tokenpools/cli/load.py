"""`tokenpools load`: replay a seeded workload over HTTP against any OpenAI-compatible endpoint.

Heavy imports (aiohttp, numpy, matplotlib, the workload generator) happen inside the command, so
other subcommands stay quick to start.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from tokenpools.cli.options import finite

if TYPE_CHECKING:
    from rich.console import Console

    from loadgen.runner import LoadResult

EXIT_BAD_OPTIONS = 2
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "examples"


class EndpointOption(StrEnum):
    chat = "chat"
    completions = "completions"


def load(
    url: list[str] = typer.Option(
        ["http://127.0.0.1:8080"], "--url", "-u",
        help="Base URL of an OpenAI-compatible server (admitter, emulator, vLLM); repeat to spread requests "
        "round-robin over several."),
    config: list[Path] = typer.Option([DEFAULT_CONFIG], "--config", "-c",
                                      help="YAML files or folders holding the workload, its pool and entitlements."),
    workload: str | None = typer.Option(None, "--workload", "-w",
                                        help="Workload name (default: the only one in the config)."),
    seed: int | None = typer.Option(None, "--seed", min=0, help="Arrival seed (default: the workload's)."),
    duration: float | None = typer.Option(None, "--duration", parser=finite(min=0.001),
                                          help="Stretch or shrink the whole timeline to this many seconds."),
    rate_scale: float = typer.Option(
        1.0, "--rate-scale", parser=finite(min=0.0001),
        help="Multiply every tenant's rate."),
    out: Path = typer.Option(Path("results/load"), "--out", "-o", help="Folder for summary.json, table.md, PNG."),
    timeout: float = typer.Option(
        300.0, "--timeout", parser=finite(min=0.001),
        help="Give up on one request after this (s)."),
    drain: float | None = typer.Option(
        None, "--drain", parser=finite(min=0.0),
        help="Seconds after the last arrival before requests still running are cut (default: wait for all)."),
    endpoint: EndpointOption = typer.Option(EndpointOption.chat, "--endpoint",
                                            help="chat (/v1/chat/completions) or completions (/v1/completions)."),
    key: list[str] = typer.Option([], "--key", "-k", help="ENTITLEMENT=KEY (repeatable); overrides --keys."),
    keys: Path | None = typer.Option(None, "--keys", exists=True, dir_okay=False,
                                     help="YAML or JSON map of entitlement name to API key."),
    demo_keys: bool = typer.Option(True, "--demo-keys/--no-demo-keys",
                                   help="Fall back to the demo keys of deploy/examples (tp-demo-<tenant>)."),
    emulator_hints: bool = typer.Option(
        True, "--emulator-hints/--no-emulator-hints",
        help="Send the emulator extension {\"emulator\": {\"output_tokens\": N}} so the emulator generates the "
        "workload's output length (other servers ignore it, or may refuse an unknown field)."),
    model: str | None = typer.Option(None, "--model", help="Model to ask for (default: the pool's spec.model)."),
    max_in_flight: int = typer.Option(10_000, "--max-in-flight", min=1,
                                      help="Cap on requests in flight; sends it delays are counted and reported."),
) -> None:
    """Send a workload's requests at their arrival times (open loop) and report latencies and outcomes."""
    from rich.console import Console

    from loadgen.keys import KeysError, load_keys_file, parse_key_options, resolve_keys
    from loadgen.plan import make_plan
    from loadgen.progress import run_with_progress
    from loadgen.runner import LoadOptions, LoadRunner
    from schemas.loader import ConfigError

    console = Console()
    try:
        plan = make_plan(config, workload, seed=seed, duration=duration, rate_scale=rate_scale, model=model)
        explicit = {**(load_keys_file(keys) if keys else {}), **parse_key_options(key)}
        api_keys = resolve_keys([t.entitlement for t in plan.spec.tenants], plan.config.entitlements,
                                explicit=explicit, use_demo=demo_keys)
        options = LoadOptions(urls=url, model=plan.model, keys=api_keys, tiers=plan.tiers,
                              endpoint=endpoint.value, emulator_hints=emulator_hints, timeout=timeout, drain=drain,
                              max_in_flight=max_in_flight)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(EXIT_BAD_OPTIONS) from None
    except (KeysError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_OPTIONS) from None
    if not plan.arrivals:
        typer.echo("error: the workload produces no requests (check its rates, duration and --rate-scale)", err=True)
        raise typer.Exit(EXIT_BAD_OPTIONS)
    console.print(f"workload [bold]{plan.name}[/]: {len(plan.arrivals)} requests over {plan.spec.duration_seconds:g} s "
                  f"-> {', '.join(url)} ({endpoint.value}, model {plan.model})")
    runner = LoadRunner(plan.arrivals, options, plan.spec.duration_seconds)
    try:
        result = asyncio.run(run_with_progress(runner, console, plan.name))
    except KeyboardInterrupt:  # report what was measured until then
        console.print("[yellow]interrupted[/]: reporting the requests sent so far")
        result = runner.result()
    pool = plan.config.pools.get(plan.spec.pool)
    weights = (pool.spec.token_weights.input, pool.spec.token_weights.output) if pool else None
    finish(result, out, console, plan.name, weights,
           meta={"workload": plan.name, "seed": seed if seed is not None else plan.spec.seed,
                 "duration": plan.spec.duration_seconds, "rate_scale": rate_scale, "endpoint": endpoint.value,
                 "model": plan.model, "tiers": plan.tiers})


def finish(result: LoadResult, out: Path, console: Console, title: str, weights: tuple[float, float] | None,
           meta: dict[str, object]) -> dict[str, object]:
    """Summarise, write the files, print the table; the summary."""
    from loadgen.report import report, write_outputs

    summary = report(result, weights)
    table = write_outputs(out, result, summary, title, meta)
    console.print(table, soft_wrap=True)
    console.print(f"\nresults: {out}/summary.json, {out}/table.md, {out}/latency.png, {out}/records.jsonl")
    return summary
