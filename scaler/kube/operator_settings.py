"""Settings of ``tokenpools operator`` (CRs onto the config topic, status back, the admission webhook).

A pydantic-settings model like the scaler's: every field from ``TOKENPOOLS_OPERATOR_<FIELD>``
(``TOKENPOOLS_OPERATOR_NAMESPACE``, ``TOKENPOOLS_OPERATOR_WEBHOOK_PORT``), the Kafka block from
``TOKENPOOLS_KAFKA_*`` or ``KAFKA_BOOTSTRAP_SERVERS``; values given on the command line win.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import ClassVar

from pydantic import Field, FilePath, model_validator
from pydantic_settings import SettingsConfigDict

from schemas.specs import NAME_PATTERN
from tokenpools.kafka.settings import DAY, KafkaSettings, LogLevel, ServiceSettings

ENV_PREFIX = "TOKENPOOLS_OPERATOR_"


class OperatorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)
    kafka_keys: ClassVar[dict[str, str]] = {"bootstrap_servers": "bootstrap", "topic_prefix": "prefix"}

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    kubeconfig: Path | None = Field(default=None, description="kubeconfig file (default: in-cluster, else $KUBECONFIG)")
    kube_context: str | None = Field(default=None, max_length=253)
    namespace: str | None = Field(default=None, max_length=63, pattern=NAME_PATTERN,
                                  description="Namespace of the CRs (default: the pod's, else the context's)")
    all_namespaces: bool = False
    identity: str = Field(default_factory=socket.gethostname, min_length=1, max_length=253,
                          description="This replica's name in the Lease (default: the host name, a pod's name)")
    lease_name: str = Field(default="tokenpools-operator", max_length=253, pattern=NAME_PATTERN)
    lease_namespace: str | None = Field(default=None, max_length=63, pattern=NAME_PATTERN,
                                        description="Namespace of the Lease (default: the CRs' namespace)")
    lease_duration: float = Field(default=15.0, gt=0, le=DAY)
    renew_deadline: float = Field(default=10.0, gt=0, le=DAY)
    retry_period: float = Field(default=2.0, gt=0, le=DAY)
    resync_seconds: float = Field(default=60.0, gt=0, le=DAY)
    status_every: float = Field(default=5.0, ge=0, le=DAY, description="At most one status write per CR per N s")
    ready_within: float = Field(default=30.0, gt=0, le=DAY, description="Ready=False once the state is older")
    webhook_port: int = Field(default=0, ge=0, le=65535, description="HTTPS port of the webhook (0: none)")
    webhook_host: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    tls_cert: FilePath | None = None
    tls_key: FilePath | None = None
    log_level: LogLevel = "info"

    @model_validator(mode="after")
    def _consistent(self) -> OperatorSettings:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                f"lease timings must satisfy retry period ({self.retry_period:g} s) < renew deadline "
                f"({self.renew_deadline:g} s) < lease duration ({self.lease_duration:g} s): a leader must give up "
                "before another replica may take over")
        if self.webhook_port and (self.tls_cert is None or self.tls_key is None):
            raise ValueError("the webhook (webhook_port set) needs tls_cert and tls_key: the API server calls "
                             "webhooks over HTTPS only")
        if self.all_namespaces and self.namespace is not None:
            raise ValueError("give namespace or all_namespaces, not both")
        return self
