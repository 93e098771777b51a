"""A live view of a load run: a progress bar over the workload's timeline with outcome counts."""

from __future__ import annotations

import asyncio
import contextlib

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from loadgen.report import GROUPS
from loadgen.runner import LoadResult, LoadRunner


async def run_with_progress(runner: LoadRunner, console: Console, title: str) -> LoadResult:
    """Run with a rich progress bar over the workload's timeline and live outcome counts."""
    p = runner.progress
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:>5.0f}/{task.total:.0f} s"),
               TextColumn("{task.fields[counts]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(title, total=runner.duration, counts="")

        def refresh() -> None:
            counts = {name: sum(p.counts[o] for o in members) for name, members in GROUPS.items()}
            text = (f"sent {p.sent}/{p.total} in flight {p.in_flight} | "
                    + " ".join(f"{k} {v}" for k, v in counts.items() if v or k in ("ok", "429", "503", "errors"))
                    + (f" | capped {p.capped}" if p.capped else ""))
            bar.update(task, completed=min(p.elapsed(), runner.duration), counts=text)

        async def tick() -> None:
            while True:
                refresh()
                await asyncio.sleep(0.25)

        ticker = asyncio.create_task(tick())
        try:
            return await runner.run()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            refresh()
