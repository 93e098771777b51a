"""`tokenpools history`: migrate, query, questions, ask, sink and reconcile, on real chDB.

chDB allows one data directory per process and this pytest process holds one (the ``store`` fixture's),
so a command that must open a directory of its own (``migrate`` into a fresh one) runs as a subprocess;
commands that read the fixture's database run in-process (``--data-dir`` is the same directory).
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from schemas.records import Amounts, Outcome, Phase, RequestEvent
from streams.history import catalog
from streams.history.catalog import parse
from streams.history.migrate import migrate
from streams.history.rows import Located, request_block
from streams.history.server import bound_port, create_app, describe, make_server
from streams.history.settings import HistorySettings, ServerSettings, StoreSettings
from streams.history.store import HistoryStore, StoreError, open_store
from tests.history_store import store_settings_for
from tokenpools.cli import app

TOKENPOOLS = Path(sys.executable).with_name("tokenpools")
TOKEN = "cli-test-token"
T0 = float(int(time.time()) // 3600 * 3600 - 86_400)  # within retention: the TTL drops older rows
QUESTION = parse(1, "tenant_tokens", """\
-- title: Output tokens of one tenant since a time
-- param: tenant String          the tenant
-- param: start DateTime64(3)    first instant included
SELECT tenant, sum(output_tokens) AS tokens FROM request_events
WHERE tenant = {tenant:String} AND ts >= {start:DateTime64(3)} GROUP BY tenant
""")
SQL = "SELECT tenant, sum(output_tokens) AS tokens, max(ts) AS last FROM request_events GROUP BY tenant ORDER BY tenant"
LAST = datetime.fromtimestamp(T0 + 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ClickHouse URL or history settings from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith(("TOKENPOOLS_HISTORY_", "TOKENPOOLS_KAFKA_")) or name in ("CLICKHOUSE_URL",
                                                                                     "KAFKA_BOOTSTRAP_SERVERS"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def _event(n: int, tenant: str, output: int, at: float) -> RequestEvent:
    return RequestEvent(id=f"ev{n}", request_id=f"r{n}", phase=Phase.FINISH, outcome=Outcome.COMPLETED, ts=T0 + at,
                        admitter_id="a1", tenant=tenant, entitlement=f"{tenant}-ent", pool="p", tier="elastic",
                        output_tokens=output, latency_s=1.0, reserved=Amounts(throughput=1.0, kv=1.0, concurrency=1.0))


@pytest.fixture(scope="module")
def _seeded_store(chdb_dir: Path) -> Iterator[tuple[HistoryStore, StoreSettings]]:
    """A database of this module's own with three events, migrated and written once: the tests only read
    it (``test_query_is_read_only`` checks that the writes it tries are refused and the three rows stay)."""
    settings = store_settings_for(chdb_dir, f"tokenpools_cli_history_{os.getpid()}")
    s = open_store(settings)
    migrate(s, settings)
    rows = [("acme", 100, 0.0), ("acme", 50, 60.0), ("globex", 70, 30.0)]
    events = [(_event(n, t, o, at), Located("tokenpools.requests", 0, n)) for n, (t, o, at) in enumerate(rows)]
    s.insert("request_events", request_block(events), token="cli-test/seed")
    yield s, settings
    s.command(f"DROP DATABASE IF EXISTS {settings.database}")
    s.close()


@pytest.fixture
def store(_seeded_store: tuple[HistoryStore, StoreSettings]) -> HistoryStore:
    """The module's seeded store (in place of tests/conftest.py's empty one per test)."""
    return _seeded_store[0]


@pytest.fixture
def seeded(_seeded_store: tuple[HistoryStore, StoreSettings]) -> list[str]:
    """The options that point a command at the module's seeded database."""
    settings = _seeded_store[1]
    return ["--data-dir", str(settings.data_dir), "--database", str(settings.database)]


def run(*args: str) -> Any:
    return CliRunner().invoke(app, ["history", *args])


def tokenpools(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TOKENPOOLS), "history", *args], capture_output=True, text=True, timeout=timeout)


# -- in a subprocess: directories of their own


def test_migrate_twice_in_a_fresh_directory(tmp_path: Path) -> None:
    from streams.history.migrate import available

    data = tmp_path / "chdb"
    first = tokenpools("migrate", "--data-dir", str(data))
    assert first.returncode == 0, first.stderr[-2000:]
    n = len(available())
    assert "applied 0001_request_events" in first.stdout
    assert f"{n} applied, 0 already applied" in first.stdout
    second = tokenpools("migrate", "--data-dir", str(data))
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"0 applied, {n} already applied" in second.stdout
    assert "applied 0001" not in second.stdout
    third = tokenpools("query", "SELECT count() AS n FROM schema_migrations", "--data-dir", str(data), "-f", "csv")
    assert third.returncode == 0, third.stderr[-2000:]
    assert third.stdout == f"n\n{n}\n"


