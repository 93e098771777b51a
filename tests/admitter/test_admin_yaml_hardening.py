"""Admin PUT bodies through the hardened YAML reader: an alias bomb gets a small 400, not a 624 MB 422."""

from __future__ import annotations

import pytest

from tests.admitter.conftest import ADMIN, ent, platform, pool


def bomb(levels: int, width: int) -> bytes:
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
async def admin(admitter):
    adm = await admitter(platform([pool()], [ent("acme")]))
    async with adm.client() as c:
        yield c


YAML = {**ADMIN, "content-type": "application/yaml"}


async def test_the_8_level_alias_bomb_gets_a_small_4xx(admin) -> None:
    body = b"apiVersion: tokenpools.dev/v1alpha1\n" + bomb(8, 8) + b"kind: *a7\n"  # the old 422 echoed kind
    resp = await admin.put("/admin/entitlements/bomb", content=body, headers=YAML)
    assert resp.status_code == 400
    assert len(resp.content) < 4096
    assert "aliases expand this document" in resp.json()["error"]["message"]


async def test_duplicate_keys_in_a_yaml_body_are_400_naming_the_key(admin) -> None:
    body = b"apiVersion: tokenpools.dev/v1alpha1\nkind: Entitlement\nkind: TokenPool\n"
    resp = await admin.put("/admin/entitlements/x", content=body, headers=YAML)
    assert resp.status_code == 400
    assert "line 3, column 1: duplicate key 'kind' (first at line 2)" in resp.json()["error"]["message"]


async def test_duplicate_keys_in_a_json_body_are_400(admin) -> None:
    body = b'{"apiVersion": "tokenpools.dev/v1alpha1", "kind": "Entitlement", "spec": {"tier": "spot", "tier": "x"}}'
    resp = await admin.put("/admin/entitlements/x", content=body, headers={**ADMIN, "content-type": "application/json"})
    assert resp.status_code == 400
    assert "duplicate key 'tier'" in resp.json()["error"]["message"]
