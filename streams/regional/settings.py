"""Settings of the global loop service (``tokenpools streams regional``).

Read from ``TOKENPOOLS_REGIONAL_<FIELD>`` (``TOKENPOOLS_REGIONAL_REGION=eu-west``), the Kafka block from
``TOKENPOOLS_KAFKA_*`` or ``KAFKA_BOOTSTRAP_SERVERS`` (``tokenpools.kafka.settings``); values given in
code or on the command line win. ``region`` is required and must be an RFC 1123 name (the name
MirrorMaker 2 puts in front of the region's topics on the other clusters).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from schemas.specs import Name
from schemas.topics import Topics
from tokenpools.kafka.settings import DAY, KafkaSettings, LogLevel, ServiceSettings

ENV_PREFIX = "TOKENPOOLS_REGIONAL_"


class RegionalSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)
    kafka_keys: ClassVar[dict[str, str]] = {"bootstrap_servers": "bootstrap", "topic_prefix": "prefix"}

    region: Name = Field(description="This region's name (its pools' spec.region; MirrorMaker's alias of its cluster)")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Where --metrics-port binds: 127.0.0.1 unless told otherwise (0.0.0.0 in a pod, for Prometheus).
    metrics_host: str = Field(default="127.0.0.1", min_length=1, max_length=255)
    # The tick is an eighth of the shortest epoch of the loaded global entitlements, never below this.
    min_tick_s: float = Field(default=0.1, gt=0, le=60)
    # How often topics not read yet (a peer's mirrored summaries appear when it first publishes) are
    # looked for.
    topic_poll_s: float = Field(default=2.0, gt=0, le=600)
    # Longest wait for one produce (a report or a regional share) to be acknowledged.
    write_timeout_s: float = Field(default=10.0, gt=0, le=DAY)
    # Create the config and own summaries topics if missing (as the pipeline worker would), so a
    # write never lets a broker auto-create them uncompacted.
    create_topics: bool = True
    replication: int = Field(default=1, ge=1, le=100)
    log_level: LogLevel = "info"

    @property
    def topics(self) -> Topics:
        return Topics(self.kafka.prefix)
