"""Capacity-model benchmarks: admission decisions per second and allocator tick time.

Prints figures only; nothing here asserts a timing. Run: `python -m bench.bench_capacity`.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from capacity.admission import decide
from capacity.allocator import AllocatorPolicy, TickInput, allocate
from capacity.live import PoolLive
from schemas.specs import Entitlement, TokenPool

console = Console()


def _pool(n_ents: int) -> PoolLive:
    pool = TokenPool.model_validate({
        "metadata": {"name": "bench"},
        "spec": {"model": "m", "perReplica": {"throughput": 1e9, "kv": 1e9, "concurrency": 1e9},
                 "replicas": {"min": 1, "max": 1}},
    })
    tiers = ("guaranteed", "elastic", "spot")
    ents = [
        Entitlement.model_validate({
            "metadata": {"name": f"e{i}"},
            "spec": {"pool": "bench", "tenant": f"t{i}", "tier": tiers[i % 3],
                     "guarantee": {"throughput": 1e3, "kv": 1e4, "concurrency": 10} if i % 3 == 0 else {},
                     "burst": {"throughput": 1e7, "kv": 1e8, "concurrency": 1e5}},
        })
        for i in range(n_ents)
    ]
    live = PoolLive(pool, ents, now=0.0)
    for e in live.entitlements.values():
        e.set_limits(1e7, 1e8, 1e5, now=0.0)
    return live


def bench_admission(decisions: int = 200_000) -> dict[str, float]:
    """Decide + release, the steady-state pair every request costs an admitter."""
    live = _pool(100)
    ents = list(live.entitlements.values())
    costs = [live.cost(500, 256, e) for e in ents]
    samples: list[float] = []
    clock = time.perf_counter_ns
    now = 0.0
    for i in range(decisions):
        e = ents[i % 100]
        rid = str(i)
        t0 = clock()
        d = decide(live, e, rid, costs[i % 100], now)
        t1 = clock()
        samples.append((t1 - t0) / 1000)
        if d.admitted:
            live.release(rid, now, 500, 200)
        now += 1e-5
    samples.sort()
    total_s = sum(samples) / 1e6
    return {
        "decisions": decisions,
        "per_second": decisions / total_s,
        "median_us": statistics.median(samples),
        "p99_us": samples[int(0.99 * len(samples))],
    }


def bench_tick(n: int, repeats: int = 7) -> dict[str, float]:
    rng = np.random.default_rng(0)
    rank = rng.integers(0, 3, n)
    guarantee = np.where((rank == 0)[:, None], rng.uniform(0, 10, (n, 3)), 0.0)
    inp = TickInput(
        capacity=np.array([n * 100.0, n * 100.0, n * 100.0]), rank=rank, weight=rng.uniform(0.5, 4, n),
        guarantee=guarantee, burst=rng.uniform(10, 1000, (n, 3)), demand=rng.uniform(0, 300, (n, 3)),
        usage=rng.uniform(0, 100, (n, 3)), debt=rng.uniform(0, 50, n), dt=1.0,
    )
    policy = AllocatorPolicy()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        allocate(inp, policy)
        times.append((time.perf_counter() - t0) * 1000)
    return {"entitlements": n, "median_ms": statistics.median(times), "min_ms": min(times)}


def main() -> None:
    adm = bench_admission()
    table = Table(title="Admission decision (decide + release, 100 entitlements, CPython)")
    for col in ("decisions/s", "median µs", "p99 µs", "target"):
        table.add_column(col, justify="right")
    table.add_row(f"{adm['per_second']:,.0f}", f"{adm['median_us']:.2f}", f"{adm['p99_us']:.2f}", "median < 10 µs")
    console.print(table)
    ticks = Table(title="Allocator tick, one pool (3 dimensions, 3 tiers, debt)")
    for col in ("entitlements", "median ms", "min ms", "target"):
        ticks.add_column(col, justify="right")
    for n in (100, 1_000, 10_000):
        r = bench_tick(n)
        target = "< 50 ms at 10,000" if n == 10_000 else ""
        ticks.add_row(f"{n:,}", f"{r['median_ms']:.2f}", f"{r['min_ms']:.2f}", target)
    console.print(ticks)


if __name__ == "__main__":
    main()
