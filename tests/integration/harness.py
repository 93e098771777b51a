"""Shared harness for integration tests that run the real pipeline: worker subprocesses, a Kafka
client for test topics, event factories and ``eventually``.

Workers run as ``python -m tokenpools.cli streams worker`` subprocesses with a topic prefix (every topic
and the app id get it) and short windows (1 s tumbling, 3 s hopping every 1 s), a summary of every
record each 0.25 s and a 0.25 s pool tick, so numbers settle in seconds.

Waits. ``eventually`` waits for a condition; a wait on something that goes through Kafka gets
``KAFKA_WAIT_S`` (120 s) as its bound, a generous one: it returns as soon as the condition holds, and a
hang still fails well inside the 600 s per-test timeout. An exact count is waited for with ``settled``
(``totals_are`` for the pipeline's totals): once it matches it must keep matching for ``SETTLE_S``, eight
summary intervals, so a count that overshoots after first matching (a late double count) fails
instead of passing at the moment the totals went by the right value.
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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from admitter.kafka.state_follower import StateFollower
from capacity.live import PoolLive
from schemas import topics
from schemas.loader import load_config
from schemas.records import Amounts, EntitlementState, Outcome, Phase, PoolState, RequestEvent
from schemas.topics import Topics
from schemas.wire import encode
from streams.records import UsageSummary
from tokenpools.kafka.reader import read_records

REPO = Path(__file__).resolve().parents[2]
TICK_S = 0.25  # the pools' tickSeconds
SUMMARY_S = 0.25  # the workers' --summary-interval: every record's summary (and its totals) this often
KAFKA_WAIT_S = 120.0  # bound of a wait on a condition that goes through Kafka
# How long an exact count must stay matched: eight summaries of every record (a later one carrying a
# double count would change the totals) and eight ticks of a 0.25 s pool.
SETTLE_S = 8 * max(SUMMARY_S, TICK_S)

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
  weight: %(weight)s
"""


def write_config(path: Path, pools: Mapping[str, Sequence[tuple[str, str] | tuple[str, str, float]]]) -> Path:
    """Pools of the harness's shape (1,000 weighted tokens/s per replica, one replica) and their
    entitlements, ``(name, tier)`` or ``(name, tier, weight)`` (weight 1 by default)."""
    docs = []
    for pool, ents in pools.items():
        docs.append(POOLS_YAML % {"pool": pool, "tick": TICK_S})
        for name, tier, *weight in ents:
            guarantee = "{throughput: 100, kv: 1000, concurrency: 1}" if tier == "guaranteed" else "{}"
            docs.append(ENT_YAML % {"name": name, "pool": pool, "tier": tier, "guarantee": guarantee,
                                    "weight": weight[0] if weight else 1})
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
            "--summary-interval", str(SUMMARY_S), "--commit-interval", "0.5", "--session-timeout", "6",
            "--log-level", "warn",
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

    async def summaries(self) -> list[UsageSummary]:
        """Stage 1's summaries on the internal usage topic (what stage 2 ticks on)."""
        return [UsageSummary.model_validate_json(v) for _, v in await self.read_all(topics.ENTITLEMENT_USAGE) if v]

    async def close(self) -> None:
        if self.producer is not None:
            await self.producer.stop()


class _Target:
    """What a ``StateFollower`` updates: a pool's live state (``admitter.admission.limits.LimitTarget``)."""

    def __init__(self, live: PoolLive) -> None:
        self.live = live

    def limits_changed(self) -> None:
        pass


class AppliedStates(StateFollower):
    """Another admitter's view of the pipeline: the real ``StateFollower`` over the pools of a config file,
    keeping every entitlement state it applies (``history``, in order; a re-apply of a state already
    applied is not kept again), the latest per entitlement (``latest``) and the throughput limit that this
    admitter enforces after applying each, its share (``share[(entitlement, seq)]``)."""

    def __init__(self, bootstrap: str, prefix: str, config: Path, admitter_id: str = "adm-follower") -> None:
        super().__init__(bootstrap, admitter_id, topic_prefix=prefix, initial_wait=30.0, retry_backoff=0.2,
                         contact_timeout=2.0)
        platform = load_config(config)
        now = time.monotonic()
        self._pool_targets = {
            name: _Target(PoolLive(pool, [e for e in platform.entitlements.values() if e.spec.pool == name], now))
            for name, pool in platform.pools.items()}
        self.history: list[EntitlementState] = []
        self.latest: dict[str, EntitlementState] = {}
        self.share: dict[tuple[str, int], float] = {}

    async def begin(self) -> AppliedStates:
        await self.start(self._pool_targets)
        return self

    def _apply(self, state: EntitlementState) -> bool:
        applied = super()._apply(state)
        seen = self.latest.get(state.id)
        if applied and (seen is None or seen.seq < state.seq):
            self.history.append(state)
            self.latest[state.id] = state
            self.share[state.id, state.seq] = self._pool_targets[state.pool].live.entitlements[state.id].limits()[0]
        return applied

    def seq(self, pool: str) -> int:
        """The pool's highest tick number this follower has applied (0 before any)."""
        return self.last_seq.get(pool, 0)


async def eventually(check: Callable[[], Awaitable[Any]], within: float = KAFKA_WAIT_S, every: float = 0.5) -> Any:
    """Await ``check()`` until it returns a truthy value (or its assertion passes); that value."""
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


async def settled(check: Callable[[], Awaitable[Any]], within: float = KAFKA_WAIT_S, settle: float = SETTLE_S,
                  every: float = 0.5, checks: int = 3) -> Any:
    """``eventually(check)``, then ``check`` must keep holding: re-checked every ``every`` seconds for
    ``settle`` seconds and at least ``checks`` more times. A check that stops holding fails at once
    (an exact count that went past its value is not waited out); the last value is returned.

    ``within`` bounds the wait for the first match only; settling adds ``settle`` (and the checks' own time).
    """
    first = await eventually(check, within=within, every=every)
    matched_at = time.monotonic()
    result, rechecked = first, 0
    while rechecked < checks or time.monotonic() - matched_at < settle:
        await asyncio.sleep(every)
        try:
            result = await check()
        except AssertionError as exc:
            raise AssertionError(f"matched, then changed {time.monotonic() - matched_at:.1f} s later "
                                 f"(re-check {rechecked + 1}): {exc}") from exc
        rechecked += 1
        if not result:
            raise AssertionError(f"matched, then changed {time.monotonic() - matched_at:.1f} s later "
                                 f"(re-check {rechecked}): {result!r} after {first!r}")
    return result


def totals_are(io: Kafka, expected: dict[str, dict[str, int]]) -> Callable[[], Awaitable[bool]]:
    """A check that the pipeline's cumulative totals are exactly ``expected``; wait on it with ``settled``."""

    async def check() -> bool:
        got = await io.totals()
        for ent, want in expected.items():
            have = {k: got.get(ent, {}).get(k) for k in want}
            assert have == want, f"{ent}: {have} != {want}"
        return True

    return check
