"""Failures a test arms on one replica (``/emulator/faults``)."""

from __future__ import annotations

import random
from typing import Any


class Faults:
    """Failures a test arms on one replica: error statuses, hangs, random failures, bad health.

    A ``count`` limits a status or delay fault to that many inference requests; without it the
    fault stays until cleared. Only ``/v1/*`` inference requests are affected (and ``/health`` by
    ``health_status``), so a test can still read stats and metrics of a failing replica.
    """

    def __init__(self, fail_rate: float = 0.0, fail_status: int = 500, seed: int | str = 0) -> None:
        self._rng = random.Random(seed)
        self.default_fail_rate = fail_rate
        self.default_fail_status = fail_status
        self.clear()

    def clear(self) -> None:
        """Back to the configured ``fail_rate`` and nothing else."""
        self.status: int | None = None
        self.status_count: int | None = None
        self.delay_seconds: float = 0.0
        self.delay_count: int | None = None
        self.fail_rate = self.default_fail_rate
        self.fail_status = self.default_fail_status
        self.health_status: int | None = None

    def arm(self, *, status: int | None = None, count: int | None = None, delay_seconds: float | None = None,
            fail_rate: float | None = None, fail_status: int | None = None,
            health_status: int | None = None) -> None:
        """Add faults; ``count`` applies to the ``status`` and ``delay_seconds`` given with it."""
        for name, st in (("status", status), ("fail_status", fail_status), ("health_status", health_status)):
            if st is not None and not 400 <= st <= 599:
                raise ValueError(f"{name} must be an HTTP error status (400-599)")
        if count is not None and count < 1:
            raise ValueError("count must be >= 1")
        if delay_seconds is not None and not delay_seconds >= 0:
            raise ValueError("delay_seconds must be >= 0")
        if fail_rate is not None and not 0.0 <= fail_rate <= 1.0:
            raise ValueError("fail_rate must be within [0, 1]")
        if status is not None:
            self.status, self.status_count = status, count
        if delay_seconds is not None:
            self.delay_seconds, self.delay_count = delay_seconds, count
        if fail_rate is not None:
            self.fail_rate = fail_rate
        if fail_status is not None:
            self.fail_status = fail_status
        if health_status is not None:
            self.health_status = health_status

    def take(self) -> tuple[int | None, float]:
        """For one inference request: the error status to answer with, or the delay before serving."""
        if self.status is not None:
            st = self.status
            if self.status_count is not None:
                self.status_count -= 1
                if self.status_count <= 0:
                    self.status = self.status_count = None
            return st, 0.0
        if self.fail_rate > 0 and self._rng.random() < self.fail_rate:
            return self.fail_status, 0.0
        delay = self.delay_seconds
        if delay > 0 and self.delay_count is not None:
            self.delay_count -= 1
            if self.delay_count <= 0:
                self.delay_seconds, self.delay_count = 0.0, None
        return None, delay

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "status_count": self.status_count, "delay_seconds": self.delay_seconds,
                "delay_count": self.delay_count, "fail_rate": self.fail_rate, "fail_status": self.fail_status,
                "health_status": self.health_status}
