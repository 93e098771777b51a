"""`tokenpools report` on real chDB: the seeded history, in the session's database of it.

chDB lets one process hold a data directory, and this pytest process holds the session's, so the command
runs in-process (typer's CliRunner) with ``--data-dir`` pointing at that same directory, as
tests/test_cli_history.py does; ``--endpoint`` goes through a history endpoint served from a thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from dashboards.catalog import CLICKHOUSE
from streams.history.server import bound_port, create_app, make_server
from streams.history.settings import ServerSettings, StoreSettings
from streams.history.store import HistoryStore
from tests.streams.history import seed
from tokenpools.cli import app
from tokenpools.cli.report import parse_instant

TOKEN = "report-test-token"
FROM = datetime.fromtimestamp(seed.T0_MS / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
TO = datetime.fromtimestamp(seed.END_MS / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
PANELS_ONE_ENTITLEMENT = sum(len(d.panels) for d in CLICKHOUSE)
# A panel drawn from the same rows, range and interval is drawn once per session (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("shared_renders")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ClickHouse URL or history settings from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("TOKENPOOLS_HISTORY_") or name == "CLICKHOUSE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture(scope="module")
def seeded(seeded_history: tuple[HistoryStore, StoreSettings]) -> tuple[HistoryStore, StoreSettings]:
    """The session's seeded database (tests/conftest.py): these tests only read it."""
    return seeded_history


def _where(settings: StoreSettings) -> list[str]:
    if settings.url:
        return ["--clickhouse-url", settings.url, "--database", str(settings.database)]
    return ["--data-dir", str(settings.data_dir), "--database", str(settings.database)]


def run(*args: str) -> Any:
    return CliRunner().invoke(app, ["report", *args])


def _pngs(out: Path) -> list[Path]:
    return sorted((out / "png").rglob("*.png"))


def test_report_on_the_store(seeded: tuple[HistoryStore, StoreSettings], tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = run("--from", FROM, "--to", TO, "--out", str(out), *_where(seeded[1]))
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'index.html'} (" in result.stdout
    assert "0 failed" in result.stdout
    assert "Traceback" not in result.output
    # Progress: one line per panel on stderr (rich), the last one N/N.
    n = len(json.loads((out / "report.json").read_text())["sections"][0]["panels"])
    assert n > 0
    total = sum(len(s["panels"]) for s in json.loads((out / "report.json").read_text())["sections"])
    assert f"{total}/{total} " in result.stderr
    assert len(_pngs(out)) == total
    assert (out / "index.html").read_text(encoding="utf-8").startswith("<!doctype html>")


def test_named_entitlement_and_interval(seeded: tuple[HistoryStore, StoreSettings], tmp_path: Path) -> None:
    out = tmp_path / "one"
    result = run("--from", FROM, "--to", TO, "--out", str(out), "--entitlement", "globex-batch",
                 "--interval", "3600", *_where(seeded[1]))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "report.json").read_text())
    assert summary["interval_s"] == 3600
    detail = [s for s in summary["sections"] if s["uid"] == "tokenpools-entitlement"]
    assert [s["variables"] for s in detail] == [{"entitlement": "globex-batch", "pool": "pool-b"}]
    assert "named on the command line" in detail[0]["note"]
    assert sum(len(s["panels"]) for s in summary["sections"]) == PANELS_ONE_ENTITLEMENT
    assert all("INTERVAL 3600 second" in sql for s in summary["sections"] for p in s["panels"]
               for sql in p["sql"] if "toStartOfInterval(toDateTime(" in sql)


@contextmanager
def served(store: HistoryStore) -> Iterator[str]:
    server = make_server(create_app(store, ServerSettings(token=TOKEN), CollectorRegistry()), "127.0.0.1", 0)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        yield f"http://127.0.0.1:{bound_port(server)}"
    finally:
        server.should_exit = True
        thread.join(10)
        loop.close()


