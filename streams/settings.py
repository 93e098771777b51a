"""Settings of one pipeline worker (the CLI fills them; tests and the benchmark build them directly).

A pydantic-settings model: every field is read from ``TOKENPOOLS_STREAMS_<FIELD>``
(``TOKENPOOLS_STREAMS_PARTITIONS``, ``TOKENPOOLS_STREAMS_WINDOWS='{"hop_size_s": 30}'``), the Kafka
block from ``TOKENPOOLS_KAFKA_*`` or ``KAFKA_BOOTSTRAP_SERVERS`` (``tokenpools.kafka.settings``);
values given in code or on the command line win. ``bootstrap_servers`` and ``topic_prefix`` are
the Kafka block's ``bootstrap`` and ``prefix`` (and accepted under those names when building).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from schemas.echo import echo
from schemas.topics import Topics
from streams.windows import WindowSpec
from tokenpools.infra.dirs import state_home
from tokenpools.kafka.settings import DAY, KafkaSettings, Lowercase, ServiceSettings

ENV_PREFIX = "TOKENPOOLS_STREAMS_"
GUARANTEES = ("at_least_once", "exactly_once")


class PipelineSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)
    kafka_keys: ClassVar[dict[str, str]] = {"bootstrap_servers": "bootstrap", "topic_prefix": "prefix"}

    # The prefix isolates a test run: every topic name and the app id get it.
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    app_id: str = Field(default="tokenpools-streams", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    # For topics this worker creates; existing topics keep theirs.
    partitions: int = Field(default=6, ge=1, le=10_000)
    replication: int = Field(default=1, ge=1, le=100)
    web_port: int = Field(default=6066, ge=1, le=65535)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Where --metrics-port binds: 127.0.0.1 unless told otherwise (0.0.0.0 in a pod, for Prometheus).
    metrics_host: str = Field(default="127.0.0.1", min_length=1, max_length=255)
    processing_guarantee: str = "at_least_once"
    windows: WindowSpec = Field(default_factory=WindowSpec)
    summary_interval_s: float = Field(default=1.0, gt=0, le=DAY)  # every record's summary, whether or not it changed
    # Early path (the event-to-limit lag): every ``change_check_s`` stage 1 sends the summaries whose
    # trailing demand moved by more than ``change_threshold`` since the last one sent, and stage 2
    # ticks a pool whose inputs moved that much as soon as ``min_tick_gap_s`` has passed since its
    # last tick, instead of waiting for ``tickSeconds``. ``change_check_s = 0`` turns it off.
    change_check_s: float = Field(default=0.1, ge=0, le=DAY)
    change_threshold: float = Field(default=0.1, ge=0, le=1e6)
    min_tick_gap_s: float = Field(default=0.25, ge=0, le=DAY)
    scheduler_interval_s: float = Field(default=0.1, gt=0, le=DAY)
    # Longest wait of a fetch at the broker (Faust's own is 1.5 s; see fetch_wait.py).
    fetch_max_wait_s: float = Field(default=0.1, gt=0, le=DAY)
    dedup_horizon_s: float = Field(default=600.0, gt=0, le=30 * DAY)
    dedup_max_ids: int = Field(default=1_000_000, ge=1, le=1_000_000_000)
    stale_after_s: float | None = Field(default=None, gt=0, le=DAY)  # default: the hopping window size
    max_dt_s: float | None = Field(default=None, gt=0, le=DAY)  # default: the hopping window size
    # An admitter seen in a pool within this long is listed in every state record of the pool (idle
    # ones with the split's floor); one not listed gets nothing (capacity.split.share_for). Longer
    # spares an idle admitter's first request; shorter stops counting a removed admitter sooner in
    # the pool's even capacity split (PoolLive.share_replicas).
    admitter_horizon_s: float = Field(default=60.0, gt=0, le=30 * DAY)
    batch_max: int = Field(default=1000, ge=1, le=1_000_000)
    batch_within_s: float = Field(default=0.05, gt=0, le=DAY)
    commit_interval_s: float = Field(default=1.0, gt=0, le=DAY)
    session_timeout_s: float = Field(default=10.0, gt=0, le=DAY)
    log_level: Annotated[Literal["crit", "critical", "error", "warn", "warning", "info", "debug"], Lowercase] = "info"
    # Faust keeps only empty directories here (tables are in memory, recovered from changelogs), but
    # its default is ``./<app id>-data``, which litters whatever directory the worker was started in.
    data_dir: str | None = Field(default=None, min_length=1)

    # The former dataclass's __post_init__ checks are the fields' bounds, and this one.
    @field_validator("processing_guarantee")
    @classmethod
    def _guarantee(cls, value: str) -> str:
        if value not in GUARANTEES:
            raise ValueError(f"processing_guarantee must be one of {GUARANTEES}, got {echo(value)}")
        return value

    @field_validator("windows")
    @classmethod
    def _bounded_windows(cls, value: WindowSpec) -> WindowSpec:
        for name in ("tumbling_s", "hop_size_s", "hop_step_s", "grace_s", "resolution_s"):
            seconds = getattr(value, name)
            if seconds is not None and seconds > DAY:
                raise ValueError(f"{name} must be at most {DAY:g} seconds")
        return value

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka.bootstrap

    @property
    def topic_prefix(self) -> str:
        return self.kafka.prefix

    @property
    def full_app_id(self) -> str:
        return self.topic_prefix + self.app_id

    @property
    def faust_data_dir(self) -> Path:
        """``data_dir``, or ``$XDG_STATE_HOME/tokenpools/streams/<app id>`` (``~/.local/state`` without it)."""
        if self.data_dir is not None:
            return Path(self.data_dir)
        return state_home() / "streams" / self.full_app_id

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @property
    def stale_after(self) -> float:
        return self.stale_after_s if self.stale_after_s is not None else self.windows.hop_size_s

    @property
    def max_dt(self) -> float:
        return self.max_dt_s if self.max_dt_s is not None else self.windows.hop_size_s
