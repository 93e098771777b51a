"""The empty-agent baseline of ``bench.bench_streams``: a Faust worker that only counts records.

Same ``faust.App`` settings, event loop, topic, serializers and ``take_events`` batching as the pipeline's
stage 1 agent (``streams.app``), and no work per record: what it reads per second is the ceiling
Faust's own per-record path puts on any agent on this machine. It serves the count as JSON on
``http://127.0.0.1:<port>/count``.

Run: ``python -m bench.noop_worker BOOTSTRAP PREFIX PORT`` (the benchmark starts it).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import faust

from streams.app import faust_settings
from streams.settings import PipelineSettings
from streams.worker import new_event_loop


def build(bootstrap: str, prefix: str, port: int) -> faust.App:
    s = PipelineSettings(bootstrap_servers=bootstrap, topic_prefix=prefix, web_port=port, app_id="noop-baseline")
    app = faust.App(s.full_app_id, **faust_settings(s))
    requests = app.topic(s.topics.requests, key_serializer="raw", value_serializer="raw")
    counted = {"records": 0}

    @app.agent(requests, name="noop")
    async def noop(stream: faust.StreamT) -> None:
        async for events in stream.take_events(s.batch_max, within=s.batch_within_s):
            counted["records"] += len(events)

    @app.page("/count")
    async def count(web: Any, request: Any) -> Any:
        return web.json({**counted, "ready": not app.rebalancing})

    del noop, count
    return app


def main(argv: list[str]) -> None:
    bootstrap, prefix, port = argv[0], argv[1], int(argv[2])
    asyncio.set_event_loop(new_event_loop())  # the pipeline worker's loop (uvloop where installed)
    app = build(bootstrap, prefix, port)
    app.finalize()
    faust.Worker(app, loglevel="warn", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1:])
