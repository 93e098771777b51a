"""Request routing across replicas, shared by the simulated cluster and the real-time driver.

A router only sees a list of loads (outstanding requests per eligible replica) and returns an
index into it; it knows nothing of engines or clocks, so both modes use the same code and a test
can drive it with plain lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol


class Router(Protocol):
    """Chooses one of ``len(loads)`` candidate replicas."""

    def pick(self, loads: Sequence[int]) -> int:
        """Index (into ``loads``) of the replica that gets the next request."""
        ...


class LeastOutstandingRouter:
    """Least outstanding requests (running + waiting), like a least-request load balancer.

    Ties go to the lowest index (``tie_break="lowest"``, deterministic, good for tests) or rotate
    (``"round_robin"``, so equal replicas share the load when they are all idle).
    """

    __slots__ = ("_next", "tie_break")

    def __init__(self, tie_break: Literal["lowest", "round_robin"] = "lowest") -> None:
        if tie_break not in ("lowest", "round_robin"):
            raise ValueError(f"unknown tie_break {tie_break!r}")
        self.tie_break = tie_break
        self._next = 0

    def pick(self, loads: Sequence[int]) -> int:
        n = len(loads)
        if n == 0:
            raise ValueError("no replica to route to")
        m = min(loads)
        if self.tie_break == "lowest":
            return loads.index(m)
        start = self._next % n
        for j in range(n):
            i = (start + j) % n
            if loads[i] == m:
                self._next = i + 1
                return i
        raise AssertionError("unreachable")


class RoundRobinRouter:
    """Plain rotation, ignoring load; a baseline for experiments."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def pick(self, loads: Sequence[int]) -> int:
        n = len(loads)
        if n == 0:
            raise ValueError("no replica to route to")
        i = self._next % n
        self._next = i + 1
        return i
