"""The bookkeeping of ``CompactedReader``, kept apart from its I/O loop so it is tested without Kafka.

- ``Progress``: where each partition is (the next offset to read), where a new consumer resumes, and
  whether the partitions have been read up to a target (the end offsets seen at start, possibly
  extended by the follower: the config sync reads back what it seeded);
- ``Contact``: whether the broker answered recently, and how often it came back after being lost;
- ``Backoff``: how long to wait before recreating a consumer that failed;
- ``partitions_in``: partition ids per topic from ``AIOKafkaAdminClient.describe_topics`` (public API).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Partition(NamedTuple):
    """A topic partition (equal to aiokafka's ``TopicPartition`` of the same topic and partition)."""

    topic: str
    partition: int


@dataclass
class Progress:
    """Positions per partition and the caught-up target.

    ``positions`` holds the next offset to read; a partition without one starts at the beginning.
    ``target`` is set when a consumer connects before the reader caught up (``aim``); ``caught_up``
    then says whether every partition reached it. Once caught up, the reader stays caught up.
    """

    positions: dict[Partition, int] = field(default_factory=dict)
    target: dict[Partition, int] | None = None
    caught_up: bool = False

    def resume(self, partitions: Iterable[Partition]) -> tuple[list[Partition], dict[Partition, int]]:
        """Where a new consumer starts: the partitions to seek to the beginning, and the others' offsets."""
        fresh = [tp for tp in partitions if tp not in self.positions]
        known = {tp: self.positions[tp] for tp in partitions if tp in self.positions}
        return fresh, known

    def read(self, tp: Partition, next_offset: int) -> None:
        """The consumer is at ``next_offset`` on ``tp`` (a record at ``next_offset - 1`` was read, or the
        consumer's position moved past a gap); positions never go back."""
        if next_offset > self.positions.get(tp, -1):
            self.positions[tp] = next_offset

    def position(self, tp: Partition) -> int:
        return self.positions.get(tp, 0)

    def aim(self, end: Mapping[Partition, int]) -> None:
        """Catch up to ``end`` (the end offsets of a consumer that just connected), unless caught up."""
        if not self.caught_up:
            self.target = dict(end)

    def extend(self, more: Mapping[Partition, int]) -> None:
        """Read at least up to ``more`` too before catching up."""
        target = self.target if self.target is not None else {}
        for tp, offset in more.items():
            target[tp] = max(target.get(tp, 0), offset)
        self.target = target

    def reached(self) -> bool:
        """Every partition read up to the target (an empty target is reached at once)."""
        if self.caught_up:
            return True
        if self.target is None:
            return False
        return all(self.position(tp) >= offset for tp, offset in self.target.items())

    def lagging(self) -> list[Partition]:
        """The partitions still short of the target (none once caught up)."""
        if self.caught_up or self.target is None:
            return []
        return [tp for tp, offset in self.target.items() if self.position(tp) < offset]

    def settle(self) -> None:
        self.caught_up = True
        self.target = None


@dataclass
class Contact:
    """Liveness from the last fetch response: ``connected`` while one came within ``timeout`` seconds.

    ``reconnects`` counts the times contact came back after it had been made once and then lost.
    """

    timeout: float = 5.0
    connected: bool = False
    reconnects: int = 0
    last_contact: float | None = None  # wall time of the last fetch response seen
    _ever: bool = False

    def polled(self, last_poll: float | None, now: float) -> str | None:
        """The newest fetch response's wall time (None: none yet); returns ``"reconnected"`` or ``"lost"``
        when the state changes that way."""
        if last_poll is not None and (self.last_contact is None or last_poll > self.last_contact):
            self.last_contact = last_poll
        return self._set(last_poll is not None and now - last_poll < self.timeout)

    def lost(self) -> str | None:
        """The consumer failed outright."""
        return self._set(False)

    def _set(self, alive: bool) -> str | None:
        change = None
        if alive and not self.connected:
            if self._ever:
                self.reconnects += 1
                change = "reconnected"
            self._ever = True
        elif self.connected and not alive:
            change = "lost"
        self.connected = alive
        return change


@dataclass
class Backoff:
    """Exponential backoff between failed connections: ``initial`` doubling up to ``cap``; ``reset`` once
    a consumer got going again."""

    initial: float = 1.0
    cap: float = 5.0
    _next: float | None = None

    def next(self) -> float:
        delay = self.initial if self._next is None else self._next
        self._next = min(self.cap, max(delay * 2, self.initial))
        return delay

    def reset(self) -> None:
        self._next = None


def partitions_in(described: Sequence[Mapping[str, Any]], topics: Iterable[str]) -> dict[str, list[int]]:
    """Partition ids per topic from ``describe_topics()`` rows; a topic missing, in error (it does not
    exist, or is being created) or without partitions yet is left out."""
    wanted = set(topics)
    out: dict[str, list[int]] = {}
    for row in described:
        name = row.get("topic")
        if name not in wanted or row.get("error_code", 0) != 0:
            continue
        ids = sorted(int(p["partition"]) for p in row.get("partitions") or ())
        if ids:
            out[str(name)] = ids
    return out
