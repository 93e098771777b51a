"""schemathesis against the admitter's own OpenAPI document (``GET /openapi.json``), in process.

Every operation of the document gets generated requests, valid (positive) and invalid (negative)
for its schema, each sent with a drawn credential: the right one for the route (a tenant key on
``/v1``, the admin key on ``/admin`` and ``/metrics``), none, a wrong one, or the other kind of key.
Some requests are steered to where the interesting code is: ``model`` set to the served pool's
model (so completions reach the fake replica and succeed), a PUT's URL name set to its body's
``metadata.name`` and its pool to a real one (so a manifest can actually be created).

What must hold for every request (``_check``):

- no 5xx; the status is one the document lists for the operation; a negative request is refused
  with a 4xx; a request without the right credential gets 401 (on routes that need one);
- every error body is the OpenAI error shape (plus ``problems`` on the admin API's 409/422) and
  each line of its message is short; no body is larger than ``MAX_BODY`` (``MAX_ERROR_BODY`` for errors);
- a PUT that is refused leaves the entitlement as it was; one that is accepted came from a body
  that is a valid Entitlement with finite numbers, and what is stored is that body.

Sizing (why these numbers): ``EXAMPLES`` per operation and generation mode, a fixed count rather
than a time limit so that a slow machine runs the same examples, only slower. 13 operations, 7 of
them with something to make invalid (a body or a path parameter), give (6 + 7 x 2) x 100 = 2,000
requests at most (hypothesis stops earlier where an operation has few distinct inputs). In process a
request costs a few ms of generation (schemathesis builds deep JSON) and about 1 ms of handling (a
completion goes over loopback to the fake replica); the module took 20 s on 2 cores shared with four
other test runs, inside the ~60-90 s the fuzzers may take of the suite's budget. A failure costs more
(shrinking), but only when there is something to report. ``derandomize``
makes every run draw the same examples (reproducible in CI, no example database), ``deadline=None``
because a busy machine must not turn slowness into a failure, and the hypothesis health checks
about slow or large data are off because schemathesis' data is both by design.

Each test gets its own admitter, so a DELETE or PUT of one test never changes what another one sees.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema_rs
import orjson
import pytest
import schemathesis
import yaml
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from admitter.events import InMemorySink
from admitter.http.app import create_app
from admitter.http.openapi import build_openapi
from admitter.settings import AdmitterSettings
from admitter.state import AdmitterState
from schemas.specs import Entitlement
from tests.admitter.conftest import ADMIN_KEY, FakeReplica, Served, ent, key_for, platform, pool, serve, sha

EXAMPLES = 100
MAX_BODY = 256 * 1024  # /metrics and the admin lists of a two-entitlement admitter are a few KiB
MAX_ERROR_BODY = 16 * 1024
MAX_MESSAGE_LINE = 400  # an echoed value is capped far below this (schemas.echo: 80 characters)

# Which credential each operation needs; public operations need none.
TENANT, ADMIN, PUBLIC = "tenant", "admin", "public"
# "right" twice: most examples should get past authentication to where the bodies are checked.
CREDENTIALS = ("right", "right", "none", "wrong", "crossed")

CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "413", "415", "422"]
"""


def _operations() -> list[tuple[str, str]]:
    doc = build_openapi()
    return [(method.upper(), path) for path, item in doc["paths"].items()
            for method in item if method in {"get", "put", "post", "delete"}]


def _needs(path: str) -> str:
    if path.startswith("/v1/"):
        return TENANT
    if path.startswith("/admin/") or path == "/metrics":
        return ADMIN
    return PUBLIC


@dataclass
class Upstream:
    """The fake replica on its own event loop in a thread: schemathesis calls the app synchronously
    (through its own portal thread), so the replica cannot share the test's loop."""

    replica: FakeReplica
    served: Served
    loop: asyncio.AbstractEventLoop


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-upstream", daemon=True)
    thread.start()
    replica = FakeReplica("fuzz")
    served = asyncio.run_coroutine_threadsafe(serve(replica.app()), loop).result(30)
    replica.url = served.url
    yield Upstream(replica, served, loop)
    asyncio.run_coroutine_threadsafe(served.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@dataclass
class Target:
    app: FastAPI
    schema: Any  # schemathesis' OpenApiSchema

    @property
    def state(self) -> AdmitterState:
        return self.app.state.admitter  # type: ignore[no-any-return]


@pytest.fixture
def target(upstream: Upstream) -> Iterator[Target]:
    # Capacity far above what the examples ask, so most valid completions are admitted, not 429.
    big = pool(per=(1e7, 1e8, 1e4))
    config = platform([big], [ent("acme"), ent("globex")])
    settings_ = AdmitterSettings(backends={"p": [upstream.served.url]}, admin_key_sha256=sha(ADMIN_KEY),
                                 admitter_id="fuzz")
    app = create_app(settings_, config, sink=InMemorySink())
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=schemathesis.Config.from_str(CONFIG))
    try:
        yield Target(app, schema)
    finally:
        asgi.shutdown_lifespans()  # stops this admitter's lifespan (schemathesis keeps it until exit otherwise)


