"""Admin write latency and config propagation lag between two admitters on the config topic.

Two admitters (``AdmitterState`` with a ``ConfigSync`` each, in this process) share one prefix. Each
round creates an entitlement with a fresh API key at admitter 1 (``put_entitlement``: validate,
publish with acks=all, wait for the ack, apply) and then polls admitter 2's key ring every 2 ms
until the key authenticates there. Prints p50/p90/p99/max of both, in milliseconds. Figures, not
assertions: the machine is shared. ``python -m bench.bench_config_lag [ROUNDS]``.

Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a local broker started for the run.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from admitter.admission.limits import LocalAllocator
from admitter.events import InMemorySink
from admitter.http.app import create_app
from admitter.settings import AdmitterSettings
from bench.kafka_parts import kafka
from schemas.loader import PlatformConfig
from schemas.specs import Entitlement, TokenPool
from schemas.topics import Topics
from streams.topics import create_topics


def _pool() -> TokenPool:
    return TokenPool.model_validate({"metadata": {"name": "p"}, "spec": {
        "model": "p", "perReplica": {"throughput": 1000, "kv": 10000, "concurrency": 10},
        "replicas": {"min": 1, "max": 2, "initial": 1}}})


def _ent(name: str, key: str) -> Entitlement:
    return Entitlement.model_validate({"metadata": {"name": name}, "spec": {
        "pool": "p", "tenant": name, "tier": "elastic", "burst": {"throughput": 100, "kv": 1000, "concurrency": 1},
        "apiKeys": [{"sha256": hashlib.sha256(key.encode()).hexdigest()}]}})


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(bootstrap: str, rounds: int, spool: Path) -> tuple[list[float], list[float]]:
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    await create_topics(bootstrap, Topics(prefix).specs(partitions=1))
    states = []
    for i in (1, 2):
        settings = AdmitterSettings(admitter_id=f"a{i}", kafka_bootstrap=bootstrap, topic_prefix=prefix,
                                    spool_dir=spool / f"a{i}", config_wait_seconds=30)
        app = create_app(settings, PlatformConfig(pools={"p": _pool()}), sink=InMemorySink(),
                         limits=LocalAllocator())
        await app.state.admitter.start()
        states.append(app.state.admitter)
    a1, a2 = states
    writes: list[float] = []
    lags: list[float] = []
    try:
        for n in range(rounds):
            key = f"tp-bench-{uuid.uuid4().hex}"
            t0 = time.perf_counter()
            await a1.put_entitlement(_ent(f"e{n}", key))
            t1 = time.perf_counter()
            while a2.keyring.lookup(key) is None:  # noqa: ASYNC110 - the key ring has no change event
                await asyncio.sleep(0.002)
            t2 = time.perf_counter()
            writes.append((t1 - t0) * 1000)
            lags.append((t2 - t1) * 1000)
    finally:
        for state in states:
            await state.stop()
    return writes, lags


def main(rounds: int | None = None) -> None:
    rounds = rounds or 50
    with kafka() as bootstrap, tempfile.TemporaryDirectory(prefix="bench-config-") as tmp:
        writes, lags = asyncio.run(run(bootstrap, rounds, Path(tmp)))
    for label, values in (("admin write (validate + acks=all + apply), ms", writes),
                          ("then until the key works at admitter 2, ms", lags)):
        print(f"{label}: p50 {statistics.median(values):.1f}  p90 {_pct(values, 0.9):.1f}  "
              f"p99 {_pct(values, 0.99):.1f}  max {max(values):.1f}  (n={len(values)})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else None)
