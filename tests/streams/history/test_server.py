"""The history endpoint on real ClickHouse (chDB): auth, named questions, ad-hoc SQL under readonly.

Every attack on the ad-hoc route is tried for real: writes and DDL (403 from ``readonly``), and what
``readonly`` alone lets through in chDB (``INTO OUTFILE`` writes a file, ``;`` runs a second
statement), each refused with no file written and the tables intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from schemas.records import Amounts, Outcome, Phase, RequestEvent
from streams.history import server as server_mod
from streams.history.catalog import Question, parse
from streams.history.migrate import migrate
from streams.history.rows import Located, request_block
from streams.history.server import bound_port, create_app, make_server, serve, wrap
from streams.history.settings import ServerSettings
from streams.history.store import HistoryStore, open_store
from tests.history_store import store_settings_for

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# An hour a day ago: within the store's retention (the TTL drops older rows as they are inserted).
T0 = float(int(time.time()) // 3600 * 3600 - 86_400)
T0_ISO = dt.datetime.fromtimestamp(T0, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")

TENANT_TOKENS = """\
-- title: Output tokens of one tenant since a time
-- param: tenant String          the tenant
-- param: start DateTime64(3)    first instant included
SELECT tenant, sum(output_tokens) AS tokens, count() AS events
FROM request_events
WHERE tenant = {tenant:String} AND ts >= {start:DateTime64(3)}
GROUP BY tenant;
"""
EVENT_COUNT = """\
-- title: Events in the store
SELECT count() AS events FROM request_events
"""
QUESTIONS: dict[str, Question] = {
    "tenant_tokens": parse(1, "tenant_tokens", TENANT_TOKENS),
    "event_count": parse(2, "event_count", EVENT_COUNT),
}
# (tenant, output tokens, seconds after T0)
SEEDED = [("acme", 100, 0.0), ("acme", 50, 60.0), ("globex", 70, 30.0), ("o'brien", 7, 10.0), ("acme", 5, -3600.0)]


def _event(n: int, tenant: str, output: int, at: float) -> RequestEvent:
    return RequestEvent(id=f"ev{n}", request_id=f"r{n}", phase=Phase.FINISH, outcome=Outcome.COMPLETED, ts=T0 + at,
                        admitter_id="a1", tenant=tenant, entitlement=f"{tenant}-ent", pool="p", tier="elastic",
                        prompt_tokens=10, output_tokens=output, latency_s=1.0, ttft_s=0.1,
                        reserved=Amounts(throughput=100.0, kv=1000.0, concurrency=1.0))


def seed(store: HistoryStore) -> None:
    events = [(_event(n, t, o, at), Located("tokenpools.requests", 0, n)) for n, (t, o, at) in enumerate(SEEDED)]
    store.insert("request_events", request_block(events), token="test/seed")


def _client(store: HistoryStore, **server: object) -> TestClient:
    settings = ServerSettings(**({"token": TOKEN} | server))
    return TestClient(create_app(store, settings, CollectorRegistry(), questions=QUESTIONS))


@pytest.fixture(scope="module")
def store(chdb_dir: Path) -> Iterator[HistoryStore]:
    """One migrated, seeded database for the whole module, in the process's one chDB directory.

    Overrides the per-test ``store``: every test here only reads (what they try to write is refused,
    and the tests check the rows are still the seeded ones), and migrating per test took 3 s each.
    """
    settings = store_settings_for(chdb_dir, "history_server_tests")
    s = open_store(settings)
    migrate(s, settings)
    seed(s)
    yield s
    s.command(f"DROP DATABASE IF EXISTS {settings.database}")
    s.close()


@pytest.fixture
def client(store: HistoryStore) -> Iterator[TestClient]:
    with _client(store) as c:
        yield c


def _count(store: HistoryStore) -> int:
    return int(store.scalar("SELECT count() FROM request_events"))


# -- open routes and auth


def test_healthz_and_metrics_need_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    client.post("/query", json={"sql": "SELECT 1"}, headers=AUTH)
    client.post("/query", json={"sql": "SELECT 1"})
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert 'tokenpools_history_http_requests_total{route="/query",status="200"} 1.0' in r.text
    assert 'tokenpools_history_http_requests_total{route="/query",status="401"} 1.0' in r.text
    assert 'tokenpools_history_query_seconds_count{route="/query"} 1.0' in r.text


def test_metrics_serve_the_registry_given(store: HistoryStore) -> None:
    registry = CollectorRegistry()
    from prometheus_client import Gauge
    Gauge("tokenpools_history_sink_lag_records", "lag", registry=registry).set(42)
    with TestClient(create_app(store, ServerSettings(), registry, questions=QUESTIONS)) as c:
        assert "tokenpools_history_sink_lag_records 42.0" in c.get("/metrics").text


def test_no_token_configured_answers_503_saying_how_to_set_one(store: HistoryStore) -> None:
    with _client(store, token=None) as c:
        for r in (c.get("/questions", headers=AUTH), c.post("/query", json={"sql": "SELECT 1"}, headers=AUTH),
                  c.post("/questions/event_count", json={}, headers=AUTH)):
            assert r.status_code == 503, r.text
            assert "TOKENPOOLS_HISTORY_SERVER__TOKEN" in r.json()["error"]
            assert "token_file" in r.json()["error"]
        assert c.get("/healthz").status_code == 200


def test_unreadable_token_file_answers_503(store: HistoryStore, tmp_path: Path) -> None:
    with _client(store, token=None, token_file=tmp_path / "missing") as c:
        r = c.get("/questions", headers=AUTH)
        assert r.status_code == 503
        assert "cannot read its token file" in r.json()["error"]


def test_token_file(store: HistoryStore, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\n")
    with _client(store, token=None, token_file=path) as c:
        assert c.get("/questions", headers=AUTH).status_code == 200
        assert c.get("/questions", headers={"Authorization": "Bearer other"}).status_code == 401


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": "Bearer "}, {"Authorization": f"Bearer {TOKEN}x"},
])
def test_wrong_or_missing_token_is_401(client: TestClient, headers: dict[str, str]) -> None:
    for r in (client.get("/questions", headers=headers),
              client.post("/query", json={"sql": "SELECT 1"}, headers=headers),
              client.post("/questions/event_count", headers=headers)):
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in r.text


def test_two_authorization_headers_are_refused(client: TestClient) -> None:
    r = client.get("/questions", headers=[("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer x")])
    assert r.status_code == 400
    assert "more than one Authorization header" in r.json()["error"]


def test_auth_comes_before_the_body(client: TestClient) -> None:
    """A client without the token learns nothing about the body rules (no 413 or 400 before 401)."""
    assert client.post("/query", content=b"x" * 600_000).status_code == 401
    assert client.post("/query", content=b"{not json").status_code == 401


# -- named questions


def test_questions_are_listed(client: TestClient) -> None:
    r = client.get("/questions", headers=AUTH)
    assert r.status_code == 200
    listed = {q["name"]: q for q in r.json()["questions"]}
    assert list(listed) == ["tenant_tokens", "event_count"]
    assert listed["tenant_tokens"] == {
        "name": "tenant_tokens", "title": "Output tokens of one tenant since a time",
        "params": [{"name": "tenant", "type": "String", "help": "the tenant"},
                   {"name": "start", "type": "DateTime64(3)", "help": "first instant included"}]}
    assert listed["event_count"]["params"] == []


def test_the_real_catalog_is_served_by_default(store: HistoryStore) -> None:
    from streams.history.catalog import questions
    with TestClient(create_app(store, ServerSettings(token=TOKEN), CollectorRegistry())) as c:
        names = [q["name"] for q in c.get("/questions", headers=AUTH).json()["questions"]]
    assert names == list(questions())


def test_question_answer(client: TestClient) -> None:
    r = client.post("/questions/tenant_tokens", json={"params": {"tenant": "acme", "start": T0_ISO + "Z"}},
                    headers=AUTH)
    assert r.status_code == 200, r.text
    # 100 + 50 from T0 on; the event an hour before T0 is left out
    assert r.json() == {"columns": ["tenant", "tokens", "events"],
                        "types": ["LowCardinality(String)", "UInt64", "UInt64"], "rows": [["acme", 150, 2]]}


TWO_HOURS_EAST = (dt.datetime.fromtimestamp(T0, dt.UTC).astimezone(dt.timezone(dt.timedelta(hours=2)))
                  .strftime("%Y-%m-%d %H:%M:%S+02:00"))


@pytest.mark.parametrize("start", [T0_ISO, TWO_HOURS_EAST, T0, str(int(T0))])
def test_time_parameters_take_iso_or_unix_seconds(client: TestClient, start: object) -> None:
    """No offset is UTC; every spelling of T0 is the same instant, whatever the server's zone."""
    r = client.post("/questions/tenant_tokens", json={"params": {"tenant": "acme", "start": start}}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [["acme", 150, 2]]


def test_question_without_params(client: TestClient) -> None:
    r = client.post("/questions/event_count", headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[len(SEEDED)]]


def test_unknown_question_is_404(client: TestClient) -> None:
    r = client.post("/questions/nope", json={"params": {}}, headers=AUTH)
    assert r.status_code == 404
    assert "no question named 'nope'" in r.json()["error"]
    long = "x" * 5000
    r = client.post(f"/questions/{long}", json={}, headers=AUTH)
    assert r.status_code == 404
    assert len(r.text) < 300


def test_missing_and_unknown_params_are_named(client: TestClient) -> None:
    r = client.post("/questions/tenant_tokens", json={"params": {"tenant": "acme"}}, headers=AUTH)
    assert r.status_code == 400
    assert "missing parameter start" in r.json()["error"]
    r = client.post("/questions/tenant_tokens", json={"params": {"tenant": "a", "start": T0, "limit": 3}},
                    headers=AUTH)
    assert r.status_code == 400
    assert "unknown parameter limit" in r.json()["error"]
    r = client.post("/questions/tenant_tokens", json={"params": {}}, headers=AUTH)
    assert "missing parameters tenant, start" in r.json()["error"]
    many = {f"p{i}{'y' * 500}": 1 for i in range(50)}
    r = client.post("/questions/event_count", json={"params": many}, headers=AUTH)
    assert r.status_code == 400
    assert "and 45 more" in r.json()["error"]
    assert len(r.json()["error"]) < 600


@pytest.mark.parametrize("params, why", [
    ({"tenant": {"a": 1}, "start": T0}, "must be a string, a number"),
    ({"tenant": None, "start": T0}, "must not be null"),
    ({"tenant": "acme", "start": "yesterday"}, "must be an ISO 8601 time"),
    ({"tenant": "acme", "start": True}, "must be a time"),
    ({"tenant": ["a", {"b": 1}], "start": T0}, "list of plain values"),
])
def test_bad_param_values(client: TestClient, params: dict[str, object], why: str) -> None:
    r = client.post("/questions/tenant_tokens", json={"params": params}, headers=AUTH)
    assert r.status_code == 400
    assert why in r.json()["error"]


def test_params_must_be_an_object(client: TestClient) -> None:
    r = client.post("/questions/event_count", json={"params": [1]}, headers=AUTH)
    assert r.status_code == 400
    assert "'params' must be an object" in r.json()["error"]


def test_a_wrongly_typed_value_is_clickhouse_s_400(store: HistoryStore) -> None:
    question = parse(3, "by_count", "-- title: t\n-- param: n UInt32  n\nSELECT {n:UInt32} + 1 AS m\n")
    with TestClient(create_app(store, ServerSettings(token=TOKEN), CollectorRegistry(),
                               questions={"by_count": question})) as c:
        assert c.post("/questions/by_count", json={"params": {"n": 41}}, headers=AUTH).json()["rows"] == [[42]]
        assert c.post("/questions/by_count", json={"params": {"n": "41"}}, headers=AUTH).json()["rows"] == [[42]]
        r = c.post("/questions/by_count", json={"params": {"n": "41 OR 1=1"}}, headers=AUTH)
    assert r.status_code == 400
    assert "Code: 457" in r.json()["error"]  # BAD_QUERY_PARAMETER


@pytest.mark.parametrize("tenant", ["acme' OR '1'='1", "acme' --", "acme\\' OR 1=1 --",
                                    "x'); DROP TABLE request_events; --"])
def test_a_quoted_value_cannot_change_the_query(client: TestClient, store: HistoryStore, tenant: str) -> None:
    r = client.post("/questions/tenant_tokens", json={"params": {"tenant": tenant, "start": 0}}, headers=AUTH)
    assert r.status_code == 200, r.text
    # no tenant has that name: the value was compared, not run (and an empty answer keeps its columns)
    assert r.json() == {"columns": ["tenant", "tokens", "events"],
                        "types": ["LowCardinality(String)", "UInt64", "UInt64"], "rows": []}
    assert _count(store) == len(SEEDED)


def test_a_value_with_a_quote_is_matched_literally(client: TestClient) -> None:
    r = client.post("/questions/tenant_tokens", json={"params": {"tenant": "o'brien", "start": 0}}, headers=AUTH)
    assert r.json()["rows"] == [["o'brien", 7, 1]]


# -- ad-hoc SQL


T0_LAST = dt.datetime.fromtimestamp(T0 + 60, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_query(client: TestClient) -> None:
    sql = ("SELECT tenant, sum(output_tokens) AS tokens, max(ts) AS last, nan AS n, inf AS i, [1, 2] AS a, "
           "toDecimal64(1.25, 2) AS d FROM request_events GROUP BY tenant ORDER BY tenant")
    r = client.post("/query", json={"sql": sql}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["columns"] == ["tenant", "tokens", "last", "n", "i", "a", "d"]
    assert body["types"][:3] == ["LowCardinality(String)", "UInt64", "DateTime64(3, 'UTC')"]
    assert body["rows"][0] == ["acme", 155, T0_LAST, None, None, [1, 2], 1.25]
    assert [row[:2] for row in body["rows"]] == [["acme", 155], ["globex", 70], ["o'brien", 7]]


@pytest.mark.parametrize("sql", ["SELECT 1 AS x;", "SELECT 1 AS x ;  \n", "SELECT 1 AS x -- a comment",
                                 "SELECT 1 AS x # a comment", "SELECT 1 AS x /* c */",
                                 "WITH 1 AS y SELECT y AS x", "SELECT 1 AS x SETTINGS max_threads = 1",
                                 "SELECT ')' AS x", "SELECT $$)$$ AS x"])
def test_query_forms_that_work(client: TestClient, sql: str) -> None:
    r = client.post("/query", json={"sql": sql}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["columns"] == ["x"]


def test_query_csv(client: TestClient) -> None:
    sql = ("SELECT tenant, sum(output_tokens) AS tokens, NULL AS nothing FROM request_events "
           "GROUP BY tenant ORDER BY tenant")
    r = client.post("/query?format=csv", json={"sql": sql}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert list(csv.reader(io.StringIO(r.text))) == [
        ["tenant", "tokens", "nothing"], ["acme", "155", ""], ["globex", "70", ""], ["o'brien", "7", ""]]
    r = client.post("/questions/event_count?format=csv", headers=AUTH)
    assert r.text == f"events\n{len(SEEDED)}\n"


def test_bad_format_is_400(client: TestClient) -> None:
    r = client.post("/query?format=xml", json={"sql": "SELECT 1"}, headers=AUTH)
    assert r.status_code == 400
    assert "format must be json or csv" in r.json()["error"]


@pytest.mark.parametrize("sql", [
    "INSERT INTO request_events (event_id) VALUES ('x')",
    "DROP TABLE request_events",
    "CREATE TABLE evil (a UInt8) ENGINE = Memory",
    "SELECT * FROM file('/etc/hostname', 'LineAsString')",
    "SET readonly = 0",
])
def test_writes_and_ddl_are_refused_403(client: TestClient, store: HistoryStore, sql: str) -> None:
    """Run unwrapped, so the refusal tested is readonly's own (wrapped, most are syntax errors first)."""
    with pytest.raises(server_mod.Problem) as refused:
        server_mod._run(store, sql)
    assert refused.value.status == 403, refused.value.message
    r = client.post("/query", json={"sql": sql}, headers=AUTH)
    assert r.status_code == 403, r.text
    assert _count(store) == len(SEEDED)
    assert store.scalar("SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'evil'") == 0


@pytest.mark.parametrize("sql", [
    "INSERT INTO request_events (event_id) VALUES ('x')",
    "INSERT INTO request_events SELECT * FROM request_events",
    "SELECT * FROM file('/etc/hostname', 'LineAsString')",
    "DROP TABLE request_events",
    "CREATE TABLE evil (a UInt8) ENGINE = Memory",
])
def test_writes_through_the_endpoint_are_403(client: TestClient, store: HistoryStore, sql: str) -> None:
    r = client.post("/query", json={"sql": sql}, headers=AUTH)
    assert r.status_code == 403, r.text
    assert r.json()["code"] == "readonly"
    assert _count(store) == len(SEEDED)


@pytest.mark.parametrize("sql", ["-- why\nINSERT INTO request_events (event_id) VALUES ('x')",
                                 "/* a */ drop table request_events",
                                 "  # x\n CREATE TABLE evil (a UInt8) ENGINE = Memory",
                                 "ALTER TABLE request_events DELETE WHERE 1", "TRUNCATE TABLE request_events",
                                 "SYSTEM DROP MARK CACHE", "SET readonly = 0", "KILL QUERY WHERE 1"])
def test_writes_are_named_in_the_403(client: TestClient, store: HistoryStore, sql: str) -> None:
    r = client.post("/query", json={"sql": sql}, headers=AUTH)
    assert r.status_code == 403, r.text
    assert "only a SELECT query runs here, not" in r.json()["error"]
    assert _count(store) == len(SEEDED)


def test_the_keyword_list_is_not_the_defence(store: HistoryStore) -> None:
    """Without the 403 by name, a write inside the wrapper is still refused (a syntax error)."""
    with pytest.raises(server_mod.Problem) as refused:
        server_mod._run(store, wrap("INSERT INTO request_events (event_id) VALUES ('x')"))
    assert refused.value.status == 400
    assert _count(store) == len(SEEDED)


def test_readonly_refusal_is_403(client: TestClient) -> None:
    r = client.post("/query", json={"sql": "SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')"},
                    headers=AUTH)
    assert r.status_code == 403, r.text
    assert r.json()["code"] == "readonly"
    assert "readonly" in r.json()["error"]


def test_settings_readonly_0_has_no_effect(client: TestClient) -> None:
    sql = "SELECT value FROM system.settings WHERE name = 'readonly' SETTINGS readonly = 0"
    r = client.post("/query", json={"sql": sql}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [["1"]]


def _outfile_attacks(out: Path) -> list[str]:
    return [
        f"SELECT 1 INTO OUTFILE '{out}'",
        f"SELECT 1 INTO OUTFILE '{out}' FORMAT CSV",
        f"SELECT 1 INTO OUTFILE '{out}';",
        f"SELECT 1) INTO OUTFILE '{out}' --",
        f"SELECT 1) INTO OUTFILE '{out}' /*",
        f"SELECT 1) INTO OUTFILE '{out}'; SELECT (1",  # closes the wrapper, then a second statement
        f"SELECT 1) INTO OUTFILE '{out}' FORMAT CSV; SELECT (1",
        f"SELECT 1) INTO OUTFILE '{out}' SETTINGS max_threads = (1",
        f"SELECT 1\n)\nINTO OUTFILE '{out}'\n;SELECT (\n1",
    ]


def test_into_outfile_is_refused_and_writes_nothing(client: TestClient, tmp_path: Path) -> None:
    out = tmp_path / "leak.csv"
    for sql in _outfile_attacks(out):
        r = client.post("/query", json={"sql": sql}, headers=AUTH)
        assert r.status_code in (400, 403), (sql, r.text)
        assert not out.exists(), sql
    assert list(tmp_path.iterdir()) == []


def test_the_breakout_writes_a_file_without_the_parse_check(store: HistoryStore, tmp_path: Path) -> None:
    """Why ``adhoc`` parses first: the wrapper alone lets ``) ...; SELECT (`` through in chDB."""
    out = tmp_path / "leak.csv"
    with contextlib.suppress(Exception):  # a later chDB may refuse it on its own
        store.query(wrap(f"SELECT 1) INTO OUTFILE '{out}'; SELECT (1"))
    written = out.exists()
    out.unlink(missing_ok=True)
    with pytest.raises(server_mod.Problem):
        server_mod.adhoc(store, f"SELECT 1) INTO OUTFILE '{out}'; SELECT (1")
    assert not out.exists()
    if not written:
        pytest.skip("this chDB no longer runs the breakout; the parse check is not the only defence now")


@pytest.mark.parametrize("sql", ["SELECT 1 FORMAT CSV", "SELECT 1 FORMAT JSONEachRow;", "SELECT 1) FORMAT CSV --"])
def test_format_clause_is_refused(client: TestClient, sql: str) -> None:
    r = client.post("/query", json={"sql": sql}, headers=AUTH)
    assert r.status_code == 400, r.text
    assert "Syntax error" in r.json()["error"] or "one SELECT" in r.json()["error"]


@pytest.mark.parametrize("sql", ["SELECT 1; DROP TABLE request_events", "SELECT 1; SELECT 2",
                                 "SELECT 1;; DROP TABLE request_events",
                                 "SELECT 1) ; DROP TABLE request_events; SELECT (1"])
def test_a_second_statement_is_refused(client: TestClient, store: HistoryStore, sql: str) -> None:
    r = client.post("/query", json={"sql": sql}, headers=AUTH)
    assert r.status_code in (400, 403), r.text
    assert _count(store) == len(SEEDED)


def test_clickhouse_errors_are_400_with_the_first_line_bounded(client: TestClient) -> None:
    r = client.post("/query", json={"sql": "SELECT nosuchcolumn FROM request_events"}, headers=AUTH)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error.startswith("Code: 47. DB::Exception: ")
    assert "\n" not in error and "Traceback" not in r.text
    long = "SELECT " + " + ".join(["nosuch"] * 5000)
    r = client.post("/query", json={"sql": long}, headers=AUTH)
    assert r.status_code == 400
    assert len(r.json()["error"]) <= 300


def test_too_many_rows_is_400_and_leaks_nothing_into_the_next_answer(client: TestClient) -> None:
    """After a result over the limit, chDB sometimes hands the next query the failed one's rows (about
    one time in seven, measured): the store drains its reader first. 20 rounds: without it, a stale answer
    shows up with a probability near 95 %."""
    for _ in range(20):
        r = client.post("/query", json={"sql": "SELECT number + 1000 AS n FROM numbers(10000000)"}, headers=AUTH)
        assert r.status_code == 400
        assert "Limit for result exceeded" in r.json()["error"]
        r = client.post("/query", json={"sql": "SELECT number AS n FROM numbers(3)"}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["rows"] == [[0], [1], [2]]


@pytest.mark.parametrize("body, why", [
    (b"{not json", "not valid JSON"), (b"[1, 2]", "must be a JSON object"), (b"{}", "{\"sql\""),
    (b'{"sql": 1}', "{\"sql\""), (b'{"sql": "   "}', "empty"), (b'{"query": "SELECT 1"}', "unknown field query"),
])
def test_bad_bodies_are_400(client: TestClient, body: bytes, why: str) -> None:
    r = client.post("/query", content=body, headers=AUTH | {"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert why in r.json()["error"]


def test_body_limit_is_413(store: HistoryStore) -> None:
    with _client(store, max_body_bytes=1024) as c:
        big = {"sql": "SELECT '" + "x" * 2000 + "'"}
        r = c.post("/query", json=big, headers=AUTH)
        assert r.status_code == 413
        assert "1024 bytes" in r.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the running count refuses it
            yield b'{"sql": "SELECT \''
            for _ in range(10):
                yield b"y" * 200
            yield b'\'"}'

        r = c.post("/query", content=chunks(), headers=AUTH)
        assert r.status_code == 413
        r = c.post("/questions/event_count", json={"params": {"x": "y" * 2000}}, headers=AUTH)
        assert r.status_code == 413
        ok = c.post("/query", json={"sql": "SELECT 1"}, headers=AUTH)
        assert ok.status_code == 200, ok.text


def test_unknown_route_and_method(client: TestClient) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    assert client.get("/query", headers=AUTH).status_code == 405
    assert client.get("/docs").status_code == 404


def test_unexpected_error_is_500_without_a_traceback(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(server_mod, "adhoc", broken)
    with TestClient(client.app, raise_server_exceptions=False) as c:
        r = c.post("/query", json={"sql": "SELECT 1"}, headers=AUTH)
    assert r.status_code == 500
    assert r.json() == {"error": "internal error in the history endpoint", "code": "internal_error"}


# -- served by uvicorn in a running loop


async def test_run_server_serves_until_cancelled(store: HistoryStore) -> None:
    app = create_app(store, ServerSettings(token=TOKEN), CollectorRegistry(), questions=QUESTIONS)
    server = make_server(app, "127.0.0.1", 0)
    task = asyncio.create_task(serve(server))
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.02)
    port = bound_port(server)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        r = await http.post("/questions/event_count", headers=AUTH)
        assert r.json()["rows"] == [[len(SEEDED)]]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(f"http://127.0.0.1:{port}/healthz")