def _authorization(needs: str, credential: str) -> str | None:
    tenant, admin = f"Bearer {key_for('acme')}", f"Bearer {ADMIN_KEY}"
    if credential == "none":
        return None
    if credential == "wrong":
        return "Bearer tp-not-a-key-0000"
    right, other = (admin, tenant) if needs == ADMIN else (tenant, admin)
    return right if credential == "right" else other


def _validator(name: str) -> Any:
    """A JSON Schema validator of one request schema of the document (jsonschema_rs: schemathesis' own)."""
    doc = build_openapi()
    return jsonschema_rs.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                               "components": doc["components"]})


_REQUEST_VALIDATORS = {"/v1/chat/completions": _validator("ChatCompletionRequest"),
                       "/v1/completions": _validator("CompletionRequest")}


def _steer(case: Any, path: str) -> None:
    """Point a valid request at what exists, so it gets past the 404s.

    An invalid (negative) case's metadata says which field was made invalid; rewriting that field
    could make a valid request that schemathesis still expects to be refused, hence the check below.
    """
    body = case.body
    if case.meta is None or not case.meta.generation.mode.is_positive:
        # An invalid body is steered too (else it never gets past the unknown model to the field
        # checks), but only if it stays invalid with the model replaced.
        if isinstance(body, dict) and path.startswith("/v1/") and "model" in body:
            steered = {**body, "model": "p"}
            if not _REQUEST_VALIDATORS[path].is_valid(steered):
                body["model"] = "p"
        return
    if isinstance(body, dict) and path.startswith("/v1/") and "model" in body:
        body["model"] = "p"
    params = case.path_parameters or {}
    if "tenant" in params:
        case.path_parameters = {**params, "tenant": "acme"}
    if "name" in params and case.method != "PUT":
        case.path_parameters = {**params, "name": "globex"}
    if path == "/admin/entitlements/{name}" and case.method == "PUT":
        if not isinstance(body, dict):
            return
        meta, spec = body.get("metadata"), body.get("spec")
        if isinstance(meta, dict) and isinstance(meta.get("name"), str) and meta["name"]:
            case.path_parameters = {**(case.path_parameters or {}), "name": meta["name"]}
        if isinstance(spec, dict) and "pool" in spec:
            spec["pool"] = "p"


def _error_shape(status: int, body: Any, admin: bool) -> None:
    assert isinstance(body, dict), body
    allowed = {"error", "problems"} if admin and status in (409, 422) else {"error"}
    assert "error" in body and set(body) <= allowed, body
    err = body["error"]
    assert isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert "Traceback" not in err["message"]
    assert isinstance(err["type"], str) and err["type"]
    assert err["param"] is None or isinstance(err["param"], str)
    assert err["code"] is None or isinstance(err["code"], str)
    longest = max(len(line) for line in err["message"].splitlines() or [""])
    assert longest <= MAX_MESSAGE_LINE, f"an error line of {longest} characters: {err['message'][:200]!r}..."
    for problem in body.get("problems", ()):
        assert isinstance(problem, str) and len(problem) <= MAX_MESSAGE_LINE, problem[:200]


def _sent_manifest(case: Any) -> Any:
    raw = case.body
    if isinstance(raw, bytes | str):
        return yaml.safe_load(raw) if "yaml" in (case.media_type or "") else orjson.loads(raw)
    return raw


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    return True


def _check_put(case: Any, status: int, before: Entitlement | None, state: AdmitterState) -> None:
    name = case.path_parameters["name"]
    after = state.config.entitlements.get(name)
    if status not in (200, 201):
        assert after == before, f"a refused PUT ({status}) changed entitlement {name!r}"
        return
    manifest = Entitlement.model_validate(_sent_manifest(case))  # accepted: so it must be valid
    assert manifest.name == name
    assert after is not None and after.spec == manifest.spec
    assert _finite(after.model_dump()), f"a non-finite number was accepted: {after.model_dump()}"


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]


