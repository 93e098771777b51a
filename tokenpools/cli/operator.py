"""`tokenpools operator`: TokenPool and Entitlement CRs onto ``tokenpools.config``, status back onto the CRs.

Runs ``scaler.kube.operator.Operator`` under Lease leader election (run two replicas: one writes, both
serve the webhook) and, with ``--webhook-port``, the validating admission webhook over HTTPS
(``scaler.kube.webhook``). SIGINT/SIGTERM stop it cleanly and release the Lease, so the other replica
takes over at once.
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
    from scaler.kube.operator_settings import OperatorSettings

# Option (parameter name) -> OperatorSettings field; options not given come from TOKENPOOLS_OPERATOR_*,
# TOKENPOOLS_KAFKA_* / KAFKA_BOOTSTRAP_SERVERS, or the defaults.
FIELDS = {
    "bootstrap": "kafka.bootstrap", "topic_prefix": "kafka.prefix", "kubeconfig": "kubeconfig",
    "context": "kube_context", "namespace": "namespace", "all_namespaces": "all_namespaces", "identity": "identity",
    "lease_name": "lease_name", "lease_namespace": "lease_namespace", "lease_duration": "lease_duration",
    "renew_deadline": "renew_deadline", "retry_period": "retry_period", "resync_seconds": "resync_seconds",
    "status_every": "status_every", "ready_within": "ready_within", "webhook_port": "webhook_port",
    "webhook_host": "webhook_host", "tls_cert": "tls_cert", "tls_key": "tls_key", "log_level": "log_level",
}


def operator(
    ctx: typer.Context,
    kubeconfig: Path | None = typer.Option(
        None, "--kubeconfig",
        help="Kubeconfig file (default: the in-cluster config, else $KUBECONFIG or ~/.kube/config)."),
    context: str | None = typer.Option(None, "--context", help="Kubeconfig context (default: current)."),
    namespace: str | None = typer.Option(
        None, "--namespace", "-n",
        help="Namespace of the CRs (default: the pod's own, else the kubeconfig context's, else 'default')."),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", help="Watch the CRs of every namespace."),
    bootstrap: str = typer.Option(
        "127.0.0.1:9092", "--bootstrap", "-b",
        help="Kafka bootstrap servers HOST:PORT[,HOST:PORT] (default $TOKENPOOLS_KAFKA_BOOTSTRAP, "
             "$KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092; security options from $TOKENPOOLS_KAFKA_*)."),
    topic_prefix: str = typer.Option("", "--topic-prefix", help="Prefix of every topic name."),
    identity: str | None = typer.Option(
        None, "--identity", help="This replica's name in the Lease (default: the host name)."),
    lease_name: str = typer.Option("tokenpools-operator", "--lease-name", help="Name of the Lease."),
    lease_namespace: str | None = typer.Option(
        None, "--lease-namespace", help="Namespace of the Lease (default: the CRs' namespace)."),
    lease_duration: float = typer.Option(
        15.0, "--lease-duration", parser=finite(above=0),
        help="Seconds a Lease not renewed stays the holder's before another replica may take it."),
    renew_deadline: float = typer.Option(
        10.0, "--renew-deadline", parser=finite(above=0),
        help="Seconds the leader keeps leading without a successful renew (it renews every half of this)."),
    retry_period: float = typer.Option(
        2.0, "--retry-period", parser=finite(above=0), help="Seconds between a candidate's tries."),
    resync_seconds: float = typer.Option(
        60.0, "--resync-seconds", parser=finite(above=0),
        help="Compare every CR with the config topic this often, besides on every change."),
    status_every: float = typer.Option(
        5.0, "--status-every", parser=finite(min=0), help="At most one status write per CR per N seconds."),
    ready_within: float = typer.Option(
        30.0, "--ready-within", parser=finite(above=0),
        help="A CR is Ready while the pipeline published its state within N seconds."),
    webhook_port: int = typer.Option(
        0, "--webhook-port", min=0, max=65535, help="HTTPS port of the admission webhook (0: no webhook)."),
    webhook_host: str = typer.Option("127.0.0.1", "--webhook-host", help="Address the webhook binds."),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="Webhook serving certificate (PEM)."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="Its private key (PEM)."),
    log_level: str = typer.Option("info", "--log-level", help="Python log level."),
) -> None:
    """Write TokenPool and Entitlement CRs to the config topic and their status back, under a Lease;
    serve the admission webhook that refuses guarantees a pool cannot provision.

    Every setting can also be set in the environment (``TOKENPOOLS_OPERATOR_<SETTING>``, see
    scaler/kube/operator_settings.py); an option on the command line wins.
    """
    from scaler.kube.client import KubeConfigError, api_client, default_namespace
    from scaler.kube.operator_settings import OperatorSettings

    settings = build_settings(OperatorSettings, given(ctx, FIELDS))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # before the loop starts: a missing kubeconfig is a bad option, said at once
        api = api_client(settings.kubeconfig, context=settings.kube_context)
    except KubeConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_OPTIONS) from exc
    home = settings.namespace or default_namespace(settings.kubeconfig, context=settings.kube_context)
    try:
        asyncio.run(_run(settings, api, None if settings.all_namespaces else home, settings.lease_namespace or home))
    except OSError as exc:  # the webhook's port taken, an unreadable certificate
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


async def _run(settings: OperatorSettings, api: Any, namespace: str | None, lease_namespace: str) -> None:
    from scaler.kube.leader import LeaseSettings
    from scaler.kube.operator import Operator, OperatorOptions
    from scaler.kube.webhook import ApiLookup, WebhookServer

    lease = LeaseSettings(namespace=lease_namespace, identity=settings.identity, name=settings.lease_name,
                          lease_duration=settings.lease_duration, renew_deadline=settings.renew_deadline,
                          retry_period=settings.retry_period)
    options = OperatorOptions(lease=lease, namespace=namespace, topic_prefix=settings.kafka.prefix,
                              resync_seconds=settings.resync_seconds, status_every=settings.status_every,
                              ready_within=settings.ready_within)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    webhook = None
    if settings.webhook_port:
        assert settings.tls_cert is not None and settings.tls_key is not None  # checked by the settings
        webhook = WebhookServer(ApiLookup(api), cert=settings.tls_cert, key=settings.tls_key,
                                host=settings.webhook_host, port=settings.webhook_port)
        await webhook.start()
    op = Operator(api, settings.kafka, options)
    logging.getLogger("tokenpools.operator").info(
        "operator %s: CRs of %s, lease %s/%s", settings.identity,
        f"namespace {namespace}" if namespace else "every namespace", lease_namespace, settings.lease_name)
    await op.start()
    try:
        await stop.wait()
    finally:
        await op.stop(release=True)
        if webhook is not None:
            await webhook.stop()
        api.close()
