"""The HTTP overload experiment's orchestration on a short timeline: real subprocesses on loopback.

Only what is robust at 10 s is asserted (who gets 429s); latency claims need the full timeline.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from tokenpools.experiments import overload_http


def test_overload_http_short(tmp_path: Path) -> None:
    out = tmp_path / "overload-http"
    summary = overload_http.run(out, duration=10.0, drain=2.0, console=Console(quiet=True))
    checks = summary["checks"]
    assert checks["passthrough"]["all_429"] == 0
    assert checks["enforcing"]["spot_429"] > 0
    assert checks["enforcing"]["guaranteed_429"] == 0
    for mode in ("passthrough", "enforcing"):
        client = checks[mode]["client"]
        assert client["sent"] == summary["requests"] > 100
        assert checks[mode]["cpu_seconds"]["admitter"] is not None
        for name in ("summary.json", "table.md", "latency.png", "records.jsonl", "admitter.log", "emulator.log"):
            assert (out / mode / name).exists(), (mode, name)
    assert set(summary["simulation"]) == {"passthrough", "enforcing"}
    assert json.loads((out / "summary.json").read_text())["duration"] == 10.0
    table = (out / "table.md").read_text()
    assert "## Guaranteed P99 TTFT during overload" in table and "| enforcing |" in table
    assert (out / "overload_http.png").read_bytes()[:4] == b"\x89PNG"
