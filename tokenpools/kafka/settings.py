"""The Kafka block every service's settings share, and the base those settings build on.

``KafkaSettings`` is where a process finds Kafka (bootstrap servers), which topics are its own (the
prefix) and how it authenticates (security protocol, SASL, CA file). It is read from
``TOKENPOOLS_KAFKA_*`` (``TOKENPOOLS_KAFKA_BOOTSTRAP``, ``TOKENPOOLS_KAFKA_PREFIX``,
``TOKENPOOLS_KAFKA_SECURITY_PROTOCOL``, ``TOKENPOOLS_KAFKA_SASL_MECHANISM``,
``TOKENPOOLS_KAFKA_SASL_USERNAME``, ``TOKENPOOLS_KAFKA_SASL_PASSWORD``, ``TOKENPOOLS_KAFKA_SSL_CAFILE``),
and the bootstrap also from ``KAFKA_BOOTSTRAP_SERVERS``, whichever service it is nested in: the
admitter, the pipeline and the scaler name the same cluster with the same variables.
``client_kwargs()`` is what an aiokafka client takes.

``ServiceSettings`` is the base of ``AdmitterSettings``, ``PipelineSettings`` and ``ScalerSettings``:
pydantic-settings with init values over the service's own environment (its prefix) over the Kafka
block's environment over the defaults; unknown names refused; non-finite floats refused; frozen.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from schemas.echo import echo

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"  # the name Kafka's own tools and the README use
KAFKA_ENV_PREFIX = "TOKENPOOLS_KAFKA_"
MAX_SERVERS = 64
MAX_PREFIX = 100  # topic names are at most 249 characters; the longest suffix is ~40
DAY = 86_400.0  # upper bound of every duration setting, seconds



def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


Lowercase = BeforeValidator(_lower)  # ``Annotated[Literal["info", ...], Lowercase]`` takes "INFO" too
LogLevel = Annotated[Literal["critical", "error", "warning", "info", "debug"], Lowercase]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def parse_bootstrap(value: str) -> str:
    """``HOST:PORT[,HOST:PORT]``, normalised (spaces dropped); a clear, bounded ValueError otherwise."""
    servers = [s.strip() for s in value.split(",") if s.strip()]
    if not servers:
        raise ValueError(f"Kafka bootstrap servers must be HOST:PORT[,HOST:PORT], got {echo(value)}")
    if len(servers) > MAX_SERVERS:
        raise ValueError(f"Kafka bootstrap servers: at most {MAX_SERVERS}, got {len(servers)}")
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"Kafka bootstrap server must be HOST:PORT with a port 1-65535, got {echo(server)}")
    return ",".join(servers)


class SettingsBase(BaseSettings):
    """What every settings model here shares: unknown names refused, no NaN or infinity, frozen;
    values given first, then the model's own variables (its ``env_prefix``), then the Kafka block's
    (under ``kafka_env_key``, or at the top for ``KafkaSettings`` itself)."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    kafka_env_key: ClassVar[str | None] = "kafka"

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, KafkaEnvSource(settings_cls, nested=cls.kafka_env_key)


class KafkaSettings(SettingsBase):
    """Where Kafka is, which topics are this deployment's, and how to authenticate."""

    model_config = SettingsConfigDict(env_prefix=KAFKA_ENV_PREFIX)
    kafka_env_key: ClassVar[str | None] = None

    bootstrap: str = Field(default=DEFAULT_BOOTSTRAP, max_length=4096,
                           description="HOST:PORT[,HOST:PORT] of Kafka (also $KAFKA_BOOTSTRAP_SERVERS)")
    prefix: str = Field(default="", max_length=MAX_PREFIX, pattern=r"^[A-Za-z0-9._-]*$",
                        description="Prefix of every topic name (isolates a deployment or a test run)")
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = Field(default="PLAIN", description="With SASL_PLAINTEXT or SASL_SSL")
    sasl_username: str | None = Field(default=None, min_length=1, max_length=1024)
    sasl_password: SecretStr | None = Field(default=None, min_length=1, max_length=1024)
    ssl_cafile: FilePath | None = Field(
        default=None, description="CA bundle to verify the brokers (with SSL or SASL_SSL; default: the system's)")

    @field_validator("bootstrap")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        return parse_bootstrap(value)

    @model_validator(mode="after")
    def _security(self) -> KafkaSettings:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and (self.sasl_username is None or self.sasl_password is None):
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_username and sasl_password")
        if not sasl and (self.sasl_username is not None or self.sasl_password is not None):
            raise ValueError("sasl_username and sasl_password need security_protocol SASL_PLAINTEXT or SASL_SSL")
        if self.ssl_cafile is not None and not self.security_protocol.endswith("SSL"):
            raise ValueError("ssl_cafile needs security_protocol SSL or SASL_SSL")
        return self

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``AIOKafkaProducer``/``AIOKafkaConsumer``/``AIOKafkaAdminClient``."""
        kwargs: dict[str, Any] = {"bootstrap_servers": self.bootstrap, "security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL_"):
            assert self.sasl_password is not None  # checked by _security
            kwargs.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                          sasl_plain_password=self.sasl_password.get_secret_value())
        if self.security_protocol.endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        return kwargs


class KafkaEnvSource(PydanticBaseSettingsSource):
    """The Kafka block's variables (``TOKENPOOLS_KAFKA_*``, then ``KAFKA_BOOTSTRAP_SERVERS``).

    Used by ``KafkaSettings`` itself (``nested=None``) and by each service's settings, where the values
    go under ``kafka``: the same names whichever service reads them.
    """

    def __init__(self, settings_cls: type[BaseSettings], nested: str | None = None) -> None:
        super().__init__(settings_cls)
        self.nested = nested

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values = EnvSettingsSource(KafkaSettings)()
        if "bootstrap" not in values and os.environ.get(BOOTSTRAP_ENV):
            values["bootstrap"] = os.environ[BOOTSTRAP_ENV]
        if self.nested is None:
            return values
        return {self.nested: values} if values else {}


class ServiceSettings(SettingsBase):
    """Base of a service's settings: its own fields, and the Kafka block under ``kafka``.

    A subclass sets its ``env_prefix`` and declares ``kafka`` (a ``KafkaSettings``, or ``None`` where
    Kafka is optional: then the block exists only when a bootstrap is given). ``kafka_keys`` maps the
    flat names the service's callers used before the block existed (``bootstrap_servers``,
    ``topic_prefix``) to the block's fields, so ``Settings(topic_prefix="t.")`` still works.
    """

    kafka_keys: ClassVar[dict[str, str]] = {}
    kafka_optional: ClassVar[bool] = False

    @model_validator(mode="before")
    @classmethod
    def _kafka_block(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        flat = {field: data.pop(key) for key, field in cls.kafka_keys.items() if key in data}
        flat = {field: value for field, value in flat.items() if value is not None}
        block = data.get("kafka")
        if flat:
            base = block.model_dump() if isinstance(block, KafkaSettings) else (block or {})
            block = {**base, **flat}
            data["kafka"] = block
        if cls.kafka_optional and isinstance(block, dict) and "bootstrap" not in block:
            data["kafka"] = None  # no bootstrap anywhere: no Kafka
        return data


