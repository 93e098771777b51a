"""One credential rule for every route: exactly one Authorization header, or 400 and nothing done.

Sent over a raw socket, because an HTTP client may fold two headers of the same name into one
(``a, b``) and the bug was about two separate header lines: the completion routes took the last,
``/v1/usage`` and ``/admin`` the first, so tenant-a's key followed by tenant-b's was billed to b.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import orjson
import pytest

from tests.admitter.conftest import ADMIN, auth, chat, ent, key_for, platform, pool
from tests.admitter.test_admin import manifest

A = auth("acme")["Authorization"]
B = auth("globex")["Authorization"]
ROOT = ADMIN["Authorization"]

CHAT = orjson.dumps(chat())
PROMPT = orjson.dumps({"model": "p", "prompt": "hello", "max_tokens": 4})
PUT = orjson.dumps(manifest("acme", "acme", keys=[key_for("acme")]))

ROUTES: list[tuple[str, str, bytes]] = [
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/v1/completions", PROMPT),
    ("GET", "/v1/usage", b""),
    ("GET", "/v1/models", b""),
    ("GET", "/admin/pools", b""),
    ("GET", "/admin/entitlements", b""),
    ("GET", "/admin/entitlements/acme", b""),
    ("PUT", "/admin/entitlements/acme", PUT),
    ("DELETE", "/admin/entitlements/acme", b""),
    ("GET", "/admin/config", b""),
    ("GET", "/admin/tenants/acme/usage", b""),
    ("GET", "/metrics", b""),
]
# Two tenants (the billing case), the admin twice (nothing ambiguous, still refused: the rule does
# not depend on which keys they are), and a tenant with the admin.
PAIRS = {"tenant-a then tenant-b": (A, B), "tenant-b then tenant-a": (B, A), "admin twice": (ROOT, ROOT),
         "tenant then admin": (A, ROOT), "admin then tenant": (ROOT, A)}


async def raw_request(url: str, method: str, path: str, headers: list[tuple[str, str]],
                      body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request written byte for byte (every header line as given); status and body."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close",
                 f"Content-Length: {len(body)}", "Content-Type: application/json"]
        lines += [f"{k}: {v}" for k, v in headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        async with asyncio.timeout(10):
            data = await reader.read()
    finally:
        writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload


@pytest.fixture
async def gateway(replicas, admitter):
    r = await replicas()
    adm = await admitter(platform([pool()], [ent("acme"), ent("globex")]), backends={"p": [r.url]})
    return adm, r


@pytest.mark.parametrize("pair", list(PAIRS), ids=list(PAIRS))
@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_two_authorization_headers_are_400_on_every_route(gateway, method, path, body, pair) -> None:
    adm, r = gateway
    state = adm.state
    usage = {name: state.usage.of(name).as_dict() for name in ("acme", "globex")}
    config = dict(state.config.entitlements)
    first, second = PAIRS[pair]
    status, payload = await raw_request(adm.url, method, path, [("Authorization", first), ("Authorization", second)],
                                        body)
    assert status == 400, payload
    err = orjson.loads(payload)["error"]
    assert err["code"] == "multiple_credentials" and err["type"] == "invalid_request_error"
    assert "Authorization" in err["message"]
    # Nothing was done on either tenant's behalf: no replica call, no usage, no config change.
    assert not r.received
    assert {name: state.usage.of(name).as_dict() for name in ("acme", "globex")} == usage
    assert dict(state.config.entitlements) == config
    assert not [e for e in adm.sink.events]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_one_authorization_header_still_works_on_every_route(gateway, method, path, body) -> None:
    """The control for the test above: the same raw requests with one header are served."""
    adm, _r = gateway
    credential = A if path.startswith("/v1/") else ROOT
    status, payload = await raw_request(adm.url, method, path, [("Authorization", credential)], body)
    assert status in (200, 201, 204), payload


async def test_public_metrics_refuse_two_authorization_headers_too(replicas, admitter) -> None:
    adm = await admitter(platform([pool()], [ent("acme")]), public_metrics=True)
    assert (await raw_request(adm.url, "GET", "/metrics", []))[0] == 200
    status, _ = await raw_request(adm.url, "GET", "/metrics", [("Authorization", A), ("Authorization", B)])
    assert status == 400
