"""The seam for history: where each newly counted request event can also go (ClickHouse, later).

Stage 1 calls the sink once per event it counts (never for a replay or a duplicate), after decoding
and before the window update is persisted, so a sink sees at-least-once delivery like any other
consumer and should be idempotent by ``event.id`` (ClickHouse: a ReplacingMergeTree ordered by id).
The sink must not block: buffer inside and flush in the background.
"""

from __future__ import annotations

from collections.abc import Callable

from schemas.records import RequestEvent

HistorySink = Callable[[RequestEvent], None]


def no_history(event: RequestEvent) -> None:
    """The default: history is not written (the ClickHouse sink is a separate piece of work)."""
    del event
