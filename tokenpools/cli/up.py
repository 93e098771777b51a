"""`tokenpools up`: the whole control plane on one machine, for trying it out.

Starts a local Kafka (``tokenpools.infra.kafka_local``), creates the topics, one pipeline worker
(subprocess ``python -m tokenpools.cli streams worker``), emulator replicas for every pool (the
pool's initial replica count) and two admitters in this process, each wired with a ``KafkaSink``
(spool under the data directory) and a ``StateFollower``. Prints the URLs; Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
from pathlib import Path

import typer


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


def _start_worker(bootstrap: str, config: list[Path], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tokenpools.cli", "streams", "worker", "--bootstrap", bootstrap,
             *[a for c in config for a in ("--config", str(c))], "--web-port", str(_free_port())],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def up(
    config: list[Path] = typer.Option(..., "--config", "-c", help="Pool and entitlement YAML files or folders."),
    data_dir: Path = typer.Option(Path(".tokenpools-up"), "--data-dir", help="Kafka data and admitter spools."),
    admitters: int = typer.Option(2, "--admitters", min=1, help="Admitters to start."),
    port: int = typer.Option(8080, "--port", "-p", min=0, max=65535, help="First admitter port (then +1, ...)."),
    speedup: float = typer.Option(1.0, "--speedup", help="Emulator speed-up factor."),
) -> None:
    """Run Kafka, the pipeline, emulators and admitters locally until Ctrl-C."""
    from schemas.loader import ConfigError, load_config

    try:
        platform = load_config(*config)
    except ConfigError as exc:
        typer.echo(f"invalid config:\n{exc}", err=True)
        raise typer.Exit(2) from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(_up(config, platform, data_dir.resolve(), admitters, port, speedup))


async def _up(config: list[Path], platform, data_dir: Path, n_admitters: int, port: int, speedup: float) -> None:
    import uvicorn

    from admitter.app import create_app
    from admitter.follower import StateFollower
    from admitter.kafka_sink import KafkaSink
    from admitter.settings import AdmitterSettings
    from sim.server import EmulatorServer
    from streams.topics import create_topics, topic_specs
    from tokenpools.infra.kafka_local import LocalKafka

    _Server = _server_class()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)

    kafka = LocalKafka(data_dir / "kafka")
    await kafka.astart()
    bootstrap = kafka.bootstrap_servers
    worker: subprocess.Popen[bytes] | None = None
    emulators: list[EmulatorServer] = []
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []
    try:
        await create_topics(bootstrap, topic_specs())
        typer.echo(f"kafka      {bootstrap}")
        worker = _start_worker(bootstrap, config, data_dir / "streams-worker.log")
        typer.echo(f"pipeline   pid {worker.pid} (log {data_dir / 'streams-worker.log'})")

        backends: dict[str, list[str]] = {}
        for name, pool in platform.pools.items():
            replicas = pool.spec.replicas.initial if pool.spec.replicas.initial is not None else pool.spec.replicas.min
            em = EmulatorServer(max(1, replicas), model=pool.spec.model, speedup=speedup)
            backends[name] = await em.start()
            emulators.append(em)
            typer.echo(f"emulator   pool {name}: {' '.join(backends[name])}")

        for i in range(n_admitters):
            admitter_id = f"admitter-{i + 1}"
            settings = AdmitterSettings(config_paths=config, port=port + i if port else _free_port(),
                                        admitter_id=admitter_id, backends=backends)
            sink = KafkaSink(bootstrap, data_dir / "spool" / admitter_id)
            follower = StateFollower(bootstrap, admitter_id, expected_admitters=n_admitters)
            app = create_app(settings, platform, sink=sink, limits=follower)
            server = _Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                                            lifespan="on"))
            task = asyncio.create_task(server.serve())
            servers.append((server, task))
            while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn sets a flag, no event
                await asyncio.sleep(0.05)
            typer.echo(f"admitter   {admitter_id}: http://{settings.host}:{settings.port}")
        typer.echo("ready; Ctrl-C stops everything")
        await stop.wait()
    finally:
        for server, _ in servers:
            server.should_exit = True
        for _, task in servers:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        for em in emulators:
            await em.stop()
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(worker.wait, 15)
            except subprocess.TimeoutExpired:
                worker.kill()
        await kafka.astop()
