"""`tokenpools admitter`: the edge gateway (OpenAI API in front of the pools' replicas) under uvicorn.

Without ``--kafka`` it is standalone: the YAML config, limits from an in-process allocator, events
kept in memory. With ``--kafka`` it joins the control plane: events go to ``tokenpools.requests``
through a durable spool, limits come from the pipeline's state topics, and pools and entitlements
from the compacted ``tokenpools.config`` topic (the YAML only seeds documents the topic lacks, and is
served alone while Kafka is unreachable at start); admin writes go to that topic.

Heavy imports (FastAPI, httpx, the capacity model) happen inside the command so other subcommands
start quickly.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from tokenpools.cli.options import EXIT_BAD_OPTIONS, build_settings, finite, given

# Option (parameter name) -> AdmitterSettings field; options not given come from TOKENPOOLS_* or the defaults.
FIELDS = {
    "config": "config_paths", "host": "host", "port": "port", "backend": "backends", "passthrough": "passthrough",
    "admin_key_sha256": "admin_key_sha256", "admitter_id": "admitter_id", "max_body_bytes": "max_body_bytes",
    "header_timeout": "header_timeout_seconds", "body_idle_timeout": "body_idle_timeout_seconds",
    "body_timeout": "body_timeout_seconds", "max_unauthenticated_connections": "max_unauthenticated_connections",
    "read_timeout": "read_timeout", "public_metrics": "public_metrics", "upstream_client": "upstream_client",
    "kafka": "kafka.bootstrap", "topic_prefix": "kafka.prefix", "spool_dir": "spool_dir",
    "expected_admitters": "expected_admitters", "config_wait": "config_wait_seconds", "discover": "discover",
    "log_level": "log_level", "access_log": "access_log", "history_url": "history_url",
    "history_timeout": "history_timeout_seconds",
}


def admitter(
    ctx: typer.Context,
    config: list[Path] = typer.Option(
        [], "--config", "-c",
        help="Pool and entitlement YAML files or folders (required without --kafka; with it, documents absent "
             "from the config topic are published there, and the YAML is served while Kafka is unreachable)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8080, "--port", "-p", min=0, max=65535, help="Port to listen on."),
    backend: list[str] = typer.Option(
        [], "--backend", "-b",
        help="POOL=URL[,URL...] replicas of a pool (repeatable); overrides the pool's spec.backends."),
    passthrough: bool = typer.Option(False, "--passthrough",
                                     help="Admit everything (still authenticate, route and emit events): a baseline."),
    admin_key_sha256: str | None = typer.Option(
        None, "--admin-key-sha256",
        help="SHA-256 (hex) of the admin bearer token; without it /admin answers 401 "
             "(default $TOKENPOOLS_ADMIN_KEY_SHA256)."),
    admitter_id: str | None = typer.Option(None, "--admitter-id",
                                           help="This admitter's id in events (default host-pid)."),
    max_body_bytes: int | None = typer.Option(None, "--max-body-bytes", min=1, help="Request body limit (1 MiB)."),
    header_timeout: float | None = typer.Option(
        None, "--header-timeout", parser=finite(min=0.001),
        help="Seconds a client has to send a complete request head before its connection is closed (10)."),
    body_idle_timeout: float | None = typer.Option(
        None, "--body-idle-timeout", parser=finite(min=0.001),
        help="Longest silence while a request body is sent, seconds; then 408 and close (10)."),
    body_timeout: float | None = typer.Option(
        None, "--body-timeout", parser=finite(min=0.001),
        help="Seconds from a request's head to the end of its body; then 408 and close (60)."),
    max_unauthenticated_connections: int | None = typer.Option(
        None, "--max-unauthenticated-connections", min=1,
        help="Connections still sending their request; over this the oldest is dropped (1024)."),
    read_timeout: float | None = typer.Option(None, "--read-timeout", parser=finite(min=0.001),
                                              help="Longest silence from a replica, seconds (300)."),
    public_metrics: bool = typer.Option(False, "--public-metrics",
                                        help="Serve /metrics without the admin token."),
    upstream_client: str | None = typer.Option(
        None, "--upstream-client", help="Replica client: httpx (default) or aiohttp (less CPU per request)."),
    kafka: str | None = typer.Option(
        None, "--kafka",
        help="Kafka bootstrap HOST:PORT[,HOST:PORT] (default $TOKENPOOLS_KAFKA_BOOTSTRAP or "
             "$KAFKA_BOOTSTRAP_SERVERS; security options from $TOKENPOOLS_KAFKA_*): events to "
             "tokenpools.requests, limits from the pipeline, config from and admin writes to tokenpools.config."),
    topic_prefix: str = typer.Option("", "--topic-prefix", help="Prefix of every topic name (with --kafka)."),
    spool_dir: Path | None = typer.Option(
        None, "--spool-dir",
        help="Durable event spool (with --kafka); default $XDG_STATE_HOME/tokenpools/admitter/<admitter-id>/spool "
             "(~/.local/state without XDG_STATE_HOME). A restart replays what the spool holds, so keep the "
             "directory (or --admitter-id) stable."),
    expected_admitters: int = typer.Option(
        1, "--expected-admitters", min=1,
        help="Admitters sharing the pools (with --kafka): each enforces 1/N of a limit whose state lists no "
             "admitter yet. Set it to the number you run, or a cold pool can admit more than its limit."),
    config_wait: float = typer.Option(
        10.0, "--config-wait", parser=finite(min=0),
        help="Seconds to wait at start for the config topic before serving the YAML (with --kafka)."),
    discover: bool = typer.Option(
        False, "--discover/--no-discover",
        help="Route to the replicas the scaler reports on tokenpools.replicas (with --kafka; needs a scaler whose "
             "actuator publishes endpoints, e.g. `tokenpools scaler`); --backend is used until a report arrives."),
    history_url: str | None = typer.Option(
        None, "--history-url",
        help="Base URL of the history process's HTTP endpoint, for tenants' usage history on "
             "/v1/usage?granularity=hour|day (default $TOKENPOOLS_ADMITTER_HISTORY_URL; its bearer token only from "
             "$TOKENPOOLS_ADMITTER_HISTORY_TOKEN, never on the command line)."),
    history_timeout: float | None = typer.Option(
        None, "--history-timeout", parser=finite(min=0.001),
        help="Longest wait for the history endpoint, seconds; then /v1/usage answers 503 (5)."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn's log level."),
    access_log: bool = typer.Option(False, "--access-log/--no-access-log", help="Log every HTTP request."),
) -> None:
    """Run the admitter until Ctrl-C (standalone, or with --kafka as part of the control plane).

    Every option can also be set in the environment (``TOKENPOOLS_<SETTING>``, see admitter/settings.py);
    an option on the command line wins.
    """
    import uvicorn

    from admitter.http.app import create_app
    from admitter.http.server import uvicorn_options
    from admitter.settings import AdmitterCommandSettings, default_spool_dir, parse_backend_options
    from schemas.loader import ConfigError, PlatformConfig, load_config
    from schemas.topics import Topics

    values = given(ctx, FIELDS)
    try:
        if "backends" in values:
            values["backends"] = parse_backend_options(values["backends"])
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_OPTIONS) from None
    settings = build_settings(AdmitterCommandSettings, values)
    if settings.kafka is not None:
        spool = settings.spool_dir or default_spool_dir(settings.admitter_id)
        problem = _unusable_dir(spool)
        if problem:
            typer.echo(f"error: --spool-dir {spool}: {problem}", err=True)
            raise typer.Exit(EXIT_BAD_OPTIONS)
        settings = settings.model_copy(update={"spool_dir": spool})
    try:
        platform = load_config(*settings.config_paths) if settings.config_paths else PlatformConfig()
    except ConfigError as exc:
        for config_problem in exc.problems:
            typer.echo(f"error: {config_problem}", err=True)
        raise typer.Exit(EXIT_BAD_OPTIONS) from None
    # With Kafka, pools may come from the config topic later: a --backend for one of those is fine.
    # (Not a validator of the settings: it needs the loaded config.)
    unknown = sorted(set(settings.backends) - set(platform.pools))
    if unknown and settings.kafka is None:
        typer.echo(f"error: --backend names unknown pool(s) {', '.join(unknown)} "
                   f"(known: {', '.join(sorted(platform.pools)) or 'none'})", err=True)
        raise typer.Exit(EXIT_BAD_OPTIONS)
    app = create_app(settings, platform)  # with --kafka and --discover, its parts include replica discovery
    typer.echo(f"admitter {settings.admitter_id} on http://{settings.host}:{settings.port} "
               f"({len(platform.pools)} pool(s), {len(platform.entitlements)} entitlement(s)"
               f"{', pass-through' if settings.passthrough else ''})", err=True)
    if settings.kafka is not None:
        topics = Topics(settings.kafka.prefix)
        typer.echo(f"kafka {settings.kafka.bootstrap}, topic prefix {settings.kafka.prefix!r}, spool "
                   f"{settings.spool_dir}, expecting {settings.expected_admitters} admitter(s); config from "
                   f"{topics.config}{f', replicas from {topics.replicas}' if settings.discover else ''}", err=True)
    uvicorn.run(app, **uvicorn_options(app, settings, log_level=settings.log_level, access_log=settings.access_log))


def _unusable_dir(path: Path) -> str | None:
    """Why the spool cannot live at ``path`` (created if missing), or None."""
    if path.exists() and not path.is_dir():
        return "exists and is not a directory"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create it ({exc.strerror or exc})"
    if not os.access(path, os.W_OK | os.X_OK):
        return "is not writable"
    return None
