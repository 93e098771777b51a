"""`tokenpools up`: the whole closed loop on one machine, for trying it out.

Starts (or joins, with ``--bootstrap``) a Kafka broker, creates the topics, runs one pipeline worker
(subprocess ``python -m tokenpools.cli streams worker``), the scaler with a ``LocalActuator`` (emulator
replicas in this process, each pool's initial replica count to begin with) and N admitters in this
process. Each admitter has its Kafka parts (``admitter.kafka.parts``: a ``KafkaSink`` spooling under the
data directory, a ``StateFollower`` for limits, the config topic's ``ConfigSync``) and a
``ReplicaDiscovery`` (backends from the scaler's reports), so when the scaler adds or removes
replicas the admitters route to the new fleet. The history process (subprocess ``python -m tokenpools.cli
history sink``: the exactly-once sink into chDB under the data directory, or a ClickHouse server with
``--clickhouse-url``, and its read-only query endpoint with a token generated at start) keeps every
event and state; the admitters ask it for their tenants' ``/v1/usage?granularity=hour|day``.

The loop: admitters -> ``tokenpools.requests`` -> pipeline -> ``tokenpools.pool-state`` -> scaler
-> emulator replicas and ``tokenpools.replicas`` -> pipeline (capacity) and admitters (routing). The
history sink reads ``tokenpools.requests`` and the state topics beside it.

With ``--region NAME`` it also runs the region's global loop (subprocess ``python -m tokenpools.cli streams
regional --region NAME``) beside the pipeline worker, after publishing the config's GlobalEntitlements to
the config topic (if absent, as the worker does for pools and entitlements). ``--regions N`` runs N such
regions on this machine, each on a broker of its own, with MirrorMaker 2 between them
(``tokenpools.cli.up_regions``).

Prints what runs where; ``--ready-file`` also writes it as JSON once everything serves, and
``--duration`` stops after a while (scripts and tests). SIGINT or SIGTERM stops everything cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from tokenpools.cli.options import finite


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """Leaves SIGINT/SIGTERM to ``up`` (uvicorn would take them and stop only itself)."""

        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[no-untyped-def]
            yield

    return Server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_worker(bootstrap: str, config: list[Path], log: Path, web_port: int, metrics_port: int,
                  topic_prefix: str, extra: list[str]) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "tokenpools.cli", "streams", "worker", "--bootstrap", bootstrap,
            *[a for c in config for a in ("--config", str(c))], "--web-port", str(web_port),
            "--metrics-port", str(metrics_port)]
    if topic_prefix:
        args += ["--topic-prefix", topic_prefix]
    with log.open("ab") as out:
        return subprocess.Popen([*args, *extra], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _start_regional(bootstrap: str, region: str, topic_prefix: str, metrics_port: int, log: Path
                    ) -> subprocess.Popen[bytes]:
    """``tokenpools streams regional``: the region's global loop, on this region's Kafka."""
    args = [sys.executable, "-m", "tokenpools.cli", "streams", "regional", "--region", region, "--bootstrap",
            bootstrap, "--metrics-port", str(metrics_port), "--log-level", "info"]
    if topic_prefix:
        args += ["--topic-prefix", topic_prefix]
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _start_history(bootstrap: str, topic_prefix: str, port: int, token: str, store: dict[str, str], log: Path
                   ) -> subprocess.Popen[bytes]:
    """``tokenpools history sink`` on 127.0.0.1:``port``. The token and the store (a chDB directory or a
    server's URL, which may hold a password) go in its environment, not in its argv for ``ps`` to show."""
    args = [sys.executable, "-m", "tokenpools.cli", "history", "sink", "--bootstrap", bootstrap,
            "--port", str(port), "--log-level", "info"]
    if topic_prefix:
        args += ["--topic-prefix", topic_prefix]
    env = {k: v for k, v in os.environ.items() if k not in HISTORY_ENV_DROPPED}
    env.update(store)
    env["TOKENPOOLS_HISTORY_SERVER__TOKEN"] = token
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)


# The history process's own settings from the environment that would fight what ``up`` gives it (the
# store, the port, the token); its other TOKENPOOLS_HISTORY_* settings (retention, sink) still apply.
HISTORY_ENV_DROPPED = frozenset({
    "CLICKHOUSE_URL", "TOKENPOOLS_HISTORY_STORE__URL", "TOKENPOOLS_HISTORY_STORE__DATA_DIR",
    "TOKENPOOLS_HISTORY_SERVER__TOKEN", "TOKENPOOLS_HISTORY_SERVER__TOKEN_FILE", "TOKENPOOLS_HISTORY_SERVER__HOST",
    "TOKENPOOLS_HISTORY_SERVER__PORT",
})
HISTORY_START_S = 120.0  # chDB's first start and the migrations take a few seconds; a loaded machine more


