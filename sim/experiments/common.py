"""What both experiments share: configs, the engine they emulate and the runs.

Time scaling (`scaled`) is the arrival generator's (`schemas.arrivals`); the output files (tables,
JSON, figures) are written by `tokenpools.infra.results`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from schemas.arrivals import generate_arrivals
from schemas.loader import PlatformConfig, load_config
from schemas.workload import TenantLoad, WorkloadSpec
from sim.control import ControlLoop, LoopSettings, Mode, SimResult
from sim.costmodel import ReplicaCostModel

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"

# The vLLM deployment both modes run: chunked prefill with a 2048-token step budget (a latency
# setting) and `--scheduling-policy priority`. Token pools sends the tier as the request priority;
# the baseline sends none, so for it the engine is FCFS.
ENGINE = ReplicaCostModel(max_num_batched_tokens=2048, scheduling_policy="priority")


@dataclass(frozen=True)
class Run:
    label: str
    mode: Mode
    workload: WorkloadSpec
    engine: ReplicaCostModel = ENGINE


def load(config_dir: Path | None = None) -> PlatformConfig:
    return load_config(config_dir or EXAMPLES)


def without(spec: WorkloadSpec, keep: Callable[[TenantLoad], bool]) -> WorkloadSpec:
    return spec.model_copy(update={"tenants": [t for t in spec.tenants if keep(t)]})


def run_all(config: PlatformConfig, runs: Sequence[Run], seed: int, replicas: int, max_replicas: int,
            autoscale: bool, console: Console, drain: float = 0.0) -> dict[str, SimResult]:
    """Run each mode on the same seeded arrivals, with one progress bar per run."""
    results: dict[str, SimResult] = {}
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), TaskProgressColumn(),
                  TextColumn("{task.completed:>5.0f}/{task.total:.0f} sim s"), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        tasks = {run.label: progress.add_task(run.label, total=run.workload.duration_seconds) for run in runs}
        for run in runs:
            spec = run.workload
            pool = config.pools[spec.pool]
            ents = config.entitlements_of(pool.name)
            arrivals = generate_arrivals(spec, seed=seed)
            loop = ControlLoop(pool, ents, run.mode, LoopSettings(
                replicas=replicas, max_replicas=max_replicas, autoscale=autoscale, cost_model=run.engine))
            task = tasks[run.label]
            results[run.label] = loop.run(arrivals, spec.duration_seconds,
                                          progress=lambda t, task=task: progress.update(task, completed=t),
                                          drain=drain)
    return results
