"""`tokenpools load` end to end against emulated replicas served from a background thread (127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.loadgen.conftest import KEYS, MODEL
from tokenpools.cli import app


@pytest.fixture
def emulator_urls() -> Iterator[list[str]]:
    """Two replicas in their own thread and event loop: the CLI runs its own ``asyncio.run``."""
    from sim.server import EmulatorServer

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    urls: list[str] = []
    stop: list[asyncio.Event] = []

    async def main() -> None:
        stop.append(asyncio.Event())
        async with EmulatorServer(2, model=MODEL, speedup=50) as em:
            urls.extend(em.urls)
            ready.set()
            await stop[0].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(20), "emulator did not start"
    try:
        yield urls
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(20)
        loop.close()


def test_load_command_writes_the_report(emulator_urls: list[str], config_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["load", "--config", str(config_dir), "--out", str(out), "--duration", "1.5", "--rate-scale", "0.5",
            "--key", f"gold={KEYS['gold']}", "--key", f"spot={KEYS['spot']}"]
    for url in emulator_urls:
        args += ["--url", url + "/v1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "per tier" in result.output and "| guaranteed |" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["workload"] == "w" and summary["duration"] == 1.5 and summary["rate_scale"] == 0.5
    assert summary["client"]["sent"] == summary["all"]["requests"] == summary["all"]["ok"] > 0
    assert {row["tier"] for row in summary["tiers"]} == {"guaranteed", "spot"}
    for name in ("table.md", "latency.png", "records.jsonl"):
        assert (out / name).stat().st_size > 0


def test_bad_options_exit_2(config_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    unknown = runner.invoke(app, ["load", "--config", str(config_dir), "--workload", "nope", "--url",
                                  "http://127.0.0.1:9"])
    assert unknown.exit_code == 2 and "no workload named 'nope'" in unknown.output
    nokey = runner.invoke(app, ["load", "--config", str(config_dir), "--no-demo-keys", "--url", "http://127.0.0.1:9"])
    assert nokey.exit_code == 2 and "no API key for entitlement(s) gold, spot" in nokey.output
    badurl = runner.invoke(app, ["load", "--config", str(config_dir), "--url", "127.0.0.1:9", "--key",
                                 f"gold={KEYS['gold']}", "--key", f"spot={KEYS['spot']}"])
    assert badurl.exit_code == 2 and "http://" in badurl.output
