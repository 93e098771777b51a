"""What both experiments share: configs, the engine they emulate, time scaling and output files."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from schemas.loader import PlatformConfig, load_config
from schemas.workload import PoissonArrivals, TenantLoad, WorkloadSpec
from sim.control import ControlLoop, LoopSettings, Mode, SimResult
from sim.costmodel import ReplicaCostModel
from sim.workload import generate_arrivals

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


def scaled(spec: WorkloadSpec, duration: float | None) -> WorkloadSpec:
    """The workload with its whole timeline stretched to ``duration`` (rates unchanged)."""
    if duration is None or duration == spec.duration_seconds:
        return spec
    k = duration / spec.duration_seconds
    tenants = []
    for t in spec.tenants:
        arrivals = t.arrivals
        if isinstance(arrivals, PoissonArrivals) and arrivals.profile is not None:
            arrivals = arrivals.model_copy(update={"profile": [(x * k, r) for x, r in arrivals.profile]})
        elif hasattr(arrivals, "on_seconds"):
            arrivals = arrivals.model_copy(update={"on_seconds": arrivals.on_seconds * k,
                                                   "off_seconds": arrivals.off_seconds * k})
        tenants.append(t.model_copy(update={
            "arrivals": arrivals, "start": t.start * k, "end": None if t.end is None else t.end * k,
        }))
    return spec.model_copy(update={"duration_seconds": duration, "tenants": tenants})


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


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "value"):
        return value.value
    raise TypeError(f"cannot serialise {type(value).__name__}")


@contextmanager
def figure(path: Path, *args: Any, **kwargs: Any) -> Iterator[Any]:
    """A matplotlib figure saved as PNG on exit; the Agg backend needs no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*args, **kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
