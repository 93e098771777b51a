"""`tokenpools scaler`: replicas from the pipeline's pool states.

Follows ``tokenpools.pool-state``, applies each pool's scaling rule and acts through one of two
actuators, reporting ready replicas on ``tokenpools.replicas`` with their URLs, which admitters
started with ``--discover`` route to:

- ``--actuator local`` (the default) starts or stops emulator replicas in this process
  (``scaler.local.LocalActuator``); the URLs are printed on every change too (for an admitter's
  ``--backend`` without discovery);
- ``--actuator kubernetes --namespace NS [--kubeconfig PATH]`` scales each pool's vLLM Deployment
  through its ``scale`` subresource (``scaler.kube.actuator.KubernetesActuator``); the URLs are the
  Ready pods of the pool's Service, from its EndpointSlices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from tokenpools.cli.options import EXIT_BAD_OPTIONS, build_settings, finite, given

if TYPE_CHECKING:
    from scaler.settings import ScalerSettings

EXIT_BAD_CONFIG = EXIT_BAD_OPTIONS

# Option (parameter name) -> ScalerSettings field; options not given come from TOKENPOOLS_SCALER_*,
# TOKENPOOLS_KAFKA_* / KAFKA_BOOTSTRAP_SERVERS, or the defaults.
FIELDS = {
    "bootstrap": "kafka.bootstrap", "topic_prefix": "kafka.prefix", "config": "config_paths", "pool": "pools",
    "speedup": "speedup", "report_every": "report_every", "log_level": "log_level",
    "actuator": "actuator", "namespace": "namespace", "kubeconfig": "kubeconfig", "context": "kube_context",
    "leader_election": "leader_election", "identity": "identity", "lease_name": "lease_name",
}


def scaler(
    ctx: typer.Context,
    bootstrap: str = typer.Option(
        "127.0.0.1:9092", "--bootstrap", "-b",
        help="Kafka bootstrap servers HOST:PORT[,HOST:PORT] (default $TOKENPOOLS_KAFKA_BOOTSTRAP, "
             "$KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092; security options from $TOKENPOOLS_KAFKA_*)."),
    config: list[Path] = typer.Option(
        [], "--config", "-c",
        help="Pool YAML files or folders (pools to scale); required, here or in $TOKENPOOLS_SCALER_CONFIG_PATHS "
             "(a JSON list)."),
    topic_prefix: str = typer.Option("", "--topic-prefix", help="Prefix of every topic name."),
    pool: list[str] = typer.Option([], "--pool", help="Scale only these pools (default: every pool in the config)."),
    speedup: float = typer.Option(1.0, "--speedup", parser=finite(above=0), help="Emulator speed-up factor."),
    report_every: float = typer.Option(
        10.0, "--report-every", parser=finite(above=0),
        help="Re-publish ready replicas every N seconds."),
    log_level: str = typer.Option("info", "--log-level", help="Python log level."),
    actuator: str = typer.Option(
        "local", "--actuator",
        help="What to scale: 'local' (emulator replicas in this process) or 'kubernetes' (each pool's Deployment, "
             "labelled tokenpools.dev/pool=<pool>, through its scale subresource)."),
    namespace: str | None = typer.Option(
        None, "--namespace", "-n",
        help="Namespace of the pools' Deployments (kubernetes; default: the pod's own, else the kubeconfig "
             "context's, else 'default')."),
    kubeconfig: Path | None = typer.Option(
        None, "--kubeconfig",
        help="Kubeconfig file (kubernetes; default: the in-cluster config, else $KUBECONFIG or ~/.kube/config)."),
    context: str | None = typer.Option(None, "--context", help="Kubeconfig context (kubernetes; default: current)."),
    leader_election: bool | None = typer.Option(
        None, "--leader-election/--no-leader-election",
        help="Scale only while holding a Lease (kubernetes), so several scaler replicas never both scale."),
    identity: str | None = typer.Option(None, "--identity", help="This replica's name in the Lease (the host name)."),
    lease_name: str | None = typer.Option(None, "--lease-name", help="Name of the Lease (tokenpools-scaler)."),
) -> None:
    """Scale replicas from pool states: local emulator replicas, or each pool's Deployment on Kubernetes.

    Every setting can also be set in the environment (``TOKENPOOLS_SCALER_<SETTING>``, see
    scaler/settings.py); an option on the command line wins.
    """
    from scaler.settings import ScalerSettings
    from schemas.loader import ConfigError, load_config

    settings = build_settings(ScalerSettings, given(ctx, FIELDS))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        platform = load_config(*settings.config_paths)
    except ConfigError as exc:
        typer.echo(f"invalid config:\n{exc}", err=True)
        raise typer.Exit(EXIT_BAD_CONFIG) from exc
    pools = {n: p for n, p in platform.pools.items() if not settings.pools or n in settings.pools}
    unknown = sorted(set(settings.pools) - set(pools))
    if unknown or not pools:
        typer.echo(f"no such pools in the config: {', '.join(unknown) or '(none configured)'}", err=True)
        raise typer.Exit(EXIT_BAD_CONFIG)
    if settings.actuator == "kubernetes":
        from scaler.kube.client import KubeConfigError, api_client, default_namespace

        try:  # before the loop starts: a missing kubeconfig is a bad option, said at once
            api = api_client(settings.kubeconfig, context=settings.kube_context)
        except KubeConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_BAD_CONFIG) from exc
        namespace = settings.namespace or default_namespace(settings.kubeconfig, context=settings.kube_context)
        asyncio.run(_run_kubernetes(settings, pools, api, namespace))
    else:
        asyncio.run(_run(settings, pools))


async def _until_stopped(loop: Any, settings: ScalerSettings) -> None:
    """Run the loop on Kafka until it fails or SIGINT/SIGTERM."""
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    task = asyncio.create_task(
        loop.run_kafka(settings.kafka, settings.kafka.prefix, report_every=settings.report_every))
    try:
        done, _ = await asyncio.wait({task, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _run_kubernetes(settings: ScalerSettings, pools: dict[str, Any], api: Any, namespace: str) -> None:
    from scaler.kube.actuator import KubernetesActuator
    from scaler.loop import ScalerLoop

    elector = None
    if settings.leader_election:
        import socket

        from scaler.kube.leader import LeaderElector, LeaseSettings

        elector = LeaderElector(api, LeaseSettings(namespace, settings.identity or socket.gethostname(),
                                                   name=settings.lease_name))
        elector.start()
    actuator = KubernetesActuator.for_pools(api, namespace, pools, pool_label=settings.pool_label,
                                            port_name=settings.port_name, ttl=settings.kube_cache_ttl,
                                            may_act=(lambda: elector.is_leader) if elector is not None else None)
    logging.getLogger("tokenpools.scaler").info(
        "scaling pools %s in namespace %s%s", ", ".join(pools), namespace,
        f" while holding Lease {namespace}/{settings.lease_name}" if elector is not None else "")
    try:
        await _until_stopped(ScalerLoop(pools, actuator), settings)
    finally:
        if elector is not None:
            await elector.stop()
        await actuator.close()


async def _run(settings: ScalerSettings, pools: dict[str, Any]) -> None:
    from scaler.local import LocalActuator
    from scaler.loop import ScalerLoop
    from sim.server import EmulatorServer

    def changed(name: str, urls: list[str]) -> None:
        typer.echo(f"pool {name}: {len(urls)} replicas {' '.join(urls)}")

    start = {n: p.spec.replicas.initial if p.spec.replicas.initial is not None else p.spec.replicas.min
             for n, p in pools.items()}
    def server(name: str) -> EmulatorServer:  # the replicas serve the pool's model name, as vLLM would
        return EmulatorServer(0, model=pools[name].spec.model, speedup=settings.speedup)

    actuator = LocalActuator(start, on_change=changed, server_factory=server)
    loop = ScalerLoop(pools, actuator)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await actuator.start()
    task = asyncio.create_task(
        loop.run_kafka(settings.kafka, settings.kafka.prefix, report_every=settings.report_every))
    try:
        done, _ = await asyncio.wait({task, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await actuator.close()
