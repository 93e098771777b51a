"""/metrics parses as Prometheus text and counts what happened."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from tests.admitter.conftest import ADMIN, auth, chat, ent, eventually, platform, pool


def families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


async def test_metrics_parse_and_count_admitted_refused_and_latency(replicas, admitter) -> None:
    r = await replicas()
    p = pool(per=(1e6, 1e6, 10), queue={"maxWaitSeconds": 0})
    adm = await admitter(platform([p], [ent("acme", burst=(1e6, 1e6, 1))]), backends={"p": [r.url]})
    async with adm.client() as c:
        assert (await c.post("/v1/chat/completions", json=chat(), headers=auth("acme"))).status_code == 200
        assert (await c.post("/v1/chat/completions", json=chat(stream=True), headers=auth("acme"))).status_code == 200
        held = asyncio.create_task(c.post("/v1/chat/completions", json=chat(),
                                          headers={**auth("acme"), "x-fake-hold": "h"}))
        await r.wait_reached("h")
        assert (await c.post("/v1/chat/completions", json=chat(), headers=auth("acme"))).status_code == 429
        r.release("h")
        await held
        await eventually(lambda: not adm.state.gates["p"].live.reservations)
        await eventually(lambda: adm.state.usage.of("acme").requests.get("completed") == 3)
        resp = await c.get("/metrics", headers=ADMIN)
    assert resp.status_code == 200
    fams = families(resp.text)
    admitted = [s for s in fams["tokenpools_admitter_admitted"] if s.name.endswith("_total")]
    assert admitted[0].labels == {"pool": "p", "entitlement": "acme", "tier": "elastic"} and admitted[0].value == 3
    refused = [s for s in fams["tokenpools_admitter_refused"] if s.name.endswith("_total")]
    assert refused[0].labels["dimension"] == "concurrency" and refused[0].labels["tier"] == "elastic"
    assert refused[0].value == 1
    latency = [s for s in fams["tokenpools_admitter_added_latency_seconds"] if s.name.endswith("_count")]
    assert sum(s.value for s in latency) == 3
    assert {s.labels["stream"] for s in latency} == {"true", "false"}
    assert "tokenpools_admitter_queue_wait_seconds" in fams
    assert "tokenpools_admitter_preempted" in fams
    limits = {s.labels["dimension"]: s.value for s in fams["tokenpools_admitter_limit"]}
    assert limits["concurrency"] == 1
    assert {s.labels["dimension"] for s in fams["tokenpools_admitter_in_flight"]} == {"kv", "concurrency"}
    tokens = {s.labels["direction"]: s.value for s in fams["tokenpools_admitter_tokens"] if s.name.endswith("_total")}
    assert tokens == {"input": 21, "output": 9}


async def test_public_metrics_flag_serves_without_the_admin_token(admitter) -> None:
    adm = await admitter(platform([pool()], [ent("acme")]), public_metrics=True)
    async with adm.client() as c:
        resp = await c.get("/metrics")
    assert resp.status_code == 200 and families(resp.text)
