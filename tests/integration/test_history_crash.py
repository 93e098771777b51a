"""The history sink killed with SIGKILL (at chosen steps and at random under load), then restarted: no
duplicate and no gap, in the raw table and in both rollups. Also a broker outage under load.

Real Kafka, real ClickHouse (chDB). The sink runs in a process of its own
(``tests/integration/history_proc.py``) so it can be killed and so its chDB directory is not this
process's. The failpoints (``TOKENPOOLS_HISTORY_FAILPOINT``) make the sink SIGKILL itself right after
a step: after writing a flush's block plan, after the rows of a flush's third block, before an
offset commit. Expected figures are computed from the events the test published.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.records import Amounts, RequestEvent
from schemas.topics import Topics
from streams.history.settings import HistorySettings
from streams.history.sink import HistorySink
from streams.topics import create_topics
from tests.integration.harness import Kafka, request_pair
from tests.integration.test_history_sink import T0, counts, expected_counts, publish_batched, running, until

pytestmark = pytest.mark.integration

PROC_TIMEOUT_S = 120.0


def traffic(n: int, ts0: float, seed: int) -> list[RequestEvent]:
    rng = random.Random(seed)
    out: list[RequestEvent] = []
    for i in range(n):
        pair = request_pair(f"e{rng.randrange(6)}", "p", rng.choice(["guaranteed", "elastic", "spot"]),
                            ts0 + i * 0.05, prompt=rng.randrange(5, 500), output=rng.randrange(1, 200))
        if len(pair) == 2:  # a finish event with what the admitter charged, so charged sums are checked too
            done = pair[1]
            charged = Amounts(throughput=done.prompt_tokens * 0.5 + done.output_tokens)
            pair[1] = done.model_copy(update={"charged": charged})
        out += pair
    return out


def expected(events: list[RequestEvent]) -> dict[str, Any]:
    n, ids, prompt, output = expected_counts(events)
    charged = sum(e.charged.throughput for e in events if e.charged is not None)
    return {"raw": [n, ids, prompt, output, charged], "rollup": [n, prompt, output, charged]}


def assert_exact(seen: dict[str, Any], want: dict[str, Any]) -> None:
    assert seen["raw"][:4] == want["raw"][:4], "raw table: a duplicate or a gap"
    assert seen["raw"][4] == pytest.approx(want["raw"][4])
    for rollup in ("minute", "hour"):
        assert seen[rollup][:3] == want["rollup"][:3], f"{rollup} rollup: a duplicate or a gap"
        assert seen[rollup][3] == pytest.approx(want["rollup"][3])


class SinkProcess:
    def __init__(self, bootstrap: str, prefix: str, data_dir: Path, log: Path) -> None:
        self.args = [sys.executable, "-m", "tests.integration.history_proc", "sink", bootstrap, prefix, str(data_dir)]
        self.data_dir = data_dir
        self.log = log

    def start(self, failpoint: str | None = None) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "TOKENPOOLS_HISTORY_FAILPOINT"}
        if failpoint:
            env["TOKENPOOLS_HISTORY_FAILPOINT"] = failpoint
        with self.log.open("ab") as out:
            return subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    cwd=Path(__file__).resolve().parents[2])

    async def run(self, failpoint: str | None = None) -> int:
        proc = self.start(failpoint)
        try:
            return await asyncio.wait_for(asyncio.to_thread(proc.wait), PROC_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            raise AssertionError(f"sink did not finish in {PROC_TIMEOUT_S:.0f} s:\n{self.tail()}") from None

    def counts(self) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-m", "tests.integration.history_proc", "counts", str(self.data_dir)],
                             capture_output=True, check=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
        return orjson.loads(out.stdout.strip().splitlines()[-1])

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture
async def topics_made(kafka: Any, prefix: str) -> Topics:
    t = Topics(prefix)
    await create_topics(kafka.bootstrap_servers, t.specs(partitions=3))
    return t


@pytest.mark.parametrize("failpoint", ["plan", "rows:3", "commit:2"])
async def test_killed_at_a_step_then_restarted(failpoint: str, kafka: Any, prefix: str, topics_made: Topics,
                                               kafka_io: Kafka, tmp_path: Path) -> None:
    events = traffic(400, T0, seed=len(failpoint))
    await kafka_io.publish(events[:300])
    await publish_batched(kafka_io, events[300:])
    sink = SinkProcess(kafka.bootstrap_servers, prefix, tmp_path / "chdb", tmp_path / "sink.log")
    code = await sink.run(failpoint)
    assert code == -signal.SIGKILL, f"the failpoint did not fire (exit {code}):\n{sink.tail()}"
    killed = sink.counts()
    assert killed["raw"][0] < len(events), "the crash came after everything was in: nothing was tested"
    assert await sink.run() == 0, sink.tail()
    assert_exact(sink.counts(), expected(events))


async def test_kill_9_at_random_under_load(kafka: Any, prefix: str, topics_made: Topics, kafka_io: Kafka,
                                           tmp_path: Path) -> None:
    """A producer keeps publishing while the sink is SIGKILLed three times at random moments."""
    rng = random.Random(7)
    events = traffic(2000, T0, seed=7)
    sink = SinkProcess(kafka.bootstrap_servers, prefix, tmp_path / "chdb", tmp_path / "sink.log")

    async def produce() -> None:
        for i in range(0, len(events), 100):
            chunk = events[i:i + 100]
            if (i // 100) % 2:
                await publish_batched(kafka_io, chunk)
            else:
                await kafka_io.publish(chunk)
            await asyncio.sleep(0.1)

    producer = asyncio.create_task(produce())
    kills = 0
    while kills < 3:
        proc = sink.start()
        await asyncio.sleep(rng.uniform(3.0, 4.5))  # joined the group and inserting by then
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        await asyncio.to_thread(proc.wait)
    await producer
    assert await sink.run() == 0, sink.tail()
    assert_exact(sink.counts(), expected(events))


async def test_broker_outage_under_load(kafka: Any, prefix: str, topics_made: Topics, kafka_io: Kafka,
                                        store: Any, store_settings: Any) -> None:
    """The broker stops while the sink is part way through a backlog, then comes back: exact counts."""
    events = traffic(3000, T0, seed=3)
    await publish_batched(kafka_io, events, per_record=20)
    settings = HistorySettings(kafka={"bootstrap": kafka.bootstrap_servers, "prefix": prefix}, store=store_settings,
                               sink={"block_records": 5, "flush_interval_s": 0.2, "session_timeout_s": 6})
    sink = HistorySink(store, settings)
    async with running(sink):
        await until(lambda: counts(store)["raw"][0] > 0)
        part_way = counts(store)["raw"][0]
        await kafka.astop()
        outage_started = time.monotonic()
        await asyncio.sleep(6.0)
        await kafka.astart()
        await until(lambda: counts(store)["raw"] == expected_counts(events), within=120.0,
                    show=lambda: counts(store))
    assert part_way < len(events), "the backlog was written before the outage: nothing was tested"
    assert time.monotonic() - outage_started >= 6.0
    seen = counts(store)
    assert seen["minute"][0] == seen["hour"][0] == len(events)
