"""Names in admin URLs get a JSON 400 that says what a name may be (no plain 404, no redirect), and
nothing a client sends is echoed back unbounded (a 1 MB model name once came back as a 1 MB 404)."""

from __future__ import annotations

import pytest

from admitter.state import EntitlementRejected
from schemas.errors import EntitlementConflict
from schemas.specs import Entitlement
from tests.admitter.conftest import ADMIN, auth, chat, ent, key_for, platform, pool
from tests.admitter.test_admin import manifest
from tests.admitter.test_bad_input import assert_openai_error


@pytest.fixture
async def gateway(replicas, admitter):
    r = await replicas()
    adm = await admitter(platform([pool()], [ent("acme")]), backends={"p": [r.url]}, max_body_bytes=4 * 2**20)
    async with adm.client() as c:
        yield adm, c, r


BAD_NAMES = {"slash": "a/b", "empty": "", "double dot": "a..b", "dot dash": "a.-b", "upper": "Acme",
             "trailing dash": "acme-", "too long": "a" * 254, "space": "a%20b", "encoded slash": "a%2Fb",
             "newline": "a%0Ab", "tab": "a%09b"}


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_a_bad_entitlement_name_in_the_url_is_a_json_400_saying_what_is_allowed(gateway, method, name) -> None:
    adm, c, _r = gateway
    kwargs = {"json": manifest("acme", "acme", keys=[key_for("acme")])} if method == "PUT" else {}
    resp = await c.request(method, f"/admin/entitlements/{name}", headers=ADMIN, **kwargs)
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert_openai_error(body, "invalid_name")
    assert body["error"]["param"] == "name"
    assert "lowercase letters, digits" in body["error"]["message"]
    assert len(resp.content) < 1000
    assert "acme" in adm.state.config.entitlements  # a DELETE of 'a/b' deleted nothing


@pytest.mark.parametrize("tenant", ["a/b", "a..b", "Acme"])
async def test_a_bad_tenant_name_in_the_url_is_a_json_400(gateway, tenant) -> None:
    _adm, c, _r = gateway
    resp = await c.get(f"/admin/tenants/{tenant}/usage", headers=ADMIN)
    assert resp.status_code == 400, resp.text
    assert_openai_error(resp.json(), "invalid_name")
    assert resp.json()["error"]["param"] == "tenant"


@pytest.mark.parametrize("path", ["/v1/models/", "/admin/pools/", "/admin/entitlements/acme/", "/metrics/"])
async def test_no_slash_redirects(gateway, path) -> None:
    """A trailing slash used to answer 307 with an empty body; now a JSON error (httpx does not follow)."""
    _adm, c, _r = gateway
    resp = await c.get(path, headers=ADMIN)
    assert resp.status_code in (400, 404), resp.status_code
    assert_openai_error(resp.json(), "invalid_name" if resp.status_code == 400 else "not_found")


async def test_good_names_still_work(gateway) -> None:
    _adm, c, _r = gateway
    assert (await c.get("/admin/entitlements/acme", headers=ADMIN)).status_code == 200
    assert (await c.get("/admin/tenants/acme/usage", headers=ADMIN)).status_code == 200
    resp = await c.put("/admin/entitlements/team.acme-2", json=manifest("team.acme-2", "acme", keys=["tp-new-key"]),
                       headers=ADMIN)
    assert resp.status_code == 201, resp.text
    assert (await c.delete("/admin/entitlements/team.acme-2", headers=ADMIN)).status_code == 204


MB = "m" * 2**20


async def test_a_1mb_model_name_gets_a_small_404(gateway) -> None:
    _adm, c, r = gateway
    for route, body in (("/v1/chat/completions", chat(model=MB)),
                        ("/v1/completions", {"model": MB, "prompt": "hi", "max_tokens": 2})):
        resp = await c.post(route, json=body, headers=auth("acme"))
        assert resp.status_code == 404
        assert_openai_error(resp.json(), "model_not_found")
        assert len(resp.content) < 1000, len(resp.content)
    assert not r.received