def _check(target: Target, case: Any, path: str, credential: str) -> int:
    needs = _needs(path)
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    authorization = _authorization(needs, credential)
    if authorization is not None:
        case.headers["Authorization"] = authorization
    before = None
    if case.method == "PUT":
        before = target.state.config.entitlements.get(case.path_parameters["name"])
    response = case.call()
    status = response.status_code
    if needs != PUBLIC and credential != "right":
        assert status in (400, 401), f"{credential} credential on {path}: {status} {response.text[:300]}"
    limit = MAX_ERROR_BODY if status >= 400 else MAX_BODY
    assert len(response.content) <= limit, f"{status} body of {len(response.content)} bytes"
    if status >= 400:
        content_type = (response.headers.get("content-type") or [""])[0]  # schemathesis: name -> values
        assert content_type.startswith("application/json"), response.headers
        _error_shape(status, response.json(), admin=path.startswith("/admin/"))
    if case.method == "PUT":
        _check_put(case, status, before, target.state)
    if path == "/v1/usage" and status == 503:  # history asked for, and this admitter has none configured
        assert response.json()["error"]["code"] == "history_not_configured", response.text
        return status
    case.validate_response(response, checks=CHECKS)
    return status


# The answers the examples must reach at least once per operation, so a fuzzer that only ever
# meets 401s or 404s (a broken steer, a key that stopped working) fails instead of passing vacuously.
MUST_SEE: dict[str, set[int]] = {
    "POST /v1/chat/completions": {200, 400, 401}, "POST /v1/completions": {200, 400, 401},
    "PUT /admin/entitlements/{name}": {201, 401, 422}, "DELETE /admin/entitlements/{name}": {204, 401, 404},
    "GET /admin/entitlements/{name}": {200, 401, 404}, "GET /healthz": {200}, "GET /openapi.json": {200},
}


@pytest.mark.parametrize(("method", "path"), _operations(), ids=[f"{m} {p}" for m, p in _operations()])
def test_operation(target: Target, method: str, path: str) -> None:
    operation = target.schema[path][method]
    modes = [operation.as_strategy(GenerationMode.POSITIVE)]
    if operation.body or operation.path_parameters:  # nothing to negate otherwise
        modes.append(operation.as_strategy(GenerationMode.NEGATIVE))

    @settings(max_examples=EXAMPLES * len(modes), derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(case=st.one_of(*modes), credential=st.sampled_from(CREDENTIALS),
           steer=st.sampled_from((True, True, False)))
    def run(case: Any, credential: str, steer: bool) -> None:
        if steer:
            _steer(case, path)
        try:
            seen.add(_check(target, case, path, credential))
        except AssertionError as exc:  # hypothesis cannot print a Case: say what was sent
            exc.add_note(f"sent: {case.method} {case.formatted_path} credential={credential} "
                         f"headers={case.headers!r} body={case.body!r:.500}")
            raise

    seen: set[int] = set()
    run()
    label = f"{method} {path}"
    expected = MUST_SEE.get(label, {200, 401})
    assert expected <= seen, f"{label}: never answered {sorted(expected - seen)} (saw {sorted(seen)})"


@pytest.mark.parametrize("credential", ["right", "none"])
def test_newline_in_name_is_refused_like_other_bad_names(target: Target, credential: str) -> None:
    """Found by the fuzzer: PUT /admin/entitlements/0...0%0A0 without a credential answered the router's bare
    404, before authentication (Starlette's {name:path} is '.*', which stops at a newline); fixed in admin.py."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"} if credential == "right" else {}
    with asgi.get_client(target.app) as client:
        response = client.get("/admin/entitlements/a%0Ab", headers=headers)
    assert response.status_code == (400 if credential == "right" else 401), response.text


def _routes(routes: list[Any]) -> Iterator[Any]:
    """Every route, through FastAPI's included routers (``original_router`` in FastAPI >= 0.120)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes)
        elif getattr(route, "methods", None):
            yield route


def test_document_covers_every_route(target: Target) -> None:
    """The document lists every route the app serves (a new route without a description fails here)."""
    doc = build_openapi()
    served = {(m, re.sub(r":\w+}", "}", r.path)) for r in _routes(target.app.routes) for m in r.methods if m != "HEAD"}
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item if m != "parameters"}
    assert served == documented


def test_document_is_public_and_valid(target: Target) -> None:
    with asgi.get_client(target.app) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.1")
    assert {"tenantKey", "adminKey"} <= set(doc["components"]["securitySchemes"])
    # The manifest schema is the pydantic model's, not a copy that could drift.
    assert doc["components"]["schemas"]["Entitlement"]["required"] == ["metadata", "spec"]
    with pytest.raises(ValidationError):
        Entitlement.model_validate({"metadata": {"name": "x"}})
