"""Settings of ``tokenpools scaler`` (local emulator replicas scaled from the pipeline's pool states).

A pydantic-settings model like the admitter's and the pipeline's: every field is read from
``TOKENPOOLS_SCALER_<FIELD>`` (``TOKENPOOLS_SCALER_REPORT_EVERY``, ``TOKENPOOLS_SCALER_POOLS='["a"]'``),
the Kafka block from ``TOKENPOOLS_KAFKA_*`` or ``KAFKA_BOOTSTRAP_SERVERS``
(``tokenpools.kafka.settings``); values given in code or on the command line win.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from tokenpools.kafka.settings import DAY, KafkaSettings, LogLevel, ServiceSettings

ENV_PREFIX = "TOKENPOOLS_SCALER_"


class ScalerSettings(ServiceSettings):
    """What one scaler process needs: Kafka, the pools it scales, and its local actuator's knobs."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)
    kafka_keys: ClassVar[dict[str, str]] = {"bootstrap_servers": "bootstrap", "topic_prefix": "prefix"}

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    config_paths: list[Path] = Field(min_length=1, description="Pool YAML files or folders (the pools to scale)")
    pools: list[str] = Field(default_factory=list, description="Scale only these pools (default: every pool)")
    speedup: float = Field(default=1.0, gt=0, le=1e6, description="Speed-up factor of the local emulator replicas")
    report_every: float = Field(default=10.0, gt=0, le=DAY, description="Re-publish ready replicas every N seconds")
    log_level: LogLevel = "info"
