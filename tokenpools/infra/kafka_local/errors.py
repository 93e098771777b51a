"""The one error the local broker raises, and how it talks to the terminal."""

from __future__ import annotations

import sys


class KafkaStartError(RuntimeError):
    """One-line, actionable reason why the local broker could not start."""


def say(msg: str) -> None:
    print(f"kafka_local: {msg}", file=sys.stderr, flush=True)


def one_line(lines: list[str], limit: int = 900) -> str:
    text = " | ".join(line.strip() for line in lines if line.strip())
    return text if len(text) <= limit else "..." + text[-limit:]