async def test_long_values_in_known_fields_are_echoed_bounded(gateway) -> None:
    _adm, c, _r = gateway
    for extra in ({"temperature": "x" * 100_000}, {"stop": ["s" * 100_000] * 5}, {"logit_bias": {"1": "y" * 100_000}}):
        resp = await c.post("/v1/chat/completions", json=chat(**extra), headers=auth("acme"))
        assert resp.status_code == 400 and len(resp.content) < 1000, (list(extra), len(resp.content))
    role = await c.post("/v1/chat/completions", json={"model": "p", "messages": [{"role": "r" * 100_000}]},
                        headers=auth("acme"))
    assert role.status_code == 400 and len(role.content) < 1000


async def test_long_content_types_and_names_are_echoed_bounded(gateway) -> None:
    _adm, c, _r = gateway
    long_type = "text/" + "x" * 10_000
    resp = await c.post("/v1/chat/completions", content=b"{}", headers={**auth("acme"), "content-type": long_type})
    assert resp.status_code == 415 and len(resp.content) < 1000
    resp = await c.put("/admin/entitlements/acme", content=b"{}", headers={**ADMIN, "content-type": long_type})
    assert resp.status_code == 415 and len(resp.content) < 1000
    # Names are capped at 253 by the rule, and their echo at less (uvicorn takes a 10 KB path).
    for path in ("/admin/entitlements/" + "n" * 10_000, "/admin/tenants/" + "t" * 10_000 + "/usage"):
        resp = await c.get(path, headers=ADMIN)
        assert resp.status_code == 400 and len(resp.content) < 1000, path[:30]
    longest = ".".join(["n" * 63] * 3 + ["n" * 61])  # 253 characters, labels of at most 63: valid, unknown
    resp = await c.get(f"/admin/entitlements/{longest}", headers=ADMIN)
    assert resp.status_code == 404 and len(resp.content) < 400


# -- 409 for a key another tenant holds: the incoming entitlement is the one named ------------------


def holding(name: str, tenant: str, key: str) -> Entitlement:
    return Entitlement.model_validate(manifest(name, tenant, keys=[key]))


@pytest.mark.parametrize("newcomer", ["aaa", "zzz"])  # sorts before and after the holder 'mmm'
async def test_the_409_names_the_incoming_entitlement_whatever_the_sort_order(admitter, newcomer) -> None:
    held = key_for("holder")
    adm = await admitter(platform([pool()], [holding("mmm", "holder", held)]))
    incoming = holding(newcomer, "intruder", held)
    with pytest.raises(EntitlementRejected) as caught:
        adm.state.check_entitlement(incoming)
    message = caught.value.problems[0]
    assert isinstance(caught.value, EntitlementConflict)  # answered 409 at the HTTP edge, below
    assert f"entitlement '{newcomer}' (tenant 'intruder') lists an API key that already belongs to tenant " \
           "'holder'" in message, message
    # And over HTTP, where the admin sees it.
    async with adm.client() as c:
        resp = await c.put(f"/admin/entitlements/{newcomer}", json=manifest(newcomer, "intruder", keys=[held]),
                           headers=ADMIN)
    assert resp.status_code == 409
    assert f"entitlement '{newcomer}' (tenant 'intruder') lists" in resp.json()["error"]["message"]


@pytest.mark.parametrize("newcomer", ["aaa", "zzz"])
async def test_the_same_pool_409_names_the_incoming_entitlement_too(admitter, newcomer) -> None:
    held = key_for("holder")
    adm = await admitter(platform([pool()], [holding("mmm", "holder", held)]))
    with pytest.raises(EntitlementRejected) as caught:
        adm.state.check_entitlement(holding(newcomer, "holder", held))
    assert f"entitlement '{newcomer}' lists an API key also used by entitlement 'mmm'" in caught.value.problems[0]
