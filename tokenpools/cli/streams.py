"""`tokenpools streams worker`: one worker of the metering pipeline (Faust).

Run several with the same ``--app-id`` (and distinct ``--web-port``) to share the partitions. Faust
and the pipeline are imported inside the command so other subcommands start quickly.
"""

from __future__ import annotations

from pathlib import Path

import typer

from tokenpools.cli.options import EXIT_BAD_OPTIONS, build_settings, finite, given

app = typer.Typer(help="The metering pipeline: windows, debt and limits from request events (Faust).",
                  no_args_is_help=True)

# Option (parameter name) -> PipelineSettings field; options not given come from TOKENPOOLS_STREAMS_*,
# TOKENPOOLS_KAFKA_* / KAFKA_BOOTSTRAP_SERVERS, or the defaults.
FIELDS = {
    "bootstrap": "kafka.bootstrap", "topic_prefix": "kafka.prefix", "web_port": "web_port",
    "metrics_port": "metrics_port", "metrics_host": "metrics_host", "app_id": "app_id", "partitions": "partitions",
    "tumbling": "windows.tumbling_s", "resolution": "windows.resolution_s", "hop_size": "windows.hop_size_s",
    "hop_step": "windows.hop_step_s", "grace": "windows.grace_s", "summary_interval": "summary_interval_s",
    "change_check": "change_check_s", "change_threshold": "change_threshold", "min_tick_gap": "min_tick_gap_s",
    "dedup_horizon": "dedup_horizon_s", "admitter_horizon": "admitter_horizon_s",
    "commit_interval": "commit_interval_s", "session_timeout": "session_timeout_s",
    "processing_guarantee": "processing_guarantee", "log_level": "log_level", "data_dir": "data_dir",
}