@dataclass
class History:
    """The history process ``up`` started: where to query it and with what token."""

    proc: subprocess.Popen[bytes]
    url: str
    token: str
    log: Path
    store: str

    def ready(self) -> dict[str, Any]:
        return {"url": self.url, "token": self.token, "pid": self.proc.pid, "log": str(self.log), "store": self.store}


async def _wait_healthy(history: History, within: float = HISTORY_START_S) -> None:
    """Until the history process answers ``/healthz`` (it serves once the store is migrated)."""
    import httpx

    deadline = asyncio.get_running_loop().time() + within
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        while True:
            if history.proc.poll() is not None:
                raise RuntimeError(f"the history process exited with code {history.proc.returncode} "
                                   f"(log {history.log}):\n{_tail(history.log)}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{history.url}/healthz")).status_code == 200:
                    return
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"the history process did not answer {history.url}/healthz within {within:g} s "
                                   f"(log {history.log}):\n{_tail(history.log)}")
            await asyncio.sleep(0.2)


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _stop(proc: subprocess.Popen[bytes], within: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``within`` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class UpOptions:
    config: list[Path]
    data_dir: Path
    admitters: int = 2
    port: int = 8080  # first admitter's port, then +1; 0 picks free ports
    speedup: float = 1.0
    bootstrap: str | None = None  # None: start a local broker under data_dir
    topic_prefix: str = ""
    ready_file: Path | None = None
    duration: float | None = None
    report_every: float = 5.0
    worker_args: list[str] = field(default_factory=list)
    history: bool = True
    history_port: int = 0  # 0 picks a free port
    clickhouse_url: str | None = None  # None: chDB under data_dir/history
    region: str | None = None  # run this region's global loop (streams regional) beside the worker


def up(
    config: list[Path] = typer.Option(
        [], "--config", "-c",
        help="Pool and entitlement YAML files or folders (with --regions: the repo's deploy/examples by default)."),
    data_dir: Path = typer.Option(Path(".tokenpools-up"), "--data-dir", help="Kafka data, admitter spools, logs."),
    admitters: int = typer.Option(2, "--admitters", min=1, help="Admitters to start (per region with --regions)."),
    port: int = typer.Option(8080, "--port", "-p", min=0, max=65535,
                             help="First admitter port (then +1, ...; the regions of --regions one after the "
                                  "other); 0 picks free ports."),
    speedup: float = typer.Option(1.0, "--speedup", parser=finite(min=0.001), help="Emulator speed-up factor."),
    bootstrap: str | None = typer.Option(
        None, "--bootstrap", "-b",
        help="Use this Kafka (HOST:PORT[,HOST:PORT]) instead of starting one under --data-dir."),
    topic_prefix: str = typer.Option("", "--topic-prefix", help="Prefix of every topic name and the pipeline app id."),
    ready_file: Path | None = typer.Option(None, "--ready-file",
                                           help="Write what runs where as JSON here once everything serves."),
    duration: float | None = typer.Option(
        None, "--duration", parser=finite(min=0.001), help="Stop after this many seconds."),
    report_every: float = typer.Option(5.0, "--report-every", parser=finite(min=0.1),
                                       help="Seconds between the scaler's periodic replica reports."),
    worker_arg: list[str] = typer.Option(
        [], "--worker-arg", help="Extra option for the pipeline worker, e.g. --worker-arg=--tumbling-seconds=1."),
    history: bool | None = typer.Option(
        None, "--history/--no-history",
        help="Run the history process (the sink into ClickHouse and its query endpoint); by default on, except "
             "with --regions (one per region would cost the machine's CPU)."),
    history_port: int = typer.Option(0, "--history-port", min=0, max=65535,
                                     help="Port of the history endpoint on 127.0.0.1; 0 picks a free one."),
    clickhouse_url: str | None = typer.Option(
        None, "--clickhouse-url",
        help="Keep the history in this ClickHouse server (http(s)://user:password@host:port/database) instead of "
             "chDB under --data-dir/history."),
    region: str | None = typer.Option(
        None, "--region",
        help="This stack is region NAME: also run its global loop (streams regional) beside the pipeline. Its "
             "peers' summaries must reach its Kafka (MirrorMaker 2; --regions runs that too)."),
    regions: int | None = typer.Option(
        None, "--regions", min=1,
        help="Run this many regions locally (us-east, eu-west, ap-south, ...), each with a broker, pipeline, "
             "global loop, scaler, emulator replicas and admitters, and MirrorMaker 2 between their brokers."),
    log_level: str = typer.Option("warning", "--log-level", help="Python log level of this process."),
) -> None:
    """Run Kafka, the pipeline, the scaler with emulator replicas and admitters locally until Ctrl-C."""
    import logging

    from schemas.loader import ConfigError, load_config

    # Named, so a client library's transient complaint (aiokafka right after topics are created) says whose it is.
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if regions is not None:
        from tokenpools.cli import up_regions

        for given, flag in ((bootstrap, "--bootstrap"), (region, "--region"), (clickhouse_url, "--clickhouse-url")):
            if given:
                typer.echo(f"error: --regions starts a broker per region and names them: {flag} does not apply",
                           err=True)
                raise typer.Exit(2)
        raise typer.Exit(up_regions.main(up_regions.RegionsOptions(
            count=regions, config=[c.resolve() for c in config] or [up_regions.EXAMPLES],
            data_dir=data_dir.resolve(), admitters=admitters, port=port, speedup=speedup, topic_prefix=topic_prefix,
            ready_file=ready_file, duration=duration, report_every=report_every, worker_args=list(worker_arg),
            history=bool(history), log_level=log_level)))
    if not config:
        typer.echo("error: missing option '--config' (pool and entitlement YAML files or folders)", err=True)
        raise typer.Exit(2)
    try:
        platform = load_config(*config)
    except ConfigError as exc:
        typer.echo(f"invalid config:\n{exc}", err=True)
        raise typer.Exit(2) from exc
    if not platform.pools:
        typer.echo("error: the config has no TokenPool: nothing to serve", err=True)
        raise typer.Exit(2)
    if region is not None and not any(p.spec.region == region for p in platform.pools.values()):
        here = ", ".join(sorted({p.spec.region for p in platform.pools.values()}))
        typer.echo(f"error: --region {region}: no pool of the config is in that region (they are in {here})",
                   err=True)
        raise typer.Exit(2)
    if port and port + admitters - 1 > 65535:
        typer.echo(f"error: --port {port} leaves no room for {admitters} admitters", err=True)
        raise typer.Exit(2)
    data_dir.mkdir(parents=True, exist_ok=True)
    options = UpOptions([c.resolve() for c in config], data_dir.resolve(), admitters, port, speedup, bootstrap,
                        topic_prefix, ready_file, duration, report_every, list(worker_arg),
                        True if history is None else history, history_port, clickhouse_url, region)
    asyncio.run(run_up(options, platform))


def _echo(what: str, detail: str) -> None:
    typer.echo(f"{what:<10} {detail}")


async def run_up(opts: UpOptions, platform: Any, stop: asyncio.Event | None = None) -> None:
    """Everything ``tokenpools up`` runs, until ``stop`` is set, a signal arrives or ``duration`` passes."""
    import uvicorn
    from pydantic import SecretStr

    from admitter.http.app import create_app
    from admitter.http.server import uvicorn_config
    from admitter.settings import AdmitterSettings
    from scaler.local import LocalActuator
    from scaler.loop import ScalerLoop
    from schemas.topics import Topics
    from sim.server import EmulatorServer
    from streams.topics import create_topics
    from tokenpools.infra.kafka_local import LocalKafka

    _Server = _server_class()
    if stop is None:
        stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if opts.duration is not None:
        loop.call_later(opts.duration, stop.set)

    kafka: LocalKafka | None = None
    if opts.bootstrap is None:
        kafka = LocalKafka(opts.data_dir / "kafka")
        await kafka.astart()
        bootstrap = kafka.bootstrap_servers
    else:
        bootstrap = opts.bootstrap
    worker: subprocess.Popen[bytes] | None = None
    regional: subprocess.Popen[bytes] | None = None
    regional_metrics = 0
    history: History | None = None
    pools = platform.pools
    actuator = LocalActuator(
        {name: max(1, p.spec.replicas.start) for name, p in pools.items()},
        server_factory=lambda name: EmulatorServer(0, model=pools[name].spec.model, speedup=opts.speedup),
        on_change=lambda name, urls: _echo("scaler", f"pool {name}: {len(urls)} replicas {' '.join(urls)}"),
    )
    scaler_task: asyncio.Task[None] | None = None
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []
    try:
        specs = Topics(opts.topic_prefix).specs()
        await create_topics(bootstrap, specs)
        await _wait_for_leaders(bootstrap, [s.name for s in specs])
        _echo("kafka", f"{bootstrap}{' (started here)' if kafka else ''}"
              f"{f', topic prefix {opts.topic_prefix!r}' if opts.topic_prefix else ''}")
        web_port, metrics_port = _free_port(), _free_port()
        worker_log = opts.data_dir / "streams-worker.log"
        worker = _start_worker(bootstrap, opts.config, worker_log, web_port, metrics_port, opts.topic_prefix,
                               opts.worker_args)
        _echo("pipeline", f"pid {worker.pid}, status http://127.0.0.1:{web_port}/streams/status, "
                          f"metrics http://127.0.0.1:{metrics_port}/metrics (log {worker_log})")
        if opts.region is not None:
            regional_metrics = _free_port()
            regional_log = opts.data_dir / "regional.log"
            published = await _seed_globals(bootstrap, opts.topic_prefix, platform)
            regional = _start_regional(bootstrap, opts.region, opts.topic_prefix, regional_metrics, regional_log)
            _echo("regional", f"region {opts.region}: global loop pid {regional.pid}, metrics "
                              f"http://127.0.0.1:{regional_metrics}/metrics (log {regional_log}); "
                              f"{len(platform.global_entitlements)} GlobalEntitlement(s) in the config, "
                              f"{len(published)} published to the config topic")
        if opts.history:
            history = _launch_history(opts, bootstrap)  # its /healthz is awaited below, once the rest is starting

        _echo("scaler", f"in this process, pools {', '.join(sorted(pools))}; emulator replicas (here too):")
        await actuator.start()  # on_change prints each pool's replicas, now and whenever the scaler changes them
        scaler = ScalerLoop(pools, actuator)
        scaler_task = asyncio.create_task(
            scaler.run_kafka(bootstrap, opts.topic_prefix, report_every=opts.report_every), name="scaler")
        # Admitters read the replicas topic from the beginning: let the first reports of this run land
        # there first, so they never route to the replicas of an earlier run.
        await _first_of(scaler.reported.wait(), scaler_task)

        if history is not None:
            await _wait_healthy(history)
            _echo("history", f"pid {history.proc.pid}, {history.url} (store {history.store}, log {history.log})")
            _echo("history", f"token {history.token}")
            _echo("history", f"query: tokenpools history query --endpoint {history.url} --token {history.token} "
                             "'SELECT tenant, count() FROM request_events GROUP BY tenant'")
        # The admitters ask the history endpoint for their tenants' /v1/usage?granularity=hour|day (what
        # TOKENPOOLS_ADMITTER_HISTORY_URL / _TOKEN set for `tokenpools admitter`).
        history_url = history.url if history is not None else None
        history_token = SecretStr(history.token) if history is not None else None

        # One admin token for this run's admitters, made here like the history's: /metrics (it names tenants
        # and their limits) and /admin need it, so a local Prometheus can scrape with it.
        admin_token = secrets.token_urlsafe(24)
        admin_digest = hashlib.sha256(admin_token.encode()).hexdigest()
        _echo("admitter", f"admin token {admin_token} (for /metrics and /admin)")
        admitter_urls: list[str] = []
        for i in range(opts.admitters):
            admitter_id = f"admitter-{i + 1}"
            # With settings.kafka, create_app wires the admitter's Kafka parts (admitter.kafka.parts): a KafkaSink
            # spooling under the data directory, a StateFollower, the config topic's ConfigSync and (discover)
            # the replicas topic's ReplicaDiscovery.
            settings = AdmitterSettings(config_paths=opts.config, port=opts.port + i if opts.port else _free_port(),
                                        admitter_id=admitter_id, backends={name: actuator.urls(name) for name in pools},
                                        kafka={"bootstrap": bootstrap, "prefix": opts.topic_prefix},
                                        spool_dir=opts.data_dir / "spool" / admitter_id,
                                        expected_admitters=opts.admitters, discover=True,
                                        history_url=history_url, history_token=history_token,
                                        admin_key_sha256=admin_digest)
            app = create_app(settings, platform)
            server = _Server(uvicorn_config(app, settings))  # the same server setup as `tokenpools admitter`
            task = asyncio.create_task(server.serve(), name=admitter_id)
            servers.append((server, task))
            while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn sets a flag, no event
                await asyncio.sleep(0.05)
            if task.done():
                task.result()
                raise RuntimeError(f"{admitter_id} did not start on port {settings.port}")
            url = f"http://{settings.host}:{settings.port}"
            admitter_urls.append(url)
            _echo("admitter", f"{admitter_id}: {url}")
        if opts.ready_file is not None:
            _write_json(opts.ready_file, {
                "bootstrap": bootstrap, "topic_prefix": opts.topic_prefix, "admitters": admitter_urls,
                "admin_token": admin_token,
                "pipeline": {"pid": worker.pid, "web_port": web_port, "log": str(worker_log),
                             "metrics_url": f"http://127.0.0.1:{metrics_port}/metrics"},
                "replicas": {name: actuator.urls(name) for name in pools}, "pid": os.getpid(),
                "history": history.ready() if history is not None else None,
                "region": opts.region,
                "regional": None if regional is None else {
                    "pid": regional.pid, "log": str(opts.data_dir / "regional.log"),
                    "metrics_url": f"http://127.0.0.1:{regional_metrics}/metrics"},
            })
        typer.echo("ready; Ctrl-C stops everything"
                   + (f" (or {opts.duration:g} s after start)" if opts.duration is not None else ""))
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, scaler_task, *(t for _, t in servers)}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        for task in (scaler_task, *(t for _, t in servers)):
            if task.done() and not stop.is_set():
                task.result()  # a part died: say why
                raise RuntimeError(f"{task.get_name()} stopped unexpectedly")
        typer.echo("stopping")
    finally:
        for server, _ in servers:
            server.should_exit = True
        for _, task in servers:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        if scaler_task is not None:
            scaler_task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await scaler_task
        await actuator.close()
        if regional is not None:
            await asyncio.to_thread(_stop, regional)
        if worker is not None:
            await asyncio.to_thread(_stop, worker)
        if history is not None:  # after the admitters: it keeps reading what they flushed until here
            await asyncio.to_thread(_stop, history.proc)
        if kafka is not None:
            await kafka.astop()
        typer.echo("stopped")


