"""Settings of ``tokenpools scaler`` (replicas scaled from the pipeline's pool states).

``actuator`` says what it scales: ``local`` (the default: emulator replicas in this process) or
``kubernetes`` (each pool's vLLM Deployment in ``namespace``, found by the ``pool_label`` label; see
``scaler.kube.actuator``), reached with ``kubeconfig`` / ``kube_context`` or the in-cluster config.

A pydantic-settings model like the admitter's and the pipeline's: every field is read from
``TOKENPOOLS_SCALER_<FIELD>`` (``TOKENPOOLS_SCALER_REPORT_EVERY``, ``TOKENPOOLS_SCALER_POOLS='["a"]'``),
the Kafka block from ``TOKENPOOLS_KAFKA_*`` or ``KAFKA_BOOTSTRAP_SERVERS``
(``tokenpools.kafka.settings``); values given in code or on the command line win.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from tokenpools.kafka.settings import DAY, KafkaSettings, LogLevel, ServiceSettings

ENV_PREFIX = "TOKENPOOLS_SCALER_"


class ScalerSettings(ServiceSettings):
    """What one scaler process needs: Kafka, the pools it scales, and its actuator's knobs."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)
    kafka_keys: ClassVar[dict[str, str]] = {"bootstrap_servers": "bootstrap", "topic_prefix": "prefix"}

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    config_paths: list[Path] = Field(min_length=1, description="Pool YAML files or folders (the pools to scale)")
    pools: list[str] = Field(default_factory=list, description="Scale only these pools (default: every pool)")
    speedup: float = Field(default=1.0, gt=0, le=1e6, description="Speed-up factor of the local emulator replicas")
    report_every: float = Field(default=10.0, gt=0, le=DAY, description="Re-publish ready replicas every N seconds")
    log_level: LogLevel = "info"
    actuator: Literal["local", "kubernetes"] = Field(
        default="local", description="What to scale: emulator replicas here (local) or Deployments (kubernetes)")
    namespace: str | None = Field(
        default=None, min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Namespace of the pools' Deployments (kubernetes; default: the pod's own namespace, "
                    "else the kubeconfig context's, else 'default')")
    kubeconfig: Path | None = Field(
        default=None,
        description="Kubeconfig file (kubernetes; default: in-cluster, else $KUBECONFIG or ~/.kube/config)")
    kube_context: str | None = Field(default=None, description="Kubeconfig context (kubernetes; default: its current)")
    pool_label: str = Field(default="tokenpools.dev/pool", min_length=1,
                            description="Label naming the pool on its Deployment and Service (kubernetes)")
    port_name: str = Field(default="http", min_length=1,
                           description="Name of the pool Service's port that serves vLLM's API (kubernetes)")
    kube_cache_ttl: float = Field(default=1.0, ge=0, le=60,
                                  description="Seconds a read of the pools' Kubernetes objects is reused (kubernetes)")
    leader_election: bool = Field(
        default=False, description="Scale only while holding the Lease `lease_name` (kubernetes): several scaler "
        "replicas, one acting; the others read, report and wait to take over")
    identity: str | None = Field(default=None, min_length=1, max_length=253,
                                 description="This replica's name in the Lease (default: the host name)")
    lease_name: str = Field(default="tokenpools-scaler", min_length=1, max_length=253,
                            pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", description="Name of the scaler's Lease")
