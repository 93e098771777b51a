"""``/v1/usage?granularity=hour|day``: a tenant's own usage history, from the real history endpoint.

Real parts, no mocks: the history process's HTTP app (``streams.history.server.create_app`` over a
chDB store migrated from the repo's files, with the repo's own ``tenant_usage`` question), served by
uvicorn on 127.0.0.1 on a free port (the process's own ``make_server``), and the real admitter
(``tests.admitter.conftest``) in front of a fake replica. The admitter reaches the history over HTTP
only (it must not import ``streams``; tests may).

The history holds two tenants' events: hand-made ones over the last days (decisions, refusals,
finishes with and without ``charged``, and an entitlement name both tenants used), plus the events
the admitter itself emitted for real requests, inserted with the sink's row builder. Every expected
row is computed here in Python from those same events, never read back from ClickHouse; the real
requests' charge is also checked against their responses' usage and the pool's token weights.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from schemas.records import Amounts, Outcome, Phase, RequestEvent
from schemas.specs import Entitlement, TokenPool
from streams.history.catalog import Question, parse, questions
from streams.history.rows import Located, request_block
from streams.history.server import bound_port, create_app, make_server, serve
from streams.history.settings import ServerSettings
from streams.history.store import HistoryStore
from tests.admitter.conftest import auth, chat, closed_port_url, ent, free_socket, keyed, platform, pool
from tests.factories import ent as make_ent

TOKEN = "history-test-token"
W_IN, W_OUT = 0.5, 3.0
HOUR, DAY = 3600, 86400
NOW = time.time()
H = NOW // HOUR * HOUR  # the hour the module was loaded in: the hand-made events are all before it
FINISHES = (Outcome.COMPLETED, Outcome.PREEMPTED, Outcome.CANCELLED, Outcome.FAILED)


def weighted_pool() -> TokenPool:
    return pool("p", tokenWeights={"input": W_IN, "output": W_OUT})


def _of_tenant(entitlement: Entitlement, tenant: str) -> Entitlement:
    doc = entitlement.model_dump(by_alias=True, mode="json")
    doc["spec"]["tenant"] = tenant
    return Entitlement.model_validate(doc)


def config() -> Any:
    # acme: two entitlements on the pool (a key each: a key maps to one entitlement per pool); globex: one.
    # "shared" is an entitlement name the hand-made history has under both tenants (deleted and re-created
    # for the other one), so its rows must split by tenant.
    batch = keyed(_of_tenant(make_ent("acme-batch", "spot"), "acme"), "tp-test-acme-batch-0123456789")
    return platform([weighted_pool()], [ent("acme"), batch, ent("globex")])


# -- the hand-made history ------------------------------------------------------------------------------

_n = iter(range(10**9))


def _ev(tenant: str, entitlement: str, phase: Phase, outcome: Outcome, at: float, *, tier: str = "elastic",
        prompt: int = 0, output: int = 0, charged: float | None = None) -> RequestEvent:
    n = next(_n)
    return RequestEvent(
        id=f"h{n}-{phase.value}", request_id=f"h{n}", phase=phase, outcome=outcome, ts=at, admitter_id="a1",
        tenant=tenant, entitlement=entitlement, pool="p", tier=tier, prompt_tokens=prompt, max_tokens=64,
        output_tokens=output, reserved=Amounts(throughput=100.0, kv=200.0, concurrency=1.0),
        latency_s=1.0 if phase is Phase.FINISH else None, ttft_s=0.1 if phase is Phase.FINISH else None,
        status_code=200 if phase is Phase.FINISH else None,
        refused_dimension="throughput" if outcome is Outcome.REFUSED else None,
        charged=None if charged is None else Amounts(throughput=charged, kv=200.0, concurrency=1.0))


def _request(tenant: str, entitlement: str, at: float, prompt: int, output: int, *, tier: str = "elastic",
             outcome: Outcome = Outcome.COMPLETED, charge: bool = True, queued: bool = False) -> list[RequestEvent]:
    decision = Outcome.QUEUED_ADMITTED if queued else Outcome.ADMITTED
    charged = W_IN * prompt + W_OUT * output if charge else None
    return [_ev(tenant, entitlement, Phase.DECISION, decision, at, tier=tier),
            _ev(tenant, entitlement, Phase.FINISH, outcome, at + 2.0, tier=tier, prompt=prompt, output=output,
                charged=charged)]


def _refused(tenant: str, entitlement: str, at: float, tier: str = "elastic") -> list[RequestEvent]:
    return [_ev(tenant, entitlement, Phase.DECISION, Outcome.REFUSED, at, tier=tier)]


def hand_made() -> list[RequestEvent]:
    events: list[RequestEvent] = []
    for hours_ago, minute in ((50, 5), (50, 40), (30, 1), (26, 59), (5, 30), (1, 10), (1, 58)):
        t = H - hours_ago * HOUR + minute * 60
        events += _request("acme", "acme", t, 100 + hours_ago, 20 + minute)
        events += _request("globex", "globex", t + 7, 300 + minute, 40 + hours_ago, queued=True)
    events += _request("acme", "acme-batch", H - 26 * HOUR + 120, 1000, 500, tier="spot", outcome=Outcome.PREEMPTED)
    events += _request("acme", "acme-batch", H - 5 * HOUR, 10, 0, tier="spot", outcome=Outcome.CANCELLED,
                       charge=False)  # an older admitter: no charged field, history counts 0
    events += _refused("acme", "acme", H - 30 * HOUR + 600)
    events += _refused("acme", "acme", H - 1 * HOUR + 5)
    events += _refused("globex", "globex", H - 5 * HOUR + 100)
    events += _request("globex", "globex", H - 70 * HOUR, 8, 8)  # before the hourly ranges asked, in the daily
    events += _request("globex", "shared", H - 29 * HOUR, 777, 77)
    events += _request("acme", "shared", H - 3 * HOUR, 111, 11, outcome=Outcome.FAILED)
    events += _request("acme", "acme", H - 45 * DAY, 5, 5)  # before the default 30 days
    return events


def insert(store: HistoryStore, events: Iterable[RequestEvent], first_offset: int, token: str) -> None:
    located = [(e, Located("tokenpools.requests", 0, first_offset + i)) for i, e in enumerate(events)]
    store.insert("request_events", request_block(located), token=token)


# -- the expected answer, from the events ---------------------------------------------------------------


def expected(events: Iterable[RequestEvent], tenant: str, bucket: int, start: float, end: float) -> list[dict]:
    """What tenant_usage means, computed from the events: the hours whose start is in [start, end), per
    bucket, entitlement, pool and tier; decisions counted as requests (refusals also as refused), the
    tokens and the charge of finished requests."""
    rows: dict[tuple[float, str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"requests": 0, "refused": 0, "prompt_tokens": 0, "output_tokens": 0, "charged_throughput": 0.0})
    for e in events:
        hour = e.ts // HOUR * HOUR
        if e.tenant != tenant or not start <= hour < end:
            continue
        row = rows[(hour // bucket * bucket, e.entitlement, e.pool, e.tier.value)]
        if e.phase is Phase.DECISION:
            row["requests"] += 1
            row["refused"] += e.outcome is Outcome.REFUSED
        else:
            assert e.outcome in FINISHES
            row["prompt_tokens"] += e.prompt_tokens
            row["output_tokens"] += e.output_tokens
            row["charged_throughput"] += e.charged.throughput if e.charged is not None else 0.0
    return [{"bucket": k[0], "tenant": tenant, "entitlement": k[1], "pool": k[2], "tier": k[3], **v}
            for k, v in sorted(rows.items())]


def answered(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The answer's rows with the bucket as Unix seconds, to compare with ``expected``."""
    out = []
    for row in history:
        bucket = dt.datetime.fromisoformat(row["bucket"])
        assert bucket.tzinfo is not None and bucket.utcoffset() == dt.timedelta(0), row["bucket"]
        out.append({**row, "bucket": bucket.timestamp()})
    return out


