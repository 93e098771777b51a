"""How a Kafka client connects: the one place that turns the Kafka block into client keyword arguments.

``connection(kafka)`` is what every aiokafka client of the product (producers, consumers, admin clients)
is built with: ``AIOKafkaProducer(**connection(kafka), acks="all")``. ``kafka`` is the service's
``KafkaSettings`` (bootstrap and security options, from ``TOKENPOOLS_KAFKA_*``), or a bootstrap string,
which means PLAINTEXT: tests, benches and ``tokenpools up`` (a local broker) pass one.

With PLAINTEXT the result is exactly ``{"bootstrap_servers": ...}``, what the clients were built with
before the security options were wired; otherwise it is ``KafkaSettings.client_kwargs()`` (security
protocol, SASL mechanism and credentials, an SSL context verifying with ``ssl_cafile`` or the system's CAs).
"""

from __future__ import annotations

from typing import Any

from tokenpools.kafka.settings import KafkaSettings


def connection(kafka: KafkaSettings | str) -> dict[str, Any]:
    """Keyword arguments of ``AIOKafkaProducer``/``AIOKafkaConsumer``/``AIOKafkaAdminClient``."""
    if isinstance(kafka, str):
        return {"bootstrap_servers": kafka}
    if kafka.security_protocol == "PLAINTEXT":
        return {"bootstrap_servers": kafka.bootstrap}
    return kafka.client_kwargs()


def bootstrap_of(kafka: KafkaSettings | str) -> str:
    """The bootstrap servers alone (for log lines and messages: never the credentials)."""
    return kafka if isinstance(kafka, str) else kafka.bootstrap
