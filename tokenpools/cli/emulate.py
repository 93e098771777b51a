"""`tokenpools emulate`: N emulated vLLM replicas in one process, one port each.

The heavy imports (uvicorn, numpy, the engine) happen inside the command, so that other
subcommands such as `tokenpools config check` stay quick to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from tokenpools.cli.options import finite

if TYPE_CHECKING:
    from sim.server import EmulatorConfig

EXIT_BAD_OPTIONS = 2


class OutputTokensModeOption(StrEnum):
    """Mirrors ``sim.server.OutputTokensMode`` without importing it at CLI start-up."""

    auto = "auto"
    lognormal = "lognormal"
    max_tokens = "max-tokens"


class SchedulingPolicyOption(StrEnum):
    fcfs = "fcfs"
    priority = "priority"


def emulate(
    replicas: int = typer.Option(1, "--replicas", "-n", min=0, help="Number of replicas (one port each)."),
    port: int = typer.Option(8000, "--port", "-p", min=0, max=65535,
                             help="Port of the first replica; replica i listens on PORT+i. 0 picks free ports."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    model: str = typer.Option("llama-3-8b", "--model", help="Served model name (`model` in requests, /v1/models)."),
    speedup: float = typer.Option(1.0, "--speedup", parser=finite(above=0),
                                  help="Model seconds per wall second; >1 runs the replicas faster than real GPUs."),
    cost_model: Path | None = typer.Option(
        None, "--cost-model", exists=True, dir_okay=False,
        help="GPU calibration JSON (like shared/calibration/*.json) or a JSON object of cost-model fields. "
        "Default: the published H200 / Llama-3-8B fit."),
    max_num_seqs: int | None = typer.Option(None, "--max-num-seqs", min=1, help="vLLM's max_num_seqs (default 256)."),
    max_num_batched_tokens: int | None = typer.Option(
        None, "--max-num-batched-tokens", min=1, help="vLLM's max_num_batched_tokens (default 8192)."),
    scheduling_policy: SchedulingPolicyOption = typer.Option(
        SchedulingPolicyOption.fcfs, "--scheduling-policy", case_sensitive=False,
        help="vLLM's --scheduling-policy: fcfs, or priority (requests' `priority` field, lower first)."),
    kv_tokens: int | None = typer.Option(None, "--kv-tokens", min=16,
                                         help="KV-cache capacity per replica in tokens (default 850000)."),
    max_model_len: int | None = typer.Option(
        None, "--max-model-len", min=2, help="Context length (default min(8192, KV cache))."),
    default_max_tokens: int = typer.Option(256, "--default-max-tokens", min=1,
                                           help="max_tokens of requests that send none."),
    output_tokens_mode: OutputTokensModeOption = typer.Option(
        OutputTokensModeOption.auto, "--output-tokens-mode", case_sensitive=False,
        help="auto: the request's `emulator.output_tokens` / x-emulator-output-tokens, else a lognormal draw; "
        "lognormal: always draw; max-tokens: always generate max_tokens (ignore_eos)."),
    mean_output_tokens: float = typer.Option(200.0, "--mean-output-tokens", parser=finite(min=1.0),
                                             help="Mean of the lognormal output length."),
    seed: int = typer.Option(0, "--seed", help="Seed of output-length and fail-rate draws."),
    fail_rate: float = typer.Option(0.0, "--fail-rate", parser=finite(min=0.0, max=1.0),
                                    help="Fraction of inference requests answered with HTTP 500."),
    max_body_bytes: int = typer.Option(4 * 1024 * 1024, "--max-body-bytes", min=1,
                                       help="Request body limit; larger bodies get 413 (4 MiB)."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn's log level."),
    access_log: bool = typer.Option(False, "--access-log/--no-access-log", help="Log every HTTP request."),
) -> None:
    """Serve emulated vLLM replicas (OpenAI API, Prometheus metrics) until Ctrl-C."""
    from sim.server import EmulatorConfig, build_cost_model

    if port and port + max(replicas, 1) - 1 > 65535:
        typer.echo(f"error: ports {port}..{port + replicas - 1} do not fit below 65536", err=True)
        raise typer.Exit(EXIT_BAD_OPTIONS)
    try:
        cost = build_cost_model(cost_model, kv_tokens=kv_tokens, max_num_seqs=max_num_seqs,
                                max_num_batched_tokens=max_num_batched_tokens,
                                scheduling_policy=scheduling_policy.value)
        config = EmulatorConfig(model=model, cost_model=cost, speedup=speedup, max_model_len=max_model_len,
                                default_max_tokens=default_max_tokens,
                                output_tokens_mode=output_tokens_mode.value,
                                mean_output_tokens=mean_output_tokens, seed=seed, fail_rate=fail_rate,
                                max_body_bytes=max_body_bytes)
    except (ValueError, TypeError, KeyError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_OPTIONS) from None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(config, replicas, host, port, log_level, access_log))


async def _serve(config: EmulatorConfig, replicas: int, host: str, port: int, log_level: str,
                 access_log: bool) -> None:
    """Run until SIGINT/SIGTERM, then stop every replica (aborting what is in flight)."""
    from sim.server import EmulatorServer

    server = EmulatorServer(replicas, host=host, port=port, config=config, log_level=log_level.lower(),
                            access_log=access_log)
    try:
        urls = await server.start()
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    cost = config.cost_model
    typer.echo(
        f"emulating vLLM: model {config.model}, {len(urls)} replica(s), speedup {config.speedup:g}x, "
        f"KV {cost.total_blocks * cost.block_size} tokens, max_num_seqs {cost.max_num_seqs}, "
        f"context {config.context_length}; Ctrl-C to stop", err=True)
    for url in urls:  # stdout carries only the URLs, one per line, for scripts
        typer.echo(url)
    sys.stdout.flush()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        typer.echo("stopping", err=True)
        await server.stop()
