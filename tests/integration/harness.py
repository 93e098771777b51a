"""Shared harness for integration tests that run the real pipeline: worker subprocesses, a Kafka
client for test topics, event factories and ``eventually``.

Workers run as ``python -m tokenpools.cli streams worker`` subprocesses with a topic prefix (every topic
and the app id get it) and short windows (1 s tumbling, 3 s hopping every 1 s) and a 0.25 s pool tick,
so numbers settle in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from schemas import topics
from schemas.records import Amounts, EntitlementState, Outcome, Phase, PoolState, RequestEvent
from schemas.topics import Topics
from schemas.wire import encode
from tokenpools.kafka.reader import read_records

REPO = Path(__file__).resolve().parents[2]
TICK_S = 0.25

POOLS_YAML = """\
apiVersion: tokenpools.dev/v1alpha1
kind: TokenPool
metadata: {name: %(pool)s}
spec:
  model: m-%(pool)s
  perReplica: {throughput: 1000, kv: 100000, concurrency: 100}
  targetUtilisation: {throughput: 1.0, kv: 1.0, concurrency: 1.0}
  replicas: {min: 1, max: 8, initial: 1}
  tokenWeights: {input: 0.5, output: 1.0}
  reclaimBuffer: 0.0
  tickSeconds: %(tick)s
"""
ENT_YAML = """\
apiVersion: tokenpools.dev/v1alpha1
kind: Entitlement
metadata: {name: %(name)s}
spec:
  pool: %(pool)s
  tenant: t-%(name)s
  tier: %(tier)s
  guarantee: %(guarantee)s
  burst: {throughput: 100000, kv: 1000000, concurrency: 1000}
  weight: 1