async def _seed_globals(bootstrap: str, topic_prefix: str, platform: Any) -> list[str]:
    """The config's GlobalEntitlements onto the config topic, each only if absent (the worker does the same for
    pools and entitlements): the global loop reads them there."""
    from schemas.topics import Topics
    from streams.config_table import seed_config

    globs = list(platform.global_entitlements.values())
    return await seed_config(bootstrap, Topics(topic_prefix).config, globs) if globs else []


async def _wait_for_leaders(bootstrap: str, names: list[str], within: float = 30.0) -> None:
    """New topics have no partition leader for a moment; clients started then log errors until they do."""
    from aiokafka.admin import AIOKafkaAdminClient

    from tokenpools.kafka.connection import connection

    admin = AIOKafkaAdminClient(**connection(bootstrap), client_id="tokenpools-up")
    await admin.start()
    try:
        async with asyncio.timeout(within):
            while True:
                described = await admin.describe_topics(names)
                if all(t.get("error_code", 0) == 0 and t.get("partitions")
                       and all(p.get("leader", -1) >= 0 for p in t["partitions"]) for t in described):
                    return
                await asyncio.sleep(0.2)
    except TimeoutError:
        typer.echo(f"warning: topics still without a leader after {within:g} s; going on", err=True)
    finally:
        await admin.close()