def same_rows(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [{k: v for k, v in r.items() if k != "charged_throughput"} for r in got] == \
           [{k: v for k, v in r.items() if k != "charged_throughput"} for r in want]
    for g, w in zip(got, want, strict=True):
        assert g["charged_throughput"] == pytest.approx(w["charged_throughput"], rel=1e-9, abs=1e-9), (g, w)


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


# -- the history process, served for real ------------------------------------------------------------------


@dataclass
class History:
    url: str
    store: HistoryStore
    registry: CollectorRegistry

    def requests(self) -> float:
        """Requests the history endpoint answered on its question route (its own metric)."""
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == "tokenpools_history_http_requests_total" and \
                        sample.labels.get("route") == "/questions/{name}":
                    total += sample.value
        return total


@pytest.fixture
async def history(store: HistoryStore) -> AsyncIterator[History]:
    async with served_history(store) as h:
        yield h


@contextlib.asynccontextmanager
async def served_history(store: HistoryStore, questions: dict[str, Question] | None = None
                         ) -> AsyncIterator[History]:
    registry = CollectorRegistry()
    app = create_app(store, ServerSettings(token=TOKEN), registry, questions=questions)  # None: the repo's
    server = make_server(app, "127.0.0.1", 0)
    task = asyncio.create_task(serve(server))
    async with asyncio.timeout(10):
        while not server.started:  # uvicorn has no started event
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    yield History(f"http://127.0.0.1:{bound_port(server)}", store, registry)
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)


