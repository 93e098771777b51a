"""Keys, partitions and raw messages: the few byte-level conventions the pipeline relies on.

Every topic the pipeline reads is consumed as raw bytes (Faust ``value_serializer="raw"``) and
decoded with ``schemas.wire.decode`` by our own code, so a malformed record is counted and skipped
instead of raising inside Faust's deserializer.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.partitioner import murmur2


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One consumed record, independent of Faust (unit tests build these directly)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as Java and aiokafka) picks for ``key``.

    Stage 2 uses it to know which pools it owns: the pool's summaries and its tick state live on the
    usage-topic partition of the pool's name.
    """
    if partitions <= 0:
        raise ValueError("partitions must be positive")
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def windows_key(partition: int, entitlement: str) -> str:
    """Stage 1 keeps one record per (requests partition, entitlement)."""
    return f"{partition}/{entitlement}"


def inputs_key(pool: str, entitlement: str, partition: int) -> str:
    """Stage 2 keeps the latest summary per (pool, entitlement, requests partition)."""
    return f"{pool}/{entitlement}/{partition}"