def test_a_locked_directory_says_to_use_the_endpoint(seeded: list[str]) -> None:
    """This process holds the fixture's directory open, as a running sink would."""
    result = tokenpools("query", "SELECT 1", *seeded)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "another process" in result.stderr
    assert "--endpoint http://127.0.0.1:8090" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_changed_migration_exits_2(tmp_path: Path) -> None:
    data = tmp_path / "chdb"
    assert tokenpools("migrate", "--data-dir", str(data)).returncode == 0
    code = ("import sys\nfrom streams.history import migrate as m\nreal = m.available\n"
            "m.available = lambda: [m.Migration(x.version, x.name, x.text + '\\n-- edited\\n') if x.version == 1 "
            "else x for x in real()]\nfrom tokenpools.cli import app\n"
            "sys.argv = ['tokenpools', 'history', 'migrate', '--data-dir', sys.argv[1]]\napp()\n")
    result = subprocess.run([sys.executable, "-c", code, str(data)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == ("error: migration 0001_request_events changed after it was applied; put the "
                                     "change in a new migration instead of editing this one")


# -- query, in-process on the fixture's database


def test_query_json(seeded: list[str]) -> None:
    result = run("query", SQL, "--format", "json", *seeded)
    assert result.exit_code == 0, result.output
    globex_last = datetime.fromtimestamp(T0 + 30, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert orjson.loads(result.stdout) == {
        "columns": ["tenant", "tokens", "last"], "types": ["LowCardinality(String)", "UInt64", "DateTime64(3, 'UTC')"],
        "rows": [["acme", 150, LAST], ["globex", 70, globex_last]]}


def test_query_csv(seeded: list[str]) -> None:
    result = run("query", "SELECT tenant, sum(output_tokens) AS tokens, NULL AS z FROM request_events "
                          "GROUP BY tenant ORDER BY tenant", "-f", "csv", *seeded)
    assert result.exit_code == 0, result.output
    assert list(csv.reader(io.StringIO(result.stdout))) == [["tenant", "tokens", "z"], ["acme", "150", ""],
                                                            ["globex", "70", ""]]


def test_query_table(seeded: list[str]) -> None:
    result = run("query", SQL, *seeded)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any("tenant" in line and "tokens" in line for line in lines)
    assert any("acme" in line and "150" in line and LAST in line for line in lines)
    assert "2 rows" in result.stdout


def test_query_is_read_only(seeded: list[str], store: HistoryStore) -> None:
    for sql in ("INSERT INTO request_events (event_id) VALUES ('x')", "DROP TABLE request_events",
                "SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')"):
        result = run("query", sql, *seeded)
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("error: read-only: "), result.stderr
    assert store.scalar("SELECT count() FROM request_events") == 3


def test_query_errors_exit_1_with_clickhouse_s_first_line(seeded: list[str], tmp_path: Path) -> None:
    result = run("query", "SELECT nosuch FROM request_events", *seeded)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: Code: 47. DB::Exception: ")
    out = tmp_path / "leak"
    result = run("query", f"SELECT 1) INTO OUTFILE '{out}'; SELECT (1", *seeded)
    assert result.exit_code == 1, result.output
    assert not out.exists()


# -- questions and ask


@pytest.fixture
def one_question(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog, "questions", lambda: {"tenant_tokens": QUESTION})


def test_questions_lists_the_catalog() -> None:
    result = run("questions", "-f", "json")
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout) == orjson.loads(orjson.dumps(describe(catalog.questions())))


def test_questions_table(one_question: None) -> None:
    result = run("questions")
    assert result.exit_code == 0, result.output
    assert "tenant_tokens" in result.stdout and "tenant String" in result.stdout


def test_ask(seeded: list[str], one_question: None) -> None:
    start = datetime.fromtimestamp(T0, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    result = run("ask", "tenant_tokens", "-p", "tenant=acme", "-p", f"start={start}", "-f", "json", *seeded)
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["rows"] == [["acme", 150]]
    result = run("ask", "tenant_tokens", "-p", "tenant=acme' OR '1'='1", "-p", "start=0", "-f", "csv", *seeded)
    assert result.exit_code == 0, result.output
    assert result.stdout == "tenant,tokens\n"


@pytest.mark.parametrize("args, message", [
    (["nope"], "no question named 'nope'; `tokenpools history questions` lists them"),
    (["tenant_tokens", "-p", "tenant=acme"], "missing parameter start"),
    (["tenant_tokens", "-p", "tenant=a", "-p", "start=0", "-p", "x=1"], "unknown parameter x"),
    (["tenant_tokens", "-p", "tenant"], "-p takes KEY=VALUE"),
    (["tenant_tokens", "-p", "tenant=a", "-p", "tenant=b"], "parameter tenant given twice"),
    (["tenant_tokens", "-p", "tenant=a", "-p", "start=soon"], "must be an ISO 8601 time"),
])
def test_ask_refuses_bad_parameters_with_exit_2(one_question: None, args: list[str], message: str) -> None:
    result = run("ask", *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr


# -- through a running history process's endpoint


@contextmanager
def served(store: HistoryStore, token: str | None = TOKEN) -> Iterator[str]:
    app_ = create_app(store, ServerSettings(token=token), CollectorRegistry(), questions={"tenant_tokens": QUESTION})
    server = make_server(app_, "127.0.0.1", 0)
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


def test_query_through_the_endpoint(seeded: list[str], store: HistoryStore,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with served(store) as url:
        result = run("query", SQL, "--endpoint", url, "--token", TOKEN, "-f", "json")
        assert result.exit_code == 0, result.output
        assert orjson.loads(result.stdout)["rows"][0] == ["acme", 150, LAST]
        result = run("query", "SELECT tenant FROM request_events ORDER BY tenant LIMIT 1", "--url", url,
                     "--token", TOKEN, "-f", "csv")
        assert result.stdout == "tenant\nacme\n"
        monkeypatch.setenv("TOKENPOOLS_HISTORY_SERVER__TOKEN", TOKEN)  # the endpoint's own variable
        result = run("ask", "tenant_tokens", "-p", "tenant=globex", "-p", "start=0", "--endpoint", url, "-f", "json")
        assert result.exit_code == 0, result.output
        assert orjson.loads(result.stdout)["rows"] == [["globex", 70]]
        result = run("questions", "--endpoint", url, "-f", "json")
        assert [q["name"] for q in orjson.loads(result.stdout)["questions"]] == ["tenant_tokens"]
        result = run("query", "DROP TABLE request_events", "--endpoint", url)
        assert result.exit_code == 1
        assert "read-only" in result.stderr and "(HTTP 403 from" in result.stderr
        result = run("query", "SELECT 1", "--endpoint", url, "--token", "wrong")
        assert result.exit_code == 1
        assert "missing or wrong bearer token" in result.stderr and "(HTTP 401 from" in result.stderr
        result = run("ask", "nope", "--endpoint", url)
        assert result.exit_code == 1 and "HTTP 404" in result.stderr


def test_endpoint_errors(store: HistoryStore) -> None:
    result = run("query", "SELECT 1", "--endpoint", "http://127.0.0.1:9")
    assert result.exit_code == 2
    assert "--endpoint needs --token" in result.stderr
    result = run("query", "SELECT 1", "--endpoint", "127.0.0.1:8090", "--token", "t")
    assert result.exit_code == 2 and "must be an http(s):// URL" in result.stderr
    result = run("query", "SELECT 1", "--endpoint", "http://127.0.0.1:9", "--token", "t")
    assert result.exit_code == 1 and "cannot reach the history endpoint" in result.stderr
    with served(store, token=None) as url:
        result = run("query", "SELECT 1", "--endpoint", url, "--token", "t")
    assert result.exit_code == 1
    assert "TOKENPOOLS_HISTORY_SERVER__TOKEN" in result.stderr and "HTTP 503" in result.stderr


# -- bad options


@pytest.mark.parametrize("args, message", [
    (["query", "SELECT 1", "--format", "xml"], "--format must be one of table, csv, json"),
    (["query", "SELECT 1", "--data-dir", "x", "--clickhouse-url", "http://h:8123"], "not both"),
    (["query", "SELECT 1", "--clickhouse-url", "ftp://h"], "ClickHouse URL must be http(s)://"),
    (["query", "SELECT 1", "--database", "bad-name;"], "store.database"),
    (["migrate", "--retention-days", "0"], "--retention-days"),
    (["reconcile", "--from", "yesterday", "--to", "2024-05-02"], "must be an ISO 8601 time"),
    (["reconcile", "--from", "2024-05-02", "--to", "2024-05-01"], "must be before --to"),
    (["reconcile", "--from", "2024-05-01"], "--to"),
    (["sink", "--log-level", "loud"], "log_level"),
    (["sink", "--port", "70000"], "--port"),
])
def test_bad_options_exit_2_with_a_clear_line(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output


def test_query_on_a_missing_store_says_how_to_make_one(tmp_path: Path) -> None:
    result = run("query", "SELECT 1", "--data-dir", str(tmp_path / "none"))
    assert result.exit_code == 2
    assert "no history store in" in result.stderr and "tokenpools history migrate" in result.stderr
    assert not (tmp_path / "none").exists()


def test_a_server_that_is_not_there_exits_2() -> None:
    result = run("query", "SELECT 1", "--clickhouse-url", "http://127.0.0.1:9/db")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: cannot open the history store")


# -- sink and reconcile: the options reach the other modules


def test_sink_maps_its_options_onto_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[HistorySettings, bool]] = []
    fake = types.ModuleType("streams.history.process")
    fake.run_history = lambda settings, *, from_earliest=False: calls.append((settings, from_earliest))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "streams.history.process", fake)
    monkeypatch.setenv("CLICKHOUSE_URL", "http://elsewhere:8123")  # --data-dir wins: chDB as asked
    result = run("sink", "-b", "k1:9092,k2:9093", "--topic-prefix", "t1.", "--data-dir", str(tmp_path), "--port", "0",
                 "--group-id", "g-1", "--from-earliest", "--retention-days", "7", "--log-level", "DEBUG",
                 "--database", "hist")
    assert result.exit_code == 0, result.output
    [(settings, from_earliest)] = calls
    assert from_earliest is True
    assert settings.kafka.bootstrap == "k1:9092,k2:9093" and settings.kafka.prefix == "t1."
    assert settings.store.embedded and settings.store.data_dir == tmp_path and settings.store.database == "hist"
    assert settings.store.retention_days == 7
    assert settings.server.port == 0 and settings.server.host == "127.0.0.1"
    assert settings.sink.group_id == "g-1" and settings.log_level == "debug"

    calls.clear()
    assert run("sink").exit_code == 0
    [(settings, from_earliest)] = calls
    assert from_earliest is False and not settings.store.embedded  # CLICKHOUSE_URL without --data-dir
    assert settings.server.port == 8090 and settings.sink.group_id == "tokenpools-history"


def test_sink_store_errors_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(settings: HistorySettings, *, from_earliest: bool = False) -> None:
        raise StoreError("cannot open the history store /x: is it open in another process?")

    fake = types.ModuleType("streams.history.process")
    fake.run_history = fail  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "streams.history.process", fake)
    result = run("sink")
    assert result.exit_code == 2
    assert result.stderr == "error: cannot open the history store /x: is it open in another process?\n"


@dataclass
class _Report:
    rows: list[dict[str, Any]] = field(default_factory=list)
    ok: bool = True


def _fake_reconcile(monkeypatch: pytest.MonkeyPatch, report: _Report) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []
    fake = types.ModuleType("streams.history.reconcile")

    def reconcile(store: HistoryStore, start: datetime, end: datetime) -> _Report:
        calls.append((store.scalar("SELECT count() FROM request_events"), start, end))
        return report

    fake.reconcile = reconcile  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "streams.history.reconcile", fake)
    return calls


def test_reconcile_prints_the_report(seeded: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_reconcile(monkeypatch, _Report([{"check": "raw vs 1m rollup", "raw": 3, "rollup": 3, "ok": True}]))
    result = run("reconcile", "--from", "2024-05-01T00:00:00Z", "--to", "2024-05-02", *seeded)
    assert result.exit_code == 0, result.output
    assert calls == [(3, datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 2, tzinfo=UTC))]
    assert "raw vs 1m rollup" in result.stdout and "every total agrees" in result.stdout
    result = run("reconcile", "--from", "2024-05-01", "--to", "2024-05-02", "-f", "json", *seeded)
    assert orjson.loads(result.stdout) == {"ok": True, "rows": [{"check": "raw vs 1m rollup", "raw": 3,
                                                                 "rollup": 3, "ok": True}]}


def test_reconcile_mismatch_exits_1(seeded: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_reconcile(monkeypatch, _Report([{"check": "raw vs window", "raw": 3, "window": 4, "ok": False}], ok=False))
    result = run("reconcile", "--from", "2024-05-01", "--to", "2024-05-02", *seeded)
    assert result.exit_code == 1, result.output
    assert "MISMATCH" in result.stdout