@app.command("worker")
def worker(
    ctx: typer.Context,
    bootstrap: str | None = typer.Option(
        None, "--bootstrap", "-b",
        help="Kafka bootstrap servers HOST:PORT[,HOST:PORT] (default $TOKENPOOLS_KAFKA_BOOTSTRAP, "
             "$KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092; security options from $TOKENPOOLS_KAFKA_*)."),
    config: list[Path] = typer.Option(
        [], "--config", "-c", help="Pool/entitlement YAML files or folders to publish to the config topic if absent."),
    web_port: int = typer.Option(6066, "--web-port", min=1, max=65535,
                                 help="Faust web port on 127.0.0.1 (/metrics, /streams/status); one per worker."),
    metrics_port: int | None = typer.Option(None, "--metrics-port", min=1, max=65535,
                                            help="Also serve Prometheus metrics at this port (on --metrics-host)."),
    metrics_host: str | None = typer.Option(None, "--metrics-host",
                                            help="Address --metrics-port binds (127.0.0.1; 0.0.0.0 in a pod)."),
    app_id: str = typer.Option("tokenpools-streams", "--app-id", help="Faust app id (group) shared by workers."),
    topic_prefix: str = typer.Option("", "--topic-prefix", help="Prefix of every topic name and of the app id."),
    partitions: int = typer.Option(6, "--partitions", min=1, help="Partitions of topics this worker creates."),
    tumbling: float = typer.Option(
        10.0, "--tumbling-seconds", parser=finite(above=0),
        help="The allocator's averaging window: its trailing rate feeds every tick (closed windows are reported)."),
    resolution: float | None = typer.Option(
        None, "--resolution-seconds", parser=finite(above=0),
        help="Bucket size of the trailing window (default: a tenth of it)."),
    hop_size: float = typer.Option(60.0, "--hop-size-seconds", parser=finite(above=0), help="Hopping window size."),
    hop_step: float = typer.Option(10.0, "--hop-step-seconds", parser=finite(above=0), help="Hopping window step."),
    grace: float = typer.Option(
        1.0, "--grace-seconds", parser=finite(min=0),
        help="A window closes this long after its end."),
    summary_interval: float = typer.Option(1.0, "--summary-interval", parser=finite(above=0),
                                           help="Period of every record's summary, seconds."),
    change_check: float = typer.Option(
        0.1, "--change-check-seconds", parser=finite(min=0),
        help="How often stage 1 sends the summaries whose trailing demand moved (0: only every summary interval)."),
    change_threshold: float = typer.Option(
        0.1, "--change-threshold", parser=finite(min=0),
        help="Relative change of a trailing demand that sends a summary and ticks early."),
    min_tick_gap: float = typer.Option(
        0.25, "--min-tick-gap-seconds", parser=finite(min=0),
        help="Soonest an early tick follows the pool's previous tick, seconds."),
    dedup_horizon: float = typer.Option(
        600.0, "--dedup-horizon", parser=finite(above=0),
        help="How long event ids are remembered, seconds."),
    admitter_horizon: float = typer.Option(
        60.0, "--admitter-horizon", parser=finite(above=0),
        help="How long an admitter stays listed in a pool's state records after its last event, seconds "
             "(an idle one keeps the split's floor; one not listed enforces nothing)."),
    commit_interval: float = typer.Option(
        1.0, "--commit-interval", parser=finite(above=0),
        help="Offset commit period, seconds."),
    session_timeout: float = typer.Option(10.0, "--session-timeout", parser=finite(above=0),
                                          help="Consumer group session timeout, seconds (a dead worker's partitions "
                                               "move after this long)."),
    processing_guarantee: str = typer.Option(
        "at_least_once", "--processing-guarantee",
        help="at_least_once (default; exact through offset and id dedup) or exactly_once (experimental)."),
    log_level: str = typer.Option("info", "--log-level", help="crit, error, warn, info or debug."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Faust's data directory (default $XDG_STATE_HOME/tokenpools/streams/<app id>)."),
) -> None:
    """Run one pipeline worker until Ctrl-C.

    Every setting can also be set in the environment (``TOKENPOOLS_STREAMS_<SETTING>``, see
    streams/settings.py); an option on the command line wins.
    """
    from schemas.loader import ConfigError
    from streams.settings import PipelineSettings
    from streams.worker import run_worker

    values = given(ctx, FIELDS)
    if values.get("data_dir") is not None:
        values["data_dir"] = str(values["data_dir"])
    settings = build_settings(PipelineSettings, values)
    try:
        run_worker(settings, config)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(EXIT_BAD_OPTIONS) from None


# Option (parameter name) -> RegionalSettings field; the rest from TOKENPOOLS_REGIONAL_*, TOKENPOOLS_KAFKA_*.
REGIONAL_FIELDS = {
    "region": "region", "bootstrap": "kafka.bootstrap", "topic_prefix": "kafka.prefix",
    "metrics_port": "metrics_port", "metrics_host": "metrics_host", "log_level": "log_level",
}


@app.command("regional")
def regional(
    ctx: typer.Context,
    region: str | None = typer.Option(
        None, "--region", help="This region's name, an RFC 1123 name: its pools' spec.region, and MirrorMaker's "
                               "alias of its cluster (default $TOKENPOOLS_REGIONAL_REGION)."),
    bootstrap: str | None = typer.Option(
        None, "--bootstrap", "-b",
        help="This region's Kafka, HOST:PORT[,HOST:PORT] (default $TOKENPOOLS_KAFKA_BOOTSTRAP, "
             "$KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092; security options from $TOKENPOOLS_KAFKA_*)."),
    topic_prefix: str | None = typer.Option(None, "--topic-prefix", help="Prefix of every topic name."),
    metrics_port: int | None = typer.Option(None, "--metrics-port", min=1, max=65535,
                                            help="Serve Prometheus metrics at this port (on --metrics-host)."),
    metrics_host: str | None = typer.Option(None, "--metrics-host",
                                            help="Address --metrics-port binds (127.0.0.1; 0.0.0.0 in a pod)."),
    log_level: str | None = typer.Option(None, "--log-level", help="critical, error, warning, info or debug."),
) -> None:
    """Run the region's global loop until Ctrl-C: split every GlobalEntitlement listing --region into
    regional shares, from the summaries of every region (its own, and the peers' that MirrorMaker 2
    copies here), and write this region's share as a regional Entitlement to the config topic.

    Every setting can also be set in the environment (``TOKENPOOLS_REGIONAL_<SETTING>``, see
    streams/regional/settings.py); an option on the command line wins.
    """
    from streams.regional.service import MetricsUnavailable, run_regional
    from streams.regional.settings import RegionalSettings

    settings = build_settings(RegionalSettings, given(ctx, REGIONAL_FIELDS))
    try:
        run_regional(settings)
    except MetricsUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_OPTIONS) from None