@dataclass
class World:
    adm: Any
    history: History
    events: list[RequestEvent]  # everything in the store
    live_charge: dict[str, float]  # tenant -> weighted tokens of its real requests, from the responses


@pytest.fixture
async def world(history: History, admitter, replicas) -> World:
    fake = await replicas()
    adm = await admitter(config(), backends={"p": [fake.url]}, history_url=history.url, history_token=TOKEN)
    made = hand_made()
    insert(history.store, made, 0, "test/hand-made")
    # Real requests through the admitter: their events (with replica and charged) go into the history too.
    live_charge: dict[str, float] = defaultdict(float)
    async with adm.client() as c:
        for tenant, tokens in (("acme", 4), ("acme", 9), ("globex", 6)):
            resp = await c.post("/v1/chat/completions", json=chat(max_tokens=32),
                                headers={**auth(tenant), "x-fake-tokens": str(tokens)})
            assert resp.status_code == 200, resp.text
            usage = resp.json()["usage"]
            live_charge[tenant] += W_IN * usage["prompt_tokens"] + W_OUT * usage["completion_tokens"]
    async with asyncio.timeout(5):
        await adm.sink.wait_for(lambda _: len(adm.sink.finished()) == 3)
    live = list(adm.sink.events)
    assert len(live) == 6
    insert(history.store, live, len(made), "test/live")
    return World(adm, history, made + live, dict(live_charge))


async def usage(adm: Any, tenant: str, params: dict[str, str] | list[tuple[str, str]] | None = None) -> httpx.Response:
    async with adm.client() as c:
        return await c.get("/v1/usage", params=params, headers=auth(tenant))


# -- each tenant sees exactly its own rows -----------------------------------------------------------------


@pytest.mark.parametrize("tenant", ["acme", "globex"])
async def test_hourly_history_is_the_tenants_own_rows(world: World, tenant: str) -> None:
    start, end = H - 60 * HOUR, H + 2 * HOUR
    resp = await usage(world.adm, tenant, {"granularity": "hour", "start": iso(start), "end": iso(end)})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["tenant"] == tenant
    assert {e["entitlement"] for e in body["entitlements"]} == ({"acme", "acme-batch"} if tenant == "acme"
                                                                 else {"globex"})  # live usage as before
    assert body["history_range"] == {"granularity": "hour", "bucket_seconds": HOUR,
                                     "start": iso(start).replace("Z", ".000Z"), "end": iso(end).replace("Z", ".000Z")}
    want = expected(world.events, tenant, HOUR, start, end)
    assert len(want) >= 6  # the seed gives each tenant a real history in this range
    same_rows(answered(body["history"]), want)
    assert {row["tenant"] for row in body["history"]} == {tenant}
    # The real requests' part: what the admitter charged them, as their responses' usage says.
    charged_now = sum(r["charged_throughput"] for r in answered(body["history"])
                      if r["bucket"] >= H and r["entitlement"] == tenant)
    assert charged_now == pytest.approx(world.live_charge[tenant], rel=1e-9)


