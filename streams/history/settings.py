"""Settings of the history process: where the store is, what the sink reads, what the server serves.

Read from ``TOKENPOOLS_HISTORY_<GROUP>__<FIELD>`` (``TOKENPOOLS_HISTORY_STORE__RETENTION_DAYS=30``), the URL
also from ``CLICKHOUSE_URL``, the Kafka block from ``TOKENPOOLS_KAFKA_*`` (``tokenpools.kafka.settings``).
Grouped per concern, as the other services' settings are: ``store`` (ClickHouse), ``sink`` (Kafka to
ClickHouse), ``server`` (the query endpoint).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from schemas.echo import echo
from tokenpools.infra.dirs import state_home
from tokenpools.kafka.settings import DAY, KafkaSettings, LogLevel, ServiceSettings

ENV_PREFIX = "TOKENPOOLS_HISTORY_"
URL_ENV = "CLICKHOUSE_URL"
Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class StoreSettings(_Group):
    """Where the history lives. Without ``url``: embedded chDB in ``data_dir`` (one process owns it)."""

    url: SecretStr | None = Field(
        default=None, description="http(s)://user:password@host:port/database of a ClickHouse server")
    user: str | None = Field(default=None, max_length=256)
    password: SecretStr | None = None
    database: Identifier | None = None
    data_dir: Path | None = Field(default=None, description="chDB's directory (default: state home)")
    # Days of raw events, state versions and per-minute rollups kept; TTL drops whole day parts.
    retention_days: int = Field(default=90, ge=1, le=36_500)
    # Blocks remembered per table for insert_deduplication_token (every table, rollups included).
    dedup_window: int = Field(default=1000, ge=100, le=100_000)
    # Limits of one read-only query (ad-hoc SQL and named questions alike).
    query_timeout_s: float = Field(default=30.0, gt=0, le=DAY)
    max_result_rows: int = Field(default=100_000, ge=1, le=100_000_000)

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("ClickHouse URL must be http(s)://[user[:password]@]host[:port][/database]; "
                             f"got scheme {echo(parts.scheme)}")
        return value

    @property
    def embedded(self) -> bool:
        return self.url is None

    def chdb_path(self) -> Path:
        return self.data_dir if self.data_dir is not None else state_home() / "history" / "chdb"

    def server_kwargs(self) -> dict[str, Any]:
        """What ``clickhouse_connect.get_client`` takes for the server (URL parts, then explicit fields)."""
        assert self.url is not None
        parts = urlsplit(self.url.get_secret_value())
        out: dict[str, Any] = {
            "interface": parts.scheme, "host": parts.hostname,
            "port": parts.port or (8443 if parts.scheme == "https" else 8123),
        }
        user = self.user or (unquote(parts.username) if parts.username else None)
        password = (self.password.get_secret_value() if self.password else None) or (
            unquote(parts.password) if parts.password else None)
        database = self.database or (parts.path.strip("/") or None)
        if user:
            out["username"] = user
        if password:
            out["password"] = password
        if database:
            out["database"] = database
        return out


class SinkSettings(_Group):
    """How the sink reads Kafka and cuts insert blocks."""

    group_id: str = Field(default="tokenpools-history", min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")
    # A block is cut when a partition has this many records, or after flush_interval_s.
    block_records: int = Field(default=2_000, ge=1, le=1_000_000)
    flush_interval_s: float = Field(default=1.0, gt=0, le=DAY)
    session_timeout_s: float = Field(default=10.0, ge=1, le=DAY)
    retry_backoff_s: float = Field(default=1.0, gt=0, le=60)


class ServerSettings(_Group):
    """The read-only query endpoint (and /metrics) of the history process."""

    host: str = Field(default="127.0.0.1", min_length=1, max_length=255)
    port: int = Field(default=8090, ge=0, le=65535)
    # The bearer token of /query and /questions (SHA-256 compared in constant time). Unset: those
    # routes answer 503, /metrics and /healthz still work.
    token: SecretStr | None = None
    token_file: Path | None = None
    max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)

    def token_value(self) -> str | None:
        if self.token is not None and self.token.get_secret_value():
            return self.token.get_secret_value()
        if self.token_file is not None:
            text = self.token_file.read_text().strip()
            return text or None
        return None


class HistorySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    log_level: LogLevel = "info"

    @model_validator(mode="before")
    @classmethod
    def _clickhouse_url(cls, data: Any) -> Any:
        """``CLICKHOUSE_URL`` (the name ClickHouse's own tools use) when the store has no URL of its own."""
        url = os.environ.get(URL_ENV)
        if not url or not isinstance(data, dict):
            return data
        store = data.get("store")
        if store is None:
            data = {**data, "store": {"url": url}}
        elif isinstance(store, dict) and "url" not in store:
            data = {**data, "store": {**store, "url": url}}
        return data
