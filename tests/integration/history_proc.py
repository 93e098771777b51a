"""A history sink in a process of its own, for the crash tests (chDB: one data directory per process).

``python -m tests.integration.history_proc sink BOOTSTRAP PREFIX DATA_DIR`` runs the sink until it has
caught up (then exits 0) or is killed; ``TOKENPOOLS_HISTORY_FAILPOINT`` makes it kill itself at a step.
``python -m tests.integration.history_proc counts DATA_DIR`` prints the figures a duplicate or a gap
would move, as JSON, once the sink process is gone.
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from streams.history.migrate import migrate
from streams.history.settings import HistorySettings, StoreSettings
from streams.history.sink import HistorySink
from streams.history.store import HistoryStore, open_store


def counts(store: HistoryStore) -> dict[str, object]:
    q = store.query_write_side
    raw = q("SELECT count(), uniqExact(event_id), sum(prompt_tokens), sum(output_tokens), "
            "sum(charged_throughput) FROM request_events").rows[0]
    m = q("SELECT sum(events), sum(prompt_tokens), sum(output_tokens), sum(charged_throughput) "
          "FROM request_rollup_1m").rows[0]
    h = q("SELECT sum(events), sum(prompt_tokens), sum(output_tokens), sum(charged_throughput) "
          "FROM request_rollup_1h").rows[0]
    return {"raw": [int(raw[0]), int(raw[1]), int(raw[2]), int(raw[3]), float(raw[4])],
            "minute": [int(m[0] or 0), int(m[1] or 0), int(m[2] or 0), float(m[3] or 0)],
            "hour": [int(h[0] or 0), int(h[1] or 0), int(h[2] or 0), float(h[3] or 0)],
            "blocks": int(q("SELECT count() FROM sink_blocks").rows[0][0])}


async def run_sink(bootstrap: str, prefix: str, data_dir: str) -> None:
    settings = HistorySettings(kafka={"bootstrap": bootstrap, "prefix": prefix}, store=StoreSettings(data_dir=data_dir),
                               sink={"block_records": 40, "flush_interval_s": 0.2, "session_timeout_s": 6})
    store = open_store(settings.store)
    migrate(store, settings.store)
    sink = HistorySink(store, settings)
    task = asyncio.create_task(sink.run())
    calm = 0
    while calm < 8:  # caught up for two seconds in a row
        await asyncio.sleep(0.25)
        calm = calm + 1 if sink.caught_up() else 0
        if task.done():
            task.result()
    task.cancel()
    print(orjson.dumps({"events": sink.inserted_events}).decode(), flush=True)


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "sink":
        asyncio.run(run_sink(*args))
    elif mode == "counts":
        print(orjson.dumps(counts(open_store(StoreSettings(data_dir=args[0])))).decode())
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
