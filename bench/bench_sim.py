"""Simulated seconds per wall-clock second for experiment 1, at 4 and at 16 replicas.

The 16-replica run multiplies every tenant's arrival rate by 4 so each replica sees the same load.
Both modes run on one seed in one process, side by side, so the ratio is what to compare.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from schemas.arrivals import generate_arrivals, scaled
from schemas.workload import PoissonArrivals, WorkloadSpec
from sim.control import ControlLoop, LoopSettings, Mode
from sim.experiments.common import ENGINE, load

DURATION = 300.0


def _times(spec: WorkloadSpec, k: float) -> WorkloadSpec:
    tenants = []
    for t in spec.tenants:
        a = t.arrivals
        if isinstance(a, PoissonArrivals) and a.profile is not None:
            a = a.model_copy(update={"profile": [(x, r * k) for x, r in a.profile]})
        else:
            a = a.model_copy(update={"rate": a.rate * k})
        tenants.append(t.model_copy(update={"arrivals": a}))
    return spec.model_copy(update={"tenants": tenants})


def measure(replicas: int, mode: Mode) -> tuple[float, int]:
    config = load()
    spec = _times(scaled(config.workloads["overload"].spec, DURATION), replicas / 4)
    pool = config.pools[spec.pool]
    arrivals = generate_arrivals(spec, seed=42)
    loop = ControlLoop(pool, config.entitlements_of(pool.name), mode,
                       LoopSettings(replicas=replicas, max_replicas=max(replicas, pool.spec.replicas.max),
                                    autoscale=False, cost_model=ENGINE))
    t0 = time.perf_counter()
    loop.run(arrivals, spec.duration_seconds)
    return spec.duration_seconds / (time.perf_counter() - t0), len(arrivals)


def main() -> None:
    table = Table(title=f"Experiment 1 in simulated time ({DURATION:.0f} s timeline, seed 42)")
    for col in ("replicas", "mode", "requests", "sim s / wall s", "target"):
        table.add_column(col, justify="right")
    for replicas in (4, 16):
        for mode in (Mode.TOKENPOOLS, Mode.BASELINE):
            speed, n = measure(replicas, mode)
            table.add_row(str(replicas), mode.value, f"{n:,}", f"{speed:,.0f}x", ">= 50x at 4" if replicas == 4 else "")
    Console().print(table)


if __name__ == "__main__":
    main()