"""


def write_config(path: Path, pools: dict[str, list[tuple[str, str]]]) -> Path:
    docs = []
    for pool, ents in pools.items():
        docs.append(POOLS_YAML % {"pool": pool, "tick": TICK_S})
        for name, tier in ents:
            guarantee = "{throughput: 100, kv: 1000, concurrency: 1}" if tier == "guaranteed" else "{}"
            docs.append(ENT_YAML % {"name": name, "pool": pool, "tier": tier, "guarantee": guarantee})
    path.write_text("---\n".join(docs))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Worker:
    """One `python -m tokenpools.cli streams worker` subprocess."""

    def __init__(self, bootstrap: str, prefix: str, config: Path, log: Path, *extra: str) -> None:
        self.port = free_port()
        self.log = log
        self.args = [
            sys.executable, "-m", "tokenpools.cli", "streams", "worker", "--bootstrap", bootstrap,
            "--config", str(config), "--web-port", str(self.port), "--topic-prefix", prefix,
            "--tumbling-seconds", "1", "--hop-size-seconds", "3", "--hop-step-seconds", "1", "--grace-seconds", "0.2",
            "--summary-interval", "0.25", "--commit-interval", "0.5", "--session-timeout", "6", "--log-level", "warn",
            "--data-dir", str(log.parent / f"{log.stem}.faust-data"), *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                         start_new_session=True)
        return self

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no final commit (what a crash looks like)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=2.0) as client:
            return await client.get(f"http://127.0.0.1:{self.port}{path}")

    async def status(self) -> dict[str, Any]:
        return (await self.get("/streams/status")).json()

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = (await self.get("/metrics")).text
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    async def wait_ready(self, within: float = 90.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                status = await self.status()
                if status["ready"] and status["config_ready"]:
                    return
            await asyncio.sleep(0.3)
        raise AssertionError(f"worker not ready after {within}s:\n{self.tail()}")


def event(ent: str, pool: str, tier: str, phase: Phase, outcome: Outcome, ts: float, **kw: Any) -> RequestEvent:
    return RequestEvent(
        request_id=kw.pop("request_id", uuid.uuid4().hex), phase=phase, outcome=outcome, ts=ts,
        admitter_id=kw.pop("admitter_id", "adm-1"), tenant=f"t-{ent}", entitlement=ent, pool=pool, tier=tier, **kw,
    )


def request_pair(ent: str, pool: str, tier: str, ts: float, *, prompt: int = 100, output: int = 40,
                 admitter_id: str = "adm-1", outcome: Outcome = Outcome.ADMITTED) -> list[RequestEvent]:
    reserved = Amounts(throughput=0.5 * prompt + output, kv=prompt + 100, concurrency=1)
    decision = event(ent, pool, tier, Phase.DECISION, outcome, ts, reserved=reserved, prompt_tokens=prompt,
                     max_tokens=100, admitter_id=admitter_id)
    if outcome is Outcome.REFUSED:
        return [decision]
    done = event(ent, pool, tier, Phase.FINISH, Outcome.COMPLETED, ts, request_id=decision.request_id,
                 reserved=reserved, prompt_tokens=prompt, output_tokens=output, latency_s=0.5, admitter_id=admitter_id)
    return [decision, done]


class Kafka:
    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.topics = Topics(prefix)
        # unprefixed name (``schemas.topics.REQUESTS``, ...) -> this run's topic
        self._names = {bare.name: named.name for bare, named in zip(Topics().specs(), self.topics.specs(), strict=True)}
        self.producer: AIOKafkaProducer | None = None

    def topic(self, name: str) -> str:
        """The topic of this run named ``name`` without the prefix (``schemas.topics.REQUESTS``, ...)."""
        return self._names[name]

    async def send(self, topic: str, value: bytes | None, key: bytes | None) -> None:
        if self.producer is None:
            self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
            await self.producer.start()
        await self.producer.send(self.topic(topic), value, key=key)

    async def publish(self, events: list[RequestEvent]) -> None:
        for ev in events:
            await self.send(topics.REQUESTS, encode(ev), ev.entitlement.encode())
        assert self.producer is not None
        await self.producer.flush()

    async def read_all(self, topic: str) -> list[tuple[bytes | None, bytes | None]]:
        """Every record of a topic, from the beginning to its current end."""
        return [(key, value) for _, key, value in await read_records(self.bootstrap, [self.topic(topic)])]

    async def totals(self) -> dict[str, dict[str, Any]]:
        """Latest cumulative totals per entitlement (summed over requests partitions) from stage 1's summaries."""
        latest: dict[tuple[str, int], dict[str, Any]] = {}
        for _, value in await self.read_all(topics.ENTITLEMENT_USAGE):
            with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
                s = orjson.loads(value or b"")
                key = (s["entitlement"], s["partition"])
                if key not in latest or latest[key]["ts"] <= s["ts"]:
                    latest[key] = s
        out: dict[str, dict[str, Any]] = {}
        for (ent, _), s in latest.items():
            acc = out.setdefault(ent, {})
            for k, v in s["totals"].items():
                acc[k] = acc.get(k, 0) + v
        return out

    async def states(self) -> list[EntitlementState]:
        return [EntitlementState.model_validate_json(v) for _, v in await self.read_all(topics.ENTITLEMENT_STATE) if v]

    async def pool_states(self) -> list[PoolState]:
        return [PoolState.model_validate_json(v) for _, v in await self.read_all(topics.POOL_STATE) if v]

    async def close(self) -> None:
        if self.producer is not None:
            await self.producer.stop()


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 30.0, every: float = 0.5) -> Any:
    """Await ``check()`` until it returns a truthy value (or its assertion passes)."""
    deadline = time.monotonic() + within
    while True:
        try:
            result = await check()
            if result:
                return result
            problem: BaseException | None = None
        except AssertionError as exc:
            problem = exc
        if time.monotonic() > deadline:
            if problem is not None:
                raise problem
            raise AssertionError("condition not met in time")
        await asyncio.sleep(every)


def totals_are(io: Kafka, expected: dict[str, dict[str, int]]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        got = await io.totals()
        for ent, want in expected.items():
            have = {k: got.get(ent, {}).get(k) for k in want}
            assert have == want, f"{ent}: {have} != {want}"
        return True

    return check
