"""`tokenpools admitter`: the edge gateway (OpenAI API in front of the pools' replicas) under uvicorn.

Heavy imports (FastAPI, httpx, the capacity model) happen inside the command so other subcommands
start quickly.
"""

from __future__ import annotations

from pathlib import Path

import typer

EXIT_BAD_OPTIONS = 2


def admitter(
    config: list[Path] = typer.Option(..., "--config", "-c", help="Pool and entitlement YAML files or folders."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8080, "--port", "-p", min=0, max=65535, help="Port to listen on."),
    backend: list[str] = typer.Option(
        [], "--backend", "-b",
        help="POOL=URL[,URL...] replicas of a pool (repeatable); overrides the pool's spec.backends."),
    passthrough: bool = typer.Option(False, "--passthrough",
                                     help="Admit everything (still authenticate, route and emit events): a baseline."),
    admin_key_sha256: str | None = typer.Option(
        None, "--admin-key-sha256", envvar="TOKENPOOLS_ADMIN_KEY_SHA256",
        help="SHA-256 (hex) of the admin bearer token; without it /admin answers 401."),
    admitter_id: str | None = typer.Option(None, "--admitter-id",
                                           help="This admitter's id in events (default host-pid)."),
    max_body_bytes: int | None = typer.Option(None, "--max-body-bytes", min=1, help="Request body limit (1 MiB)."),
    read_timeout: float | None = typer.Option(None, "--read-timeout", min=0.001,
                                              help="Longest silence from a replica, seconds (300)."),
    public_metrics: bool = typer.Option(False, "--public-metrics",
                                        help="Serve /metrics without the admin token."),
    upstream_client: str | None = typer.Option(
        None, "--upstream-client", help="Replica client: httpx (default) or aiohttp (less CPU per request)."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn's log level."),
    access_log: bool = typer.Option(False, "--access-log/--no-access-log", help="Log every HTTP request."),
) -> None:
    """Run the admitter until Ctrl-C."""
    import uvicorn
    from pydantic import ValidationError

    from admitter.app import create_app
    from admitter.settings import AdmitterSettings, parse_backend_options
    from schemas.loader import ConfigError, load_config

    try:
        settings = AdmitterSettings.from_env(
            config_paths=config, host=host, port=port, backends=parse_backend_options(backend),
            passthrough=passthrough or None, admin_key_sha256=admin_key_sha256.lower() if admin_key_sha256 else None,
            admitter_id=admitter_id, max_body_bytes=max_body_bytes, read_timeout=read_timeout,
            public_metrics=public_metrics or None, upstream_client=upstream_client,
        )
    except (ValueError, ValidationError) as exc:
        for line in str(exc).splitlines():
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(EXIT_BAD_OPTIONS) from None
    try:
        platform = load_config(*settings.config_paths)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(EXIT_BAD_OPTIONS) from None
    unknown = sorted(set(settings.backends) - set(platform.pools))
    if unknown:
        typer.echo(f"error: --backend names unknown pool(s) {', '.join(unknown)} "
                   f"(known: {', '.join(sorted(platform.pools)) or 'none'})", err=True)
        raise typer.Exit(EXIT_BAD_OPTIONS)
    app = create_app(settings, platform)
    typer.echo(f"admitter {settings.admitter_id} on http://{settings.host}:{settings.port} "
               f"({len(platform.pools)} pool(s), {len(platform.entitlements)} entitlement(s)"
               f"{', pass-through' if settings.passthrough else ''})", err=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, access_log=access_log,
                lifespan="on")
