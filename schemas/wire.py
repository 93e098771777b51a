"""Encoding records for the topics, and decoding them without ever letting a bad one crash a consumer.

A record that is not JSON, has an unknown ``schema_version`` or fails validation is logged,
counted by topic and reason, and skipped; the consumer goes on with the next one.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from schemas.records import SCHEMA_VERSION

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


def encode(record: BaseModel) -> bytes:
    return orjson.dumps(record.model_dump(mode="json"))


class BadRecords:
    """Counts of skipped records by (topic, reason): exported as a metric by each consumer."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def note(self, topic: str, reason: str, detail: str) -> None:
        self.counts[(topic, reason)] += 1
        log.warning("skipping bad record on %s (%s): %s", topic, reason, detail[:300])

    def total(self, topic: str | None = None) -> int:
        return sum(n for (t, _), n in self.counts.items() if topic is None or t == topic)


def decode(model: type[M], value: bytes | None, topic: str, bad: BadRecords) -> M | None:
    """The record, or None after counting why it was skipped (tombstones return None uncounted)."""
    if value is None:
        return None
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        bad.note(topic, "not_json", str(exc))
        return None
    if not isinstance(data, dict):
        bad.note(topic, "not_an_object", repr(data))
        return None
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        bad.note(topic, "unknown_schema_version", f"schema_version={version!r}")
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        bad.note(topic, "invalid", str(exc).replace("\n", " "))
        return None
