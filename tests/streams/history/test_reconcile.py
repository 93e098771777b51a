"""Reconciliation on the real engine (chDB): agreeing history reconciles, and each kind of disagreement
(a raw row the pipeline never counted, a rollup row the raw table lacks) is found and named."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from schemas.records import Amounts, Outcome, Phase, RequestEvent
from schemas.specs import Tier
from streams.history.reconcile import reconcile
from streams.history.rows import Located, pipeline_windows_block, request_block
from streams.history.store import HistoryStore
from streams.records import UsageSummary, WindowSummary

HOUR0 = float(int(time.time()) // 3600 * 3600 - 3 * 3600)  # three hours ago, on the hour
WINDOW_S = 10.0


def requests(ent: str, n: int) -> list[RequestEvent]:
    """n requests of one entitlement, one per second from HOUR0: a decision (every 4th refused) and a finish."""
    out = []
    for i in range(n):
        refused = i % 4 == 0
        base = {"request_id": f"{ent}-{i}", "ts": HOUR0 + i, "admitter_id": "a", "tenant": "t", "entitlement": ent,
                "pool": "p", "tier": Tier.ELASTIC, "prompt_tokens": 10 + i, "reserved": Amounts(throughput=5)}
        out.append(RequestEvent(phase=Phase.DECISION, outcome=Outcome.REFUSED if refused else Outcome.ADMITTED,
                                **base))
        if not refused:
            out.append(RequestEvent(phase=Phase.FINISH, outcome=Outcome.COMPLETED, output_tokens=i, latency_s=0.5,
                                    **base))
    return out


def windows_counted_in_python(ent: str, events: list[RequestEvent]) -> list[UsageSummary]:
    """What stage 1 would report per 10 s window, counted here from the events themselves."""
    out = []
    starts = sorted({HOUR0 + (e.ts - HOUR0) // WINDOW_S * WINDOW_S for e in events})
    for start in starts:
        inside = [e for e in events if start <= e.ts < start + WINDOW_S]
        finished = [e for e in inside if e.phase is Phase.FINISH]
        w = WindowSummary(start=start, end=start + WINDOW_S,
                          decisions=sum(e.phase is Phase.DECISION for e in inside),
                          refused=sum(e.outcome is Outcome.REFUSED for e in inside), finished=len(finished),
                          prompt_tokens=sum(e.prompt_tokens for e in finished),
                          output_tokens=sum(e.output_tokens for e in finished))
        for copy in range(2):  # stage 1 re-sends a closed window until the next one closes
            out.append(UsageSummary(entitlement=ent, pool="p", tier=Tier.ELASTIC, partition=0, offset=1,
                                    ts=start + WINDOW_S + copy, tumbling=w, hopping=w))
    return out


def seed(store: HistoryStore, ent: str, n: int) -> list[RequestEvent]:
    events = requests(ent, n)
    store.insert("request_events", request_block([(e, Located("requests", 0, i)) for i, e in enumerate(events)]),
                 token=f"requests/{ent}")
    summaries = windows_counted_in_python(ent, events)
    store.insert("pipeline_windows", pipeline_windows_block([(s, Located("usage", 0, i))
                                                             for i, s in enumerate(summaries)]), token=f"usage/{ent}")
    return events


def span() -> tuple[datetime, datetime]:
    return datetime.fromtimestamp(HOUR0, UTC), datetime.fromtimestamp(HOUR0 + 3600, UTC)


def test_agreeing_history_reconciles(store: HistoryStore) -> None:
    seed(store, "e1", 95)
    seed(store, "e2", 40)
    report = reconcile(store, *span())
    assert report.ok, [r for r in report.rows if not r["ok"]]
    pipeline = {(r["entitlement"], r["measure"]): r["raw"] for r in report.rows if r["check"].endswith("windows")}
    assert pipeline[("e1", "decisions")] == 95 and pipeline[("e1", "refused")] == 24
    assert pipeline[("e2", "prompt_tokens")] == sum(10 + i for i in range(40) if i % 4)


def test_a_raw_event_the_pipeline_never_counted_is_found(store: HistoryStore) -> None:
    events = seed(store, "e1", 30)
    extra = events[1].model_copy(update={"id": "extra", "request_id": "extra"})
    store.insert("request_events", request_block([(extra, Located("requests", 0, 999))]), token="requests/extra")
    bad = [r for r in reconcile(store, *span()).rows if not r["ok"]]
    assert [(r["check"], r["measure"], r["raw"] - r["other"]) for r in bad] == [
        ("raw vs pipeline windows", "decisions", 1)]


def test_a_rollup_row_without_raw_rows_is_found(store: HistoryStore) -> None:
    seed(store, "e1", 30)
    store.command("INSERT INTO request_rollup_1h (hour, pool, entitlement, tenant, tier, outcome, refused_dimension, "
                  "events) VALUES ({h:DateTime}, 'p', 'e1', 't', 'elastic', 'completed', '', 2)",
                  {"h": datetime.fromtimestamp(HOUR0, UTC).strftime("%Y-%m-%d %H:%M:%S")})
    bad = [r for r in reconcile(store, *span()).rows if not r["ok"]]
    assert [(r["check"], r["measure"], r["other"] - r["raw"]) for r in bad] == [
        ("raw vs request_rollup_1h", "events", 2)]


def test_the_endpoint_reconciles_for_whoever_cannot_open_the_store(store: HistoryStore) -> None:
    """``POST /reconcile`` on the history process (embedded chDB: the only process that can read it)."""
    from fastapi.testclient import TestClient
    from prometheus_client import CollectorRegistry

    from streams.history.server import create_app
    from streams.history.settings import ServerSettings

    events = seed(store, "e1", 30)
    app = create_app(store, ServerSettings(token="tok"), CollectorRegistry())
    first, last = span()
    body = {"from": first.isoformat(), "to": last.isoformat()}
    auth = {"Authorization": "Bearer tok"}
    with TestClient(app) as c:
        assert c.post("/reconcile", json=body).status_code == 401
        assert c.post("/reconcile", json={"from": body["from"]}, headers=auth).status_code == 400
        assert c.post("/reconcile", json={"from": body["to"], "to": body["from"]}, headers=auth).status_code == 400
        good = c.post("/reconcile", json=body, headers=auth).json()
        assert good["ok"] is True and {r["entitlement"] for r in good["rows"]} == {"e1"}
        extra = events[1].model_copy(update={"id": "extra", "request_id": "extra"})
        store.insert("request_events", request_block([(extra, Located("requests", 0, 999))]), token="requests/x")
        bad = c.post("/reconcile", json=body, headers=auth).json()
        assert bad["ok"] is False
        assert [(r["measure"], r["raw"] - r["other"]) for r in bad["rows"] if not r["ok"]] == [("decisions", 1)]