def test_report_through_the_endpoint_matches_the_store(seeded: tuple[HistoryStore, StoreSettings],
                                                       tmp_path: Path) -> None:
    store, settings = seeded
    direct, remote = tmp_path / "direct", tmp_path / "remote"
    assert run("--from", FROM, "--to", TO, "--out", str(direct), "--entitlement", "acme-gold",
               *_where(settings)).exit_code == 0
    with served(store) as url:
        result = run("--from", FROM, "--to", TO, "--out", str(remote), "--entitlement", "acme-gold",
                     "--endpoint", url, "--token", TOKEN)
        assert result.exit_code == 0, result.output
        wrong = run("--from", FROM, "--to", TO, "--out", str(tmp_path / "x"), "--endpoint", url, "--token", "nope")
    assert wrong.exit_code == 1, wrong.output
    assert "401" in wrong.stderr and "Traceback" not in wrong.output

    def rows(folder: Path) -> list[tuple[str, str, int, str]]:
        summary = json.loads((folder / "report.json").read_text())
        return [(s["key"], p["slug"], p["rows"], p["status"]) for s in summary["sections"] for p in s["panels"]]

    # JSON over HTTP (times as ISO strings) draws the same panels with the same rows as the store's values.
    assert rows(remote) == rows(direct)
    assert all(status == "ok" for *_, status in rows(remote))
    assert [p.name for p in _pngs(remote)] == [p.name for p in _pngs(direct)]


@pytest.mark.parametrize(("args", "message"), [
    (["--from", "yesterday", "--to", TO], "--from must be ISO 8601"),
    (["--from", FROM, "--to", "2024-13-45T00:00:00Z"], "--to must be ISO 8601"),
    (["--from", TO, "--to", FROM], "must be before --to"),
    (["--from", FROM, "--to", FROM], "must be before --to"),
    (["--from", "-1x"], "--from must be ISO 8601"),
])
def test_bad_times_exit_2_with_a_short_message(args: list[str], message: str, tmp_path: Path) -> None:
    result = run(*args, "--out", str(tmp_path / "r"), "--data-dir", str(tmp_path / "none"))
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_unknown_entitlement_and_missing_store_exit_2(seeded: tuple[HistoryStore, StoreSettings],
                                                      tmp_path: Path) -> None:
    result = run("--from", FROM, "--to", TO, "--out", str(tmp_path / "r"), "--entitlement", "nobody",
                 *_where(seeded[1]))
    assert result.exit_code == 2, result.output
    assert "'nobody' has no events" in result.stderr and "Traceback" not in result.output
    missing = run("--from", FROM, "--to", TO, "--out", str(tmp_path / "r"), "--data-dir", str(tmp_path / "none"))
    assert missing.exit_code == 2
    assert "no history store in" in missing.stderr


def test_relative_times() -> None:
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_instant("--to", "now", now) == now
    assert parse_instant("--from", "-6h", now) == datetime(2026, 5, 1, 6, 0, tzinfo=UTC)
    assert parse_instant("--from", "now-2d", now) == datetime(2026, 4, 29, 12, 0, tzinfo=UTC)
    assert parse_instant("--from", "2026-04-30T10:00:00", now) == datetime(2026, 4, 30, 10, 0, tzinfo=UTC)


def test_the_closed_loop_writes_a_report_through_the_endpoint(seeded: tuple[HistoryStore, StoreSettings],
                                                              tmp_path: Path) -> None:
    """What the demo runs before ``up`` stops (tokenpools/experiments/closed_loop.py: history_report)."""
    import io

    from rich.console import Console

    from tokenpools.experiments.closed_loop import HistoryEndpoint, history_report

    printed = io.StringIO()
    console = Console(file=printed, width=200)
    start, end = seed.T0_MS / 1000, seed.END_MS / 1000
    with served(seeded[0]) as url:
        index = asyncio.run(history_report(HistoryEndpoint(url, TOKEN), tmp_path / "report", start, end, console))
        refused = asyncio.run(history_report(HistoryEndpoint(url, "wrong"), tmp_path / "no", start, end, console))
    assert index == str(tmp_path / "report" / "index.html")
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert summary["errors"] == [] and summary["title"] == "Closed loop: the history's dashboards"
    assert f"history report: {index}" in printed.getvalue()
    assert refused is None
    assert "no history report:" in printed.getvalue() and "401" in printed.getvalue()
