"""Where request events go: a small async sink protocol, so Kafka can replace memory later.

The admitter emits one ``RequestEvent`` at each decision (admitted or refused) and one when an
admitted request ends. A sink must not block the request path: a durable sink (Kafka) should
buffer or spool inside ``emit`` and return quickly.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from admitter.stats import ReportsStats, Stats
from schemas.records import Phase, RequestEvent


@runtime_checkable
class EventSink(Protocol):
    async def emit(self, event: RequestEvent) -> None: ...

    async def close(self) -> None: ...


class InMemorySink:
    """Keeps the most recent ``maxlen`` events in memory (tests, the demo, a single-process setup)."""

    def __init__(self, maxlen: int | None = 100_000) -> None:
        self.events: deque[RequestEvent] = deque(maxlen=maxlen)
        self.closed = False
        self._changed = asyncio.Event()

    async def emit(self, event: RequestEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def close(self) -> None:
        self.closed = True

    def for_request(self, request_id: str) -> list[RequestEvent]:
        return [e for e in self.events if e.request_id == request_id]

    def finished(self) -> list[RequestEvent]:
        return [e for e in self.events if e.phase is Phase.FINISH]

    async def wait_for(self, predicate: Predicate) -> list[RequestEvent]:
        """Wait until some events satisfy ``predicate`` (tests: the finish event follows the response).

        Callers bound the wait themselves (``asyncio.timeout``).
        """
        while True:
            found = [e for e in self.events if predicate(e)]
            if found:
                return found
            self._changed.clear()
            await self._changed.wait()


class Predicate(Protocol):
    def __call__(self, event: RequestEvent) -> bool: ...


class FanOutSink:
    """Sends every event to several sinks (e.g. memory for /v1/usage and Kafka for the pipeline)."""

    def __init__(self, sinks: Iterable[EventSink]) -> None:
        self.sinks = list(sinks)

    async def emit(self, event: RequestEvent) -> None:
        for sink in self.sinks:
            await sink.emit(event)

    async def close(self) -> None:
        for sink in self.sinks:
            await sink.close()

    def stats(self) -> Sequence[Stats]:
        """What the sinks that report stats report (the Kafka sink's counters; memory has none)."""
        return [s for sink in self.sinks if isinstance(sink, ReportsStats) for s in sink.stats()]
