"""The history process: one process owns the store, runs the sink, and serves queries and /metrics.

Why one process: embedded chDB allows one process per data directory, so the sink and every reader
of the embedded store must share it; the HTTP endpoint is how notebooks, the CLI and the admitters'
``/v1/usage`` read it meanwhile. Against a ClickHouse server the same process runs unchanged (and
several may share the consumer group).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

from streams.history.metrics import HistoryMetrics
from streams.history.migrate import migrate
from streams.history.settings import HistorySettings
from streams.history.sink import HistorySink
from streams.history.store import open_store

log = logging.getLogger("tokenpools.history")
PROGRESS_EVERY_S = 10.0


async def serve_history(settings: HistorySettings, *, from_earliest: bool = False,
                        stop: asyncio.Event | None = None) -> None:
    """Migrate, then run the sink and the HTTP endpoint until ``stop`` is set (or SIGINT/SIGTERM)."""
    from streams.history.server import create_app, run_server

    store = await asyncio.to_thread(open_store, settings.store)
    try:
        report = await asyncio.to_thread(migrate, store, settings.store)
        log.info("history store %s: %d migrations applied, %d already", store.where, len(report.applied),
                 len(report.already))
        metrics = HistoryMetrics()
        sink = HistorySink(store, settings, metrics, from_earliest=from_earliest)
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        app = create_app(store, settings.server, metrics.registry)
        tasks = [asyncio.create_task(sink.run(), name="history-sink"),
                 asyncio.create_task(run_server(app, settings.server.host, settings.server.port), name="history-http"),
                 asyncio.create_task(_progress(sink), name="history-progress")]
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in [waiter, *tasks]:
            task.cancel()
        for task in [waiter, *tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for task in done:
            if task is not waiter and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        store.close()


async def _progress(sink: HistorySink) -> None:
    """A log line every ten seconds while rows flow: events so far, rows/s, the largest lag."""
    last = -1
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        m = sink.metrics
        if sink.inserted_events == last:
            continue
        last = sink.inserted_events
        lag = max((int(sample.value) for family in m.lag.collect() for sample in family.samples), default=0)
        log.info("history: %d events written, %.0f rows/s, largest lag %d records, %d partitions",
                 sink.inserted_events, m.rate.rate(time.monotonic()), lag, len(sink.feeds))


def run_history(settings: HistorySettings, *, from_earliest: bool = False) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve_history(settings, from_earliest=from_earliest))
