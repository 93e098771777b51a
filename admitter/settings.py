"""Admitter settings: one validated pydantic-settings model, filled from the CLI, the environment or tests.

Kept apart from the platform config (pools, entitlements): these are per-process knobs (where to
listen, how long to wait for a replica), the config is what is sold. Every field is read from
``TOKENPOOLS_<FIELD>`` (``TOKENPOOLS_PORT``, ``TOKENPOOLS_ADMIN_KEY_SHA256``; lists and maps as JSON,
e.g. ``TOKENPOOLS_BACKENDS='{"pool": ["http://10.0.0.1:8000"]}'``), the Kafka block from
``TOKENPOOLS_KAFKA_*`` or ``KAFKA_BOOTSTRAP_SERVERS`` (``tokenpools.kafka.settings``); values given
in code or on the command line win over the environment. The link to the history process is the
exception: ``history_url``, ``history_token`` and ``history_timeout_seconds`` are read from
``TOKENPOOLS_ADMITTER_HISTORY_URL`` / ``_TOKEN`` / ``_TIMEOUT_SECONDS`` only (``TOKENPOOLS_HISTORY_*`` is
the history process's own namespace, whose token setting is another variable).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from schemas.echo import echo
from tokenpools.infra import slow_clients
from tokenpools.infra.dirs import state_home
from tokenpools.kafka.settings import DAY, KafkaSettings, Lowercase, ServiceSettings

ENV_PREFIX = "TOKENPOOLS_"
MIB = 1024 * 1024
# Field -> the one variable it is read from (not TOKENPOOLS_<FIELD>; see the module doc).
HISTORY_ENV: dict[str, str] = {
    "history_url": "TOKENPOOLS_ADMITTER_HISTORY_URL",
    "history_token": "TOKENPOOLS_ADMITTER_HISTORY_TOKEN",
    "history_timeout_seconds": "TOKENPOOLS_ADMITTER_HISTORY_TIMEOUT_SECONDS",
}


class _AdmitterEnv(PydanticBaseSettingsSource):
    """``TOKENPOOLS_<FIELD>`` for every field but the history link's, which come from ``HISTORY_ENV``.

    An empty variable counts as unset (``TOKENPOOLS_ADMITTER_HISTORY_URL=`` turns history off).
    """

    def __init__(self, settings_cls: type[BaseSettings], env: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self.env = env

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values = {k: v for k, v in self.env().items() if k not in HISTORY_ENV}
        for name, variable in HISTORY_ENV.items():
            raw = os.environ.get(variable)
            if raw:
                values[name] = raw
        return values


def default_admitter_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class AdmitterSettings(ServiceSettings):
    """Everything one admitter process needs besides the platform config."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)
    kafka_keys: ClassVar[dict[str, str]] = {"kafka_bootstrap": "bootstrap", "topic_prefix": "prefix"}
    kafka_optional: ClassVar[bool] = True

    config_paths: list[Path] = Field(default_factory=list, description="YAML files or folders (pools, entitlements)")
    host: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    port: int = Field(default=8080, ge=0, le=65535)
    admitter_id: str = Field(default_factory=default_admitter_id, min_length=1, max_length=256)
    admin_key_sha256: Annotated[str | None, Lowercase] = Field(
        default=None, pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 (hex) of the admin bearer token; without it the admin API answers 401 to everyone",
    )
    passthrough: bool = Field(default=False, description="Admit everything (still authenticate, route, emit events)")
    max_body_bytes: int = Field(default=MIB, gt=0, le=1024 * MIB)
    # Slow clients (tokenpools/infra/slow_clients.py): uvicorn itself never times out a request being read.
    header_timeout_seconds: float = Field(
        default=slow_clients.HEAD_TIMEOUT, gt=0, le=DAY,
        description="A connection whose request head (line and headers) is not complete this long after it opened, "
        "or after the first byte of its next request, is closed")
    body_idle_timeout_seconds: float = Field(
        default=slow_clients.BODY_IDLE_TIMEOUT, gt=0, le=DAY,
        description="Longest silence while a request body is being sent; then 408 and close")
    body_timeout_seconds: float = Field(
        default=slow_clients.BODY_TIMEOUT, gt=0, le=DAY,
        description="Longest time from a request's head to the end of its body; then 408 and close "
        "(1 MiB at 20 KB/s fits)")
    max_unauthenticated_connections: int = Field(
        default=slow_clients.MAX_UNADMITTED, ge=1, le=1_000_000,
        description="Connections still sending their request (not yet read in full, so not yet authenticated); "
        "over this the oldest of them is dropped, so slow clients can neither hold memory nor shut out new ones")
    connect_timeout: float = Field(default=2.0, gt=0, le=DAY)
    read_timeout: float = Field(default=300.0, gt=0, le=DAY, description="Longest silence from a replica, seconds")
    write_timeout: float = Field(default=10.0, gt=0, le=DAY)
    upstream_client: Literal["httpx", "aiohttp"] = Field(
        default="httpx", description="Client for replicas: httpx, or aiohttp (about 4x less CPU; see clients.py)")
    upstream_keepalive_seconds: float = Field(
        default=4.0, gt=0, le=DAY,
        description="Idle connections to replicas are closed after this; keep it below the replicas' own keep-alive "
        "timeout (uvicorn and vLLM default to 5 s), or a reused connection may race the server closing it")
    max_idle_connections_per_replica: int = Field(default=256, ge=0, le=100_000,
                                                  description="Keep-alive connections kept open")
    backends: dict[str, list[str]] = Field(
        default_factory=dict, description="Replica base URLs per pool; a pool not listed uses spec.backends"
    )
    backend_cooldown_seconds: float = Field(
        default=2.0, ge=0, le=DAY, description="How long a replica that refused a connection is tried last"
    )
    max_queue: int = Field(default=10_000, ge=0, le=10_000_000,
                           description="Waiting requests per pool before new ones get 429")
    public_metrics: bool = Field(
        default=False,
        description="Serve /metrics without the admin token (it names tenants and their limits)",
    )
    log_level: Annotated[Literal["critical", "error", "warning", "info", "debug", "trace"], Lowercase] = Field(
        default="warning", description="uvicorn's log level")
    access_log: bool = Field(default=False, description="Log every HTTP request")
    # Kafka: without it (no bootstrap given) the admitter is standalone (YAML config, in-process allocator).
    kafka: KafkaSettings | None = Field(
        default=None, description="Kafka: events, limits and the config topic (None: standalone)")
    spool_dir: Path | None = Field(
        default=None, description="Durable event spool (default: default_spool_dir(admitter_id))")
    expected_admitters: int = Field(default=1, ge=1, le=10_000,
                                    description="Admitters sharing each pool: each enforces 1/N of a "
                                    "limit whose state record lists no admitter yet (docs/global-limit.md)")
    config_wait_seconds: float = Field(
        default=10.0, ge=0, le=DAY,
        description="How long start waits to read the config topic before serving the YAML")
    config_write_timeout: float = Field(
        default=5.0, gt=0, le=DAY,
        description="Longest wait for Kafka to acknowledge an admin write before answering 503")
    discover: bool = Field(
        default=False, description="With Kafka: route each pool to the replicas its latest report on "
        "tokenpools.replicas names (the configured backends until one arrives)")
    # The history process's read-only endpoint (streams.history.server), for /v1/usage?granularity=...
    history_url: str | None = Field(
        default=None, min_length=1, max_length=2048,
        description="Base URL of the history process's HTTP endpoint (http or https); without it "
        "/v1/usage answers 503 to a history request ($TOKENPOOLS_ADMITTER_HISTORY_URL)")
    history_token: SecretStr | None = Field(
        default=None, min_length=1, max_length=4096,
        description="Bearer token of the history endpoint ($TOKENPOOLS_ADMITTER_HISTORY_TOKEN)")
    history_timeout_seconds: float = Field(
        default=5.0, gt=0, le=300,
        description="Longest wait for the history endpoint's answer, connecting included; then 503 "
        "($TOKENPOOLS_ADMITTER_HISTORY_TIMEOUT_SECONDS)")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init, env, *rest = super().settings_customise_sources(
            settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings)
        return (init, _AdmitterEnv(settings_cls, env), *rest)

    @property
    def kafka_bootstrap(self) -> str | None:
        """Kafka's bootstrap servers, or None for a standalone admitter."""
        return None if self.kafka is None else self.kafka.bootstrap

    @property
    def topic_prefix(self) -> str:
        return "" if self.kafka is None else self.kafka.prefix

    @field_validator("backends")
    @classmethod
    def _urls(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for pool, urls in value.items():
            for url in urls:
                if not url.startswith(("http://", "https://")):
                    raise ValueError(f"backend for pool {echo(pool)} must be an http(s) URL, got {echo(url)}")
        return value

    @field_validator("history_url")
    @classmethod
    def _history_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a port that is not a number in range
        except ValueError:
            raise ValueError("history_url is not a valid URL") from None
        if parts.username or parts.password:  # checked first: the messages below show the URL
            raise ValueError("history_url must not carry credentials (the token goes in history_token)")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"history_url must be an http(s) URL with a host, got {echo(value)}")
        if parts.query or parts.fragment:
            raise ValueError(f"history_url must be a base URL without query or fragment, got {echo(value)}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _discover_needs_kafka(self) -> AdmitterSettings:
        if self.discover and self.kafka is None:
            raise ValueError("--discover needs --kafka (or KAFKA_BOOTSTRAP_SERVERS): the scaler's reports "
                             "are on tokenpools.replicas")
        return self


class AdmitterCommandSettings(AdmitterSettings):
    """The settings ``tokenpools admitter`` runs with: its pools can only come from YAML or Kafka.

    (Code that builds an app passes its platform config to ``create_app`` directly, so the plain
    ``AdmitterSettings`` does not ask for either.)
    """

    @model_validator(mode="after")
    def _pools_from_somewhere(self) -> AdmitterCommandSettings:
        if not self.config_paths and self.kafka is None:
            raise ValueError("--config is required without --kafka (where else would pools come from?)")
        return self


def default_spool_dir(admitter_id: str) -> Path:
    """``$XDG_STATE_HOME/tokenpools/admitter/<id>/spool`` (``~/.local/state`` without it).

    Per admitter id, because a restarted admitter replays what its previous run spooled: give it a
    stable ``--admitter-id`` (the default one contains the pid) or an explicit ``--spool-dir``.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", admitter_id).lstrip(".") or "admitter"
    return state_home() / "admitter" / safe / "spool"


def parse_backend_options(options: list[str]) -> dict[str, list[str]]:
    """``POOL=URL`` (repeatable, or ``POOL=URL1,URL2``) into ``{pool: [urls]}``, for the CLI."""
    out: dict[str, list[str]] = {}
    for option in options:
        pool, sep, urls = option.partition("=")
        if not sep or not pool or not urls:
            raise ValueError(f"--backend expects POOL=URL, got {echo(option)}")
        out.setdefault(pool, []).extend(u for u in urls.split(",") if u)
    return out