async def test_daily_history_by_default_covers_30_days(world: World) -> None:
    resp = await usage(world.adm, "acme", {"granularity": "day"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    end = (math.floor(time.time()) // DAY + 1) * DAY  # the end of today (UTC)
    assert body["history_range"]["end"] in (iso(end).replace("Z", ".000Z"), iso(end + DAY).replace("Z", ".000Z"))
    end = dt.datetime.fromisoformat(body["history_range"]["end"]).timestamp()  # a test run across midnight
    start = dt.datetime.fromisoformat(body["history_range"]["start"]).timestamp()
    assert end - start == 30 * DAY
    want = expected(world.events, "acme", DAY, start, end)
    same_rows(answered(body["history"]), want)
    assert {r["entitlement"] for r in want} == {"acme", "acme-batch", "shared"}
    assert not any(r["bucket"] < start for r in answered(body["history"]))  # 45 days ago is not in it
    shared = [r for r in body["history"] if r["entitlement"] == "shared"]
    assert sum(r["prompt_tokens"] for r in shared) == 111  # acme's part only, not globex's 777


async def test_hourly_default_is_the_last_24_hours(world: World) -> None:
    resp = await usage(world.adm, "globex", {"granularity": "hour"})
    assert resp.status_code == 200, resp.text
    rng = resp.json()["history_range"]
    start = dt.datetime.fromisoformat(rng["start"]).timestamp()
    end = dt.datetime.fromisoformat(rng["end"]).timestamp()
    assert end - start == 24 * HOUR and end >= time.time() - 1
    same_rows(answered(resp.json()["history"]), expected(world.events, "globex", HOUR, start, end))


async def test_a_tenant_parameter_is_ignored(world: World) -> None:
    params = {"granularity": "day", "start": iso(H - 10 * DAY), "end": iso(H + DAY)}
    own = await usage(world.adm, "acme", params)
    other = await usage(world.adm, "acme", [*params.items(), ("tenant", "globex")])
    assert other.status_code == 200, other.text
    for key in ("history", "history_range"):  # (the live part may change between the calls: allocator ticks)
        assert other.json()[key] == own.json()[key]
    assert other.json()["tenant"] == "acme"
    assert not any(r["entitlement"] == "globex" for r in other.json()["history"])
    globex = await usage(world.adm, "globex", params)
    assert {r["entitlement"] for r in globex.json()["history"]} == {"globex", "shared"}
    assert sum(r["prompt_tokens"] for r in globex.json()["history"] if r["entitlement"] == "shared") == 777


async def test_plain_usage_has_no_history(world: World) -> None:
    asked = world.history.requests()
    resp = await usage(world.adm, "acme")
    assert resp.status_code == 200
    assert "history" not in resp.json() and "history_range" not in resp.json()
    assert world.history.requests() == asked  # and the history was not asked


# -- refusals -------------------------------------------------------------------------------------------


BAD: list[tuple[Any, str, str]] = [
    ({"granularity": "minute"}, "granularity", "granularity must be hour or day"),
    ({"granularity": ""}, "granularity", "granularity must be hour or day"),
    ({"start": "2024-05-01T00:00:00Z"}, "granularity", "need granularity=hour or granularity=day"),
    ({"granularity": "hour", "start": "yesterday"}, "start", "start must be an ISO 8601 time"),
    ({"granularity": "hour", "end": "2024-13-01"}, "end", "end must be an ISO 8601 time"),
    ({"granularity": "day", "start": "2024-05-02", "end": "2024-05-01"}, "end", "end must be after start"),
    ({"granularity": "day", "start": "2024-05-01T00:00:00Z", "end": "2024-05-01T00:00:00Z"}, "end",
     "end must be after start"),
    ({"granularity": "day", "start": "2020-01-01", "end": "2024-01-01"}, "start", "at most 400 days"),
    ({"granularity": "day", "start": "1900-01-01", "end": "1900-02-01"}, "start", "between 1970 and 2261"),
    ([("granularity", "hour"), ("granularity", "day")], "granularity", "given 2 times"),
]


async def test_bad_ranges_are_400_before_the_history_is_asked(world: World) -> None:
    """One world for all the cases (each costs a migrated store otherwise)."""
    asked = world.history.requests()
    for params, param, needle in BAD:
        resp = await usage(world.adm, "acme", params)
        assert resp.status_code == 400, (params, resp.text)
        err = resp.json()["error"]
        assert needle in err["message"] and err["param"] == param, (params, err)
        assert len(err["message"]) < 200
    assert world.history.requests() == asked


async def test_an_unauthenticated_history_request_is_401(world: World) -> None:
    async with world.adm.client() as c:
        resp = await c.get("/v1/usage", params={"granularity": "hour", "tenant": "acme"})
    assert resp.status_code == 401


# -- 503s -------------------------------------------------------------------------------------------------


async def test_without_history_url_the_history_is_503_and_plain_usage_works(admitter) -> None:
    adm = await admitter(config())
    plain = await usage(adm, "acme")
    assert plain.status_code == 200 and "history" not in plain.json()
    resp = await usage(adm, "acme", {"granularity": "hour"})
    assert resp.status_code == 503, resp.text
    assert "TOKENPOOLS_ADMITTER_HISTORY_URL is not set" in resp.json()["error"]["message"]
    bad = await usage(adm, "acme", {"granularity": "week"})
    assert bad.status_code == 400  # the request is checked first


async def test_history_unreachable_is_503(admitter, caplog: pytest.LogCaptureFixture) -> None:
    adm = await admitter(config(), history_url=closed_port_url(), history_token=TOKEN)
    resp = await usage(adm, "acme", {"granularity": "day"})
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["message"] == "history is unavailable"
    assert resp.json()["error"]["code"] == "history_unavailable" and resp.headers["retry-after"] == "5"
    assert "Traceback" not in resp.text
    assert any("usage history" in r.getMessage() for r in caplog.records)  # the operator is told why


async def test_history_that_never_answers_is_503_within_the_timeout(admitter) -> None:
    sock = free_socket()
    sock.listen(8)  # connections complete in the kernel's backlog; nothing ever reads or answers
    try:
        host, port = sock.getsockname()[:2]
        adm = await admitter(config(), history_url=f"http://{host}:{port}", history_token=TOKEN,
                             history_timeout_seconds=0.3)
        started = time.monotonic()
        resp = await usage(adm, "acme", {"granularity": "hour"})
        took = time.monotonic() - started
    finally:
        sock.close()
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["message"] == "history is unavailable"
    assert took < 3.0


async def test_history_refusing_the_admitters_token_is_503(history: History, admitter) -> None:
    adm = await admitter(config(), history_url=history.url, history_token="not-the-token")
    resp = await usage(adm, "acme", {"granularity": "hour"})
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["message"] == "history is unavailable"
    adm2 = await admitter(config(), history_url=history.url)  # no token at all
    assert (await usage(adm2, "acme", {"granularity": "hour"})).status_code == 503


async def test_rows_of_another_tenant_are_dropped_even_if_the_question_returned_them(store: HistoryStore,
                                                                                       admitter) -> None:
    """Defense in depth: a tenant_usage question that forgot its tenant filter (served for real) still
    shows a tenant only its own rows, because the admitter checks each row's tenant column."""
    real = questions()["tenant_usage"].sql
    unfiltered = real.replace("r.tenant = {tenant:String} AND ", "")
    assert unfiltered != real
    buggy = {"tenant_usage": parse(12, "tenant_usage", unfiltered)}
    events = hand_made()
    insert(store, events, 0, "test/buggy")
    async with served_history(store, buggy) as h:
        adm = await admitter(config(), history_url=h.url, history_token=TOKEN)
        start, end = H - 60 * HOUR, H + HOUR
        resp = await usage(adm, "acme", {"granularity": "hour", "start": iso(start), "end": iso(end)})
        direct = await _ask(h.url, {"tenant": "acme", "bucket_s": HOUR, "start": iso(start), "end": iso(end)})
    assert {row[direct["columns"].index("tenant")] for row in direct["rows"]} == {"acme", "globex"}  # the bug
    assert resp.status_code == 200, resp.text
    same_rows(answered(resp.json()["history"]), expected(events, "acme", HOUR, start, end))


async def _ask(url: str, params: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient() as c:
        resp = await c.post(f"{url}/questions/tenant_usage", json={"params": params},
                            headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


# -- settings and the command line ------------------------------------------------------------------------


def test_the_history_link_is_read_from_its_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from admitter.settings import AdmitterSettings

    monkeypatch.setenv("TOKENPOOLS_ADMITTER_HISTORY_URL", "http://history.internal:8090/")
    monkeypatch.setenv("TOKENPOOLS_ADMITTER_HISTORY_TOKEN", "t0ken")
    monkeypatch.setenv("TOKENPOOLS_ADMITTER_HISTORY_TIMEOUT_SECONDS", "1.5")
    s = AdmitterSettings()
    assert s.history_url == "http://history.internal:8090"  # no trailing slash
    assert s.history_token is not None and s.history_token.get_secret_value() == "t0ken"
    assert "t0ken" not in repr(s)
    assert s.history_timeout_seconds == 1.5
    assert AdmitterSettings(history_url="https://h/base").history_url == "https://h/base"  # code wins


def test_the_history_processs_own_variables_are_not_the_admitters(monkeypatch: pytest.MonkeyPatch) -> None:
    from admitter.settings import AdmitterSettings

    monkeypatch.delenv("TOKENPOOLS_ADMITTER_HISTORY_URL", raising=False)
    monkeypatch.setenv("TOKENPOOLS_HISTORY_URL", "http://elsewhere:1")
    monkeypatch.setenv("TOKENPOOLS_HISTORY_TOKEN", "theirs")
    s = AdmitterSettings()
    assert s.history_url is None and s.history_token is None
    monkeypatch.setenv("TOKENPOOLS_ADMITTER_HISTORY_URL", "")  # empty: unset
    assert AdmitterSettings().history_url is None


@pytest.mark.parametrize("url", ["ftp://h", "h:8090", "http://", "http://u:p@h", "http://h/?q=1", "http://h:99999",
                                 "http://[::1"])
def test_bad_history_urls_are_refused(url: str) -> None:
    from pydantic import ValidationError

    from admitter.settings import AdmitterSettings

    with pytest.raises(ValidationError, match="history_url"):
        AdmitterSettings(history_url=url)


def test_the_command_line_sets_the_history_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from typer.testing import CliRunner

    from tokenpools.cli import app

    examples = Path(__file__).resolve().parents[2] / "deploy" / "examples"
    seen: dict[str, Any] = {}
    monkeypatch.setattr("uvicorn.run", lambda asgi, **kw: seen.update(state=asgi.state.admitter))
    monkeypatch.setenv("TOKENPOOLS_ADMITTER_HISTORY_TOKEN", "t0ken")
    result = CliRunner().invoke(app, ["admitter", "--config", str(examples), "--history-url", "http://127.0.0.1:8090",
                                      "--history-timeout", "2"])
    assert result.exit_code == 0, result.output
    settings = seen["state"].settings
    assert settings.history_url == "http://127.0.0.1:8090" and settings.history_timeout_seconds == 2.0
    assert settings.history_token.get_secret_value() == "t0ken"
    bad = CliRunner().invoke(app, ["admitter", "--config", str(examples), "--history-url", "ftp://x"])
    assert bad.exit_code == 2 and "history_url must be an http(s) URL" in bad.output
