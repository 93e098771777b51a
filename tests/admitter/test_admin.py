"""The admin API (own credential, live state, entitlement create/update) and tenant-scoped usage."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from tests.admitter.conftest import ADMIN, auth, chat, ent, eventually, key_for, platform, pool, sha


@pytest.fixture
async def gateway(replicas, admitter):
    r = await replicas()
    p = pool(max_replicas=2, per=(1000.0, 10000.0, 10.0))
    ents = [ent("acme"), ent("globex"), ent("gold", "guaranteed", guarantee=(500, 5000, 5), burst=(500, 5000, 5))]
    adm = await admitter(platform([p], ents), backends={"p": [r.url]})
    async with adm.client() as c:
        yield adm, c, r


def manifest(name: str, tenant: str, tier: str = "elastic", guarantee=None, burst=None, keys=()) -> dict:
    spec = {"pool": "p", "tenant": tenant, "tier": tier,
            "burst": burst or {"throughput": 1000, "kv": 10000, "concurrency": 5},
            "apiKeys": [{"sha256": sha(k)} for k in keys]}
    if guarantee:
        spec["guarantee"] = guarantee
    return {"apiVersion": "tokenpools.dev/v1alpha1", "kind": "Entitlement", "metadata": {"name": name}, "spec": spec}


@pytest.mark.parametrize("path", ["/admin/pools", "/admin/entitlements", "/admin/tenants/acme/usage", "/metrics"])
async def test_admin_routes_need_the_admin_credential(gateway, path) -> None:
    _adm, c, _r = gateway
    for headers in ({}, auth("acme"), {"Authorization": "Bearer not-the-admin-key"}, {"Authorization": "admin"}):
        resp = await c.get(path, headers=headers)
        assert resp.status_code == 401, (path, headers)
        assert resp.json()["error"]["code"] == "invalid_admin_key"
    assert (await c.get(path, headers=ADMIN)).status_code == 200


async def test_admin_put_needs_the_admin_credential(gateway) -> None:
    adm, c, _r = gateway
    resp = await c.put("/admin/entitlements/new", json=manifest("new", "acme"), headers=auth("acme"))
    assert resp.status_code == 401
    assert "new" not in adm.state.config.entitlements


async def test_admin_without_a_configured_key_refuses_everyone(replicas, admitter) -> None:
    adm = await admitter(platform([pool()], [ent("acme")]), admin_key_sha256=None)
    async with adm.client() as c:
        assert (await c.get("/admin/pools", headers=ADMIN)).status_code == 401


async def test_pools_and_entitlements_show_live_state(gateway) -> None:
    _adm, c, r = gateway
    held = asyncio.create_task(c.post("/v1/chat/completions", json=chat(max_tokens=20),
                                      headers={**auth("acme"), "x-fake-hold": "h"}))
    await r.wait_reached("h")
    pools = (await c.get("/admin/pools", headers=ADMIN)).json()["pools"]
    assert pools[0]["name"] == "p" and pools[0]["in_flight"]["concurrency"] == 1
    assert pools[0]["backends"][0]["outstanding"] == 1
    ents = {e["name"]: e for e in (await c.get("/admin/entitlements", headers=ADMIN)).json()["entitlements"]}
    assert set(ents) == {"acme", "globex", "gold"}
    acme = ents["acme"]
    assert acme["in_flight"]["concurrency"] == 1 and acme["in_flight"]["kv"] > 20
    assert set(acme["limits"]) == {"throughput", "kv", "concurrency"}
    assert {"level", "depth", "rate"} <= set(acme["bucket"]) and "debt" in acme and "effective_weight" in acme
    assert ents["gold"]["guarantee_bucket"] is not None
    r.release("h")
    assert (await held).status_code == 200


async def test_put_creates_then_updates_an_entitlement_live(gateway) -> None:
    adm, c, _r = gateway
    new_key = "tp-test-initech-secret"
    resp = await c.put("/admin/entitlements/initech", json=manifest("initech", "initech", keys=[new_key]),
                       headers=ADMIN)
    assert resp.status_code == 201, resp.text
    assert resp.json()["tier"] == "elastic"
    ok = await c.post("/v1/chat/completions", json=chat(), headers={"Authorization": f"Bearer {new_key}"})
    assert ok.status_code == 200, ok.text  # usable at once: the key is live and limits were recomputed

    burst = {"throughput": 1000, "kv": 10000, "concurrency": 1}
    resp = await c.put("/admin/entitlements/initech", content=yaml.safe_dump(manifest("initech", "initech",
                       burst=burst, keys=[new_key])), headers={**ADMIN, "content-type": "application/yaml"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["limits"]["concurrency"] == 1
    assert adm.state.gates["p"].live.entitlements["initech"].burst[2] == 1


async def test_put_with_a_bad_body_is_422_with_one_line_problems(gateway) -> None:
    _adm, c, _r = gateway
    bad = manifest("bad", "acme")
    bad["spec"]["burst"]["kv"] = -1
    bad["spec"]["tier"] = "platinum"
    resp = await c.put("/admin/entitlements/bad", json=bad, headers=ADMIN)
    assert resp.status_code == 422
    problems = resp.json()["problems"]
    assert any("spec.tier" in p for p in problems) and any("spec.burst.kv" in p for p in problems)
    assert all("\n" not in p for p in problems)
    mismatch = await c.put("/admin/entitlements/other-name", json=manifest("bad", "acme"), headers=ADMIN)
    assert mismatch.status_code == 422 and "metadata.name" in mismatch.json()["problems"][0]
    unknown_pool = manifest("x", "acme")
    unknown_pool["spec"]["pool"] = "nope"
    assert (await c.put("/admin/entitlements/x", json=unknown_pool, headers=ADMIN)).status_code == 422
    assert (await c.put("/admin/entitlements/x", content=b"{", headers={**ADMIN, "content-type": "application/json"})
            ).status_code == 400


async def test_put_of_an_unprovisionable_guarantee_is_409(gateway) -> None:
    adm, c, _r = gateway
    # Max 2 replicas x 10 sequences = 20; gold already holds 5, so 16 more cannot be provisioned.
    big = manifest("big", "bigco", tier="guaranteed", guarantee={"throughput": 100, "kv": 100, "concurrency": 16},
                   burst={"throughput": 100, "kv": 100, "concurrency": 16})
    resp = await c.put("/admin/entitlements/big", json=big, headers=ADMIN)
    assert resp.status_code == 409
    assert "maxReplicas" in resp.json()["error"]["message"]
    assert "big" not in adm.state.config.entitlements and "big" not in adm.state.gates["p"].live.entitlements


async def test_put_claiming_another_tenants_key_is_409(gateway) -> None:
    _adm, c, _r = gateway
    resp = await c.put("/admin/entitlements/thief", json=manifest("thief", "thief", keys=[key_for("acme")]),
                       headers=ADMIN)
    assert resp.status_code == 409
    assert key_for("acme") not in resp.text and sha(key_for("acme")) not in resp.text


async def test_tenant_sees_only_its_own_usage(gateway) -> None:
    adm, c, _r = gateway
    for tenant, n in (("acme", 2), ("globex", 1)):
        for _ in range(n):
            resp = await c.post("/v1/chat/completions", json=chat(), headers={**auth(tenant), "x-fake-tokens": "4"})
            assert resp.status_code == 200
    state = adm.state
    await eventually(lambda: state.usage.of("acme").requests.get("completed") == 2)
    await eventually(lambda: state.usage.of("globex").requests.get("completed") == 1)
    mine = (await c.get("/v1/usage", headers=auth("acme"))).json()
    assert mine["tenant"] == "acme"
    assert [e["entitlement"] for e in mine["entitlements"]] == ["acme"]
    acme = mine["entitlements"][0]
    assert acme["tokens"] == {"input": 14, "output": 8}
    assert acme["requests"] == {"admitted": 2, "completed": 2}
    assert set(acme["limits"]) == {"throughput", "kv", "concurrency"}
    assert "globex" not in str(mine)
    # No way to ask for someone else's: the tenant comes from the key, and the admin route refuses tenant keys.
    assert (await c.get("/v1/usage?tenant=globex", headers=auth("acme"))).json()["tenant"] == "acme"
    assert (await c.get("/admin/tenants/globex/usage", headers=auth("acme"))).status_code == 401
    assert (await c.get("/v1/usage")).status_code == 401
    admin_view = (await c.get("/admin/tenants/globex/usage", headers=ADMIN)).json()
    assert admin_view["entitlements"][0]["requests"]["completed"] == 1
    assert (await c.get("/admin/tenants/nobody/usage", headers=ADMIN)).status_code == 404


async def test_delete_removes_an_entitlement_and_its_keys_at_once(gateway) -> None:
    adm, c, r = gateway
    held = asyncio.create_task(c.post("/v1/chat/completions", json=chat(max_tokens=20),
                                      headers={**auth("acme"), "x-fake-hold": "d"}))
    await r.wait_reached("d")
    assert (await c.delete("/admin/entitlements/acme", headers=auth("acme"))).status_code == 401
    assert (await c.delete("/admin/entitlements/acme", headers=ADMIN)).status_code == 204
    assert (await c.post("/v1/chat/completions", json=chat(), headers=auth("acme"))).status_code == 401
    assert "acme" not in adm.state.config.entitlements and "acme" not in adm.state.gates["p"].live.entitlements
    r.release("d")
    assert (await held).status_code == 200  # a request in flight finishes and releases what it held
    await eventually(lambda: adm.state.gates["p"].live.seqs_in_flight == 0)
    assert (await c.delete("/admin/entitlements/acme", headers=ADMIN)).status_code == 404
    assert (await c.get("/admin/entitlements/acme", headers=ADMIN)).status_code == 404
    # The key is free again: another tenant may take it.
    resp = await c.put("/admin/entitlements/heir", json=manifest("heir", "heir", keys=[key_for("acme")]),
                       headers=ADMIN)
    assert resp.status_code == 201, resp.text


async def test_admin_config_says_the_yaml_is_the_source_without_kafka(gateway) -> None:
    _adm, c, _r = gateway
    view = (await c.get("/admin/config", headers=ADMIN)).json()
    assert view == {"source": "yaml", "ready": True, "pools": ["p"], "entitlements": ["acme", "globex", "gold"]}
    assert (await c.get("/admin/config", headers=auth("acme"))).status_code == 401


async def test_sync_config_adds_changes_and_deletes_pools_and_entitlements(gateway) -> None:
    """What the config-topic follower calls for every change (the Kafka side is in tests/integration)."""
    adm, c, r = gateway
    state = adm.state
    q = pool("q", max_replicas=2, per=(1000.0, 10000.0, 10.0), backends=[r.url])
    current = dict(state.config.entitlements)
    new_acme = ent("acme", burst=(1000, 10000, 1))
    problems = state.sync_config({"p": state.config.pools["p"], "q": q},
                                 {**current, "acme": new_acme, "qq": ent("qq", pool_name="q"),
                                  "bad": ent("bad", pool_name="nowhere")})
    assert list(problems) == ["Entitlement/bad"] and "unknown pool 'nowhere'" in problems["Entitlement/bad"]
    assert state.gates["p"].live.entitlements["acme"].burst[2] == 1
    assert (await c.post("/v1/chat/completions", json=chat(model="q"), headers=auth("qq"))).status_code == 200
    assert len(r.received) == 1

    # A pool deleted while an entitlement still uses it stays (and says why); then p goes too.
    problems = state.sync_config({"q": q}, {"qq": ent("qq", pool_name="q"), "acme": new_acme})
    assert problems == {"TokenPool/p": "pool 'p' was deleted but entitlement(s) acme still use it; it stays"}
    assert sorted(state.config.entitlements) == ["acme", "qq"] and sorted(state.gates) == ["p", "q"]
    assert (await c.post("/v1/chat/completions", json=chat(), headers=auth("globex"))).status_code == 401
    problems = state.sync_config({"q": q}, {"qq": ent("qq", pool_name="q")})
    assert problems == {} and sorted(state.gates) == ["q"] and "p" not in state.upstream.replicas
    assert (await c.post("/v1/chat/completions", json=chat(), headers=auth("qq"))).status_code == 404