async def _first_of(awaitable: Any, task: asyncio.Task[None]) -> None:
    """Wait for ``awaitable``, unless ``task`` ends first (then raise what ended it)."""
    waiter = asyncio.ensure_future(awaitable)
    await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    if not waiter.done():
        waiter.cancel()
        task.result()
        raise RuntimeError(f"{task.get_name()} stopped before it was ready")


def _launch_history(opts: UpOptions, bootstrap: str) -> History:
    """Start the history process: chDB under ``data_dir/history`` (or ``--clickhouse-url``), a fresh token."""
    if opts.clickhouse_url:
        store, where = {"TOKENPOOLS_HISTORY_STORE__URL": opts.clickhouse_url}, "a ClickHouse server (--clickhouse-url)"
    else:
        chdb = opts.data_dir / "history" / "chdb"
        store, where = {"TOKENPOOLS_HISTORY_STORE__DATA_DIR": str(chdb)}, f"chDB {chdb}"
    port = opts.history_port or _free_port()
    token = secrets.token_urlsafe(24)
    log = opts.data_dir / "history.log"
    proc = _start_history(bootstrap, opts.topic_prefix, port, token, store, log)
    return History(proc, f"http://127.0.0.1:{port}", token, log, where)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Written whole then renamed, so a reader polling for the file never sees half of it. Owner-only
    (0600): it holds the history endpoint's token."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
