"""Admitter settings: one validated pydantic model, filled from the CLI, the environment or tests.

Kept apart from the platform config (pools, entitlements): these are per-process knobs (where to
listen, how long to wait for a replica), the config is what is sold.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tokenpools.infra import slow_clients
from tokenpools.infra.dirs import state_home

ENV_PREFIX = "TOKENPOOLS_"
MIB = 1024 * 1024


def default_admitter_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class AdmitterSettings(BaseModel):
    """Everything one admitter process needs besides the platform config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config_paths: list[Path] = Field(default_factory=list, description="YAML files or folders (pools, entitlements)")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    admitter_id: str = Field(default_factory=default_admitter_id, min_length=1)
    admin_key_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 (hex) of the admin bearer token; without it the admin API answers 401 to everyone",
    )
    passthrough: bool = Field(default=False, description="Admit everything (still authenticate, route, emit events)")
    max_body_bytes: int = Field(default=MIB, gt=0)
    # Slow clients (tokenpools/infra/slow_clients.py): uvicorn itself never times out a request being read.
    header_timeout_seconds: float = Field(
        default=slow_clients.HEAD_TIMEOUT, gt=0,
        description="A connection whose request head (line and headers) is not complete this long after it opened, "
        "or after the first byte of its next request, is closed")
    body_idle_timeout_seconds: float = Field(
        default=slow_clients.BODY_IDLE_TIMEOUT, gt=0,
        description="Longest silence while a request body is being sent; then 408 and close")
    body_timeout_seconds: float = Field(
        default=slow_clients.BODY_TIMEOUT, gt=0,
        description="Longest time from a request's head to the end of its body; then 408 and close "
        "(1 MiB at 20 KB/s fits)")
    max_unauthenticated_connections: int = Field(
        default=slow_clients.MAX_UNADMITTED, ge=1,
        description="Connections still sending their request (not yet read in full, so not yet authenticated); "
        "over this the oldest of them is dropped, so slow clients can neither hold memory nor shut out new ones")
    connect_timeout: float = Field(default=2.0, gt=0)
    read_timeout: float = Field(default=300.0, gt=0, description="Longest silence from a replica, seconds")
    write_timeout: float = Field(default=10.0, gt=0)
    upstream_client: Literal["httpx", "aiohttp"] = Field(
        default="httpx", description="Client for replicas: httpx, or aiohttp (about 4x less CPU; see clients.py)")
    upstream_keepalive_seconds: float = Field(
        default=4.0, gt=0,
        description="Idle connections to replicas are closed after this; keep it below the replicas' own keep-alive "
        "timeout (uvicorn and vLLM default to 5 s), or a reused connection may race the server closing it")
    max_idle_connections_per_replica: int = Field(default=256, ge=0, description="Keep-alive connections kept open")
    backends: dict[str, list[str]] = Field(
        default_factory=dict, description="Replica base URLs per pool; a pool not listed uses spec.backends"
    )
    backend_cooldown_seconds: float = Field(
        default=2.0, ge=0, description="How long a replica that refused a connection is tried last"
    )
    max_queue: int = Field(default=10_000, ge=0, description="Waiting requests per pool before new ones get 429")
    public_metrics: bool = Field(
        default=False,
        description="Serve /metrics without the admin token (it names tenants and their limits)",
    )
    # Kafka: without ``kafka_bootstrap`` the admitter is standalone (YAML config, in-process allocator).
    kafka_bootstrap: str | None = Field(
        default=None, description="HOST:PORT[,HOST:PORT] of Kafka: events, limits and the config topic")
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$", description="Prefix of every topic name")
    spool_dir: Path | None = Field(
        default=None, description="Durable event spool (default: default_spool_dir(admitter_id))")
    expected_admitters: int = Field(default=1, ge=1, description="Admitters sharing each pool, until the pipeline "
                                    "says otherwise (each enforces 1/N of a limit without a split)")
    config_wait_seconds: float = Field(
        default=10.0, ge=0, description="How long start waits to read the config topic before serving the YAML")
    config_write_timeout: float = Field(
        default=5.0, gt=0, description="Longest wait for Kafka to acknowledge an admin write before answering 503")
    discover: bool = Field(
        default=False, description="With kafka_bootstrap: route each pool to the replicas its latest report on "
        "tokenpools.replicas names (the configured backends until one arrives)")

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, value: str | None) -> str | None:
        return None if value is None else parse_bootstrap(value)

    @field_validator("backends")
    @classmethod
    def _urls(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for pool, urls in value.items():
            for url in urls:
                if not url.startswith(("http://", "https://")):
                    raise ValueError(f"backend for pool '{pool}' must be an http(s) URL, got {url!r}")
        return value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> AdmitterSettings:
        """Settings from ``TOKENPOOLS_*`` variables (e.g. ``TOKENPOOLS_ADMIN_KEY_SHA256``), then overrides."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name in ("host", "admitter_id", "admin_key_sha256"):
            raw = env.get(ENV_PREFIX + name.upper())
            if raw:
                values[name] = raw
        for name in ("port", "max_body_bytes"):
            raw = env.get(ENV_PREFIX + name.upper())
            if raw:
                values[name] = int(raw)
        raw = env.get(ENV_PREFIX + "PASSTHROUGH")
        if raw:
            values["passthrough"] = raw.lower() in {"1", "true", "yes", "on"}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)


def parse_bootstrap(value: str) -> str:
    """``HOST:PORT[,HOST:PORT]``, normalised (spaces dropped); a clear ValueError otherwise."""
    servers = [s.strip() for s in value.split(",") if s.strip()]
    if not servers:
        raise ValueError(f"Kafka bootstrap servers must be HOST:PORT[,HOST:PORT], got {value!r}")
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"Kafka bootstrap server must be HOST:PORT with a port 1-65535, got {server!r}")
    return ",".join(servers)


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
            raise ValueError(f"--backend expects POOL=URL, got {option!r}")
        out.setdefault(pool, []).extend(u for u in urls.split(",") if u)
    return out
