"""A pool's replicas as this admitter sees them: membership, outstanding requests, cool-downs, the pick."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence


class Replica:
    __slots__ = ("base", "down_until", "failures", "outstanding", "requests", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        base = url.rstrip("/")
        self.base = base[:-3] if base.endswith("/v1") else base  # paths below start with /v1
        self.outstanding = 0
        self.requests = 0
        self.failures = 0
        self.down_until = 0.0


class ReplicaSet:
    """A pool's replicas with this admitter's outstanding count each.

    Membership can change while requests run (``replace``, from ``admitter.kafka.discovery``): a request
    holds its ``Replica`` object, so one on a removed replica finishes there (the replica is
    draining) while new requests only pick current members.
    """

    def __init__(self, urls: Sequence[str], cooldown: float = 2.0) -> None:
        self.replicas = [Replica(u) for u in dict.fromkeys(urls)]
        self.cooldown = cooldown
        self._turn = 0
        self._removed: list[Replica] = []

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    @property
    def draining(self) -> list[Replica]:
        """Removed replicas that still have requests from this admitter in flight."""
        self._removed = [r for r in self._removed if r.outstanding > 0]
        return list(self._removed)

    def replace(self, urls: Sequence[str]) -> tuple[list[str], list[str]]:
        """Make ``urls`` the members (in that order); the URLs added and removed.

        A replica that stays keeps its counters (outstanding, cool-down); one that comes back while
        still draining gets its object back, so its outstanding count stays right.
        """
        current = {r.url: r for r in self.replicas}
        removed_before = {r.url: r for r in self.draining}
        members = [current.pop(u, None) or removed_before.pop(u, None) or Replica(u) for u in dict.fromkeys(urls)]
        added = [r.url for r in members if r not in self.replicas]
        self._removed = [*removed_before.values(), *(r for r in current.values() if r.outstanding > 0)]
        self.replicas = members
        return added, list(current)

    def __iter__(self) -> Iterator[Replica]:
        return iter(self.replicas)

    def __len__(self) -> int:
        return len(self.replicas)

    def pick(self, tried: Sequence[Replica] = ()) -> Replica | None:
        """Least outstanding among replicas not yet tried, cooling-down ones last; ties rotate."""
        n = len(self.replicas)
        if n == 0:
            return None
        now = time.monotonic()
        start = self._turn
        self._turn = (start + 1) % n
        best: Replica | None = None
        best_key = (True, 0)
        for i in range(n):
            r = self.replicas[(start + i) % n]
            if r in tried:
                continue
            key = (r.down_until > now, r.outstanding)
            if best is None or key < best_key:
                best, best_key = r, key
        return best

    def mark_down(self, replica: Replica) -> None:
        replica.failures += 1
        replica.down_until = time.monotonic() + self.cooldown
