"""The error MirrorMaker's wrapper raises, and how it talks to the terminal."""

from __future__ import annotations

import sys

from tokenpools.infra.kafka_local.errors import KafkaStartError


class MirrorMakerError(KafkaStartError):
    """One-line, actionable reason why MirrorMaker could not start (a KafkaStartError, so one except serves both)."""


def say(msg: str) -> None:
    print(f"mirror_local: {msg}", file=sys.stderr, flush=True)
