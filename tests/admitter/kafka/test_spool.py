"""The admitter's event spool on its own (no broker): durable appends, commits, segment rolls, torn tails.

The spool with a broker behind it (outages, replays by the next sink) is tested in
tests/integration/test_admitter_kafka.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from admitter.kafka.spool import Spool


def test_spool_replays_unacked_records_in_order_and_cuts_a_torn_tail(tmp_path: Path) -> None:
    async def run() -> None:
        spool = Spool(tmp_path, segment_bytes=200)
        for i in range(10):
            spool.append(b"k", f"v{i}".encode())
        assert spool.read() == []  # not durable yet
        await spool.sync()
        while spool.dirty or spool.has_unread():
            batch = spool.read(max_records=3)
            if batch:
                await spool.commit(batch[-1].end)
                break
        for i in range(10, 20):
            spool.append(b"k", f"v{i}".encode())
            await spool.sync()  # small segments: rolls several times
        spool.close()
        # A torn record at the end of the newest segment.
        newest = sorted(tmp_path.glob("*.log"))[-1]  # noqa: ASYNC240 - a test, on a tmp dir
        with newest.open("ab") as f:
            f.write(b"\x01\x02\x03")
        again = Spool(tmp_path, segment_bytes=200)
        got = []
        while batch := again.read(max_records=4):
            got.extend(r.value.decode() for r in batch)
        assert got == [f"v{i}" for i in range(3, 20)]
        again.close()

    asyncio.run(run())
