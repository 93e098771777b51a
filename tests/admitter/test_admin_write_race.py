"""Admin writes answer for what they did, even when the config follower applies them first.

With Kafka, an admin PUT or DELETE is acknowledged by the broker and then applied here; this
admitter's own config follower reads the same record and may apply it before the request handler
does. Before e9b3caa the handler decided "created?" and "found?" after the write, so a create could
answer 200 and a delete 404 (seen once in a clean CI run). Here that order is forced: a stand-in for
``ConfigSync`` (no broker: the race is about ordering inside the admitter, not Kafka) applies every
write to the admitter at once, before ``write`` returns, exactly as the follower winning the race does.
"""

from __future__ import annotations

from typing import Any

import httpx

from admitter.http.app import create_app
from admitter.settings import AdmitterSettings
from schemas.specs import Manifest
from tests.admitter.conftest import ADMIN, ADMIN_KEY, ent, platform, pool, serve, sha
from tests.admitter.test_admin import manifest


class FollowerWinsTheRace:
    """Stands in for ``ConfigSync``: every write is applied by "the follower" before it returns."""

    def __init__(self) -> None:
        self.target: Any = None
        self.writes: list[tuple[str, bool]] = []

    async def start(self, target: Any) -> None:
        self.target = target

    async def stop(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"source": "test", "ready": True}

    async def write(self, key: str, doc: Manifest | None) -> None:
        self.writes.append((key, doc is not None))
        name = key.partition("/")[2]
        if doc is None:
            assert self.target.remove_entitlement(name)
        else:
            self.target.apply_entitlement(doc)


async def test_create_is_201_and_delete_is_204_when_the_follower_applies_first() -> None:
    sync = FollowerWinsTheRace()
    settings = AdmitterSettings(admin_key_sha256=sha(ADMIN_KEY), admitter_id="race")
    app = create_app(settings, platform([pool()], [ent("acme")]), config_sync=sync)  # type: ignore[arg-type]
    served = await serve(app)
    try:
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as c:
            created = await c.put("/admin/entitlements/newcomer", json=manifest("newcomer", "t-new"), headers=ADMIN)
            assert created.status_code == 201, created.text
            updated = await c.put("/admin/entitlements/newcomer", json=manifest("newcomer", "t-new"), headers=ADMIN)
            assert updated.status_code == 200, updated.text
            deleted = await c.delete("/admin/entitlements/newcomer", headers=ADMIN)
            assert deleted.status_code == 204, deleted.text
            again = await c.delete("/admin/entitlements/newcomer", headers=ADMIN)
            assert again.status_code == 404, again.text
    finally:
        await served.stop()
    # Every write went through the topic stand-in, and the follower really did apply each first.
    assert sync.writes == [("Entitlement/newcomer", True), ("Entitlement/newcomer", True),
                           ("Entitlement/newcomer", False)]
