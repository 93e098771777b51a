"""Settings of one pipeline worker (the CLI fills them; tests and the benchmark build them directly)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from schemas.topics import Topics
from streams.windows import WindowSpec
from tokenpools.infra.dirs import state_home

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
GUARANTEES = ("at_least_once", "exactly_once")


def bootstrap_from_env() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP


@dataclass(frozen=True)
class PipelineSettings:
    bootstrap_servers: str = field(default_factory=bootstrap_from_env)
    app_id: str = "tokenpools-streams"
    topic_prefix: str = ""  # isolates a test run: every topic name and the app id get it
    partitions: int = 6  # for topics this worker creates; existing topics keep theirs
    replication: int = 1
    web_port: int = 6066
    metrics_port: int | None = None
    processing_guarantee: str = "at_least_once"
    windows: WindowSpec = field(default_factory=WindowSpec)
    summary_interval_s: float = 1.0  # every record's summary, whether or not it changed
    # Early path (the event-to-limit lag): every ``change_check_s`` stage 1 sends the summaries whose
    # trailing demand moved by more than ``change_threshold`` since the last one sent, and stage 2
    # ticks a pool whose inputs moved that much as soon as ``min_tick_gap_s`` has passed since its
    # last tick, instead of waiting for ``tickSeconds``. ``change_check_s = 0`` turns it off.
    change_check_s: float = 0.1
    change_threshold: float = 0.1
    min_tick_gap_s: float = 0.25
    scheduler_interval_s: float = 0.1
    fetch_max_wait_s: float = 0.1  # longest wait of a fetch at the broker (Faust's own is 1.5 s; see fetch_wait.py)
    dedup_horizon_s: float = 600.0
    dedup_max_ids: int = 1_000_000
    stale_after_s: float | None = None  # default: the hopping window size
    max_dt_s: float | None = None  # default: the hopping window size
    batch_max: int = 1000
    batch_within_s: float = 0.05
    commit_interval_s: float = 1.0
    session_timeout_s: float = 10.0
    log_level: str = "info"
    # Faust keeps only empty directories here (tables are in memory, recovered from changelogs), but
    # its default is ``./<app id>-data``, which litters whatever directory the worker was started in.
    data_dir: str | None = None

    def __post_init__(self) -> None:
        if self.processing_guarantee not in GUARANTEES:
            raise ValueError(f"processing_guarantee must be one of {GUARANTEES}")
        if self.partitions < 1:
            raise ValueError("partitions must be >= 1")
        if self.summary_interval_s <= 0:
            raise ValueError("summary_interval_s must be > 0")
        if self.change_check_s < 0 or self.min_tick_gap_s < 0:
            raise ValueError("change_check_s and min_tick_gap_s must be >= 0")
        if self.change_threshold < 0:
            raise ValueError("change_threshold must be >= 0")

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
