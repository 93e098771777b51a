"""The admin API (``/admin``, its own bearer token) and the tenant-facing ``/v1/usage``.

Admin sees every pool and entitlement with live state and may create, update or delete entitlements
(with Kafka the write goes to ``tokenpools.config`` first and is answered once acknowledged, else 503);
a tenant key gets 401 there. A tenant sees only its own entitlements' usage through its own key:
the tenant is derived from the key, never taken from the request; that holds for its usage history
too (``/v1/usage?granularity=hour|day``, asked of the history process: ``admitter.http.history``).

Refusals found below the edge (an invalid manifest, an entitlement that conflicts, the config topic
unavailable) are domain errors, answered by the app's handler through
``admitter.http.errors.openai_error``: these routes do not choose those statuses.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import yaml
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.convertors import PathConvertor, register_url_convertor

from admitter.http import history
from admitter.http.auth import KeyOwner, request_token
from admitter.http.body import ClientGone, read_body
from admitter.http.views import entitlement_view, pool_view, usage_view
from admitter.state import AdmitterState
from schemas.echo import echo, echo_str
from schemas.errors import EntitlementInvalid
from schemas.loader import Source, parse_manifest
from schemas.openai import OpenAIError
from schemas.specs import Entitlement
from schemas.specs import check_name as spec_check_name


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _state(request: Request) -> AdmitterState:
    return request.app.state.admitter  # type: ignore[no-any-return]


def require_admin(request: Request) -> AdmitterState:
    state = _state(request)
    # The raw header list, not request.headers: see request_token (two Authorization headers are a 400).
    if not state.admin_key.check(request_token(request.scope["headers"])):
        raise OpenAIError(401, "admin credential missing or invalid", "invalid_admin_key",
                          headers={"www-authenticate": "Bearer"})
    return state


def require_tenant(request: Request) -> tuple[AdmitterState, KeyOwner]:
    state = _state(request)
    owner = state.keyring.lookup(request_token(request.scope["headers"]))
    if owner is None:
        raise OpenAIError(401, "missing or invalid API key; send it as 'Authorization: Bearer <key>'",
                          "invalid_api_key")
    return state, owner


class _AnyText(PathConvertor):
    """The rest of the path, newlines included: Starlette's ``path`` is ``.*``, which stops at a newline,
    so ``/admin/entitlements/a%0Ab`` missed the route and got a bare 404 before authentication."""

    regex = r"[\s\S]*"


register_url_convertor("anytext", _AnyText())  # Starlette's registry is global; the name is ours


def check_name(value: str, param: str) -> None:
    """400 for a name in the URL that no entitlement or tenant can have, saying what a name may be.

    The same rule as the manifests' names (``schemas.specs.check_name``, an RFC 1123 subdomain), so
    the URL cannot name what no manifest could. The routes take the rest of the path
    (``{name:anytext}``) so that a name with '/' or an empty one reaches this check instead of the
    router's bare 404 (or, before slash redirects were switched off, a 307 with an empty body for
    ``PUT /admin/entitlements/``).
    """
    try:
        spec_check_name(value)
    except ValueError as exc:
        raise OpenAIError(400, f"{param} {exc}", "invalid_name", param=param) from None


def build_router() -> APIRouter:
    router = APIRouter()

    @router.get("/admin/pools")
    async def admin_pools(request: Request) -> Response:
        state = require_admin(request)
        return json_response({"pools": [pool_view(state, g) for g in state.gates.values()]})

    @router.get("/admin/entitlements")
    async def admin_entitlements(request: Request) -> Response:
        state = require_admin(request)
        views = [entitlement_view(g, e) for g in state.gates.values() for e in g.live.entitlements.values()]
        return json_response({"entitlements": sorted(views, key=lambda v: v["name"])})

    @router.get("/admin/entitlements/{name:anytext}")
    async def admin_entitlement(name: str, request: Request) -> Response:
        state = require_admin(request)
        check_name(name, "name")
        found = state.entitlement_live(name)
        if found is None:
            raise OpenAIError(404, f"no entitlement named '{echo_str(name)}'", "not_found")
        return json_response(entitlement_view(*found))

    @router.put("/admin/entitlements/{name:anytext}")
    async def admin_put_entitlement(name: str, request: Request) -> Response:
        state = require_admin(request)
        check_name(name, "name")  # before the body is read: a bad URL needs no manifest to be refused
        # A running cap (read_body), not request.body() then a length check: that buffered the whole
        # body first (a 300 MiB chunked PUT took the admitter from 113 to 712 MB before its 413).
        length = request.headers.get("content-length")
        try:
            raw = await read_body(request.receive, int(length) if length and length.isdigit() else None,
                                  state.settings.max_body_bytes)
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; the client left mid-body
        doc = _decode_manifest(raw, request.headers.get("content-type"))
        manifest = parse_manifest(doc, Source(f"PUT /admin/entitlements/{name}", 1))  # ConfigError: 422
        if not isinstance(manifest, Entitlement):
            raise EntitlementInvalid([f"kind: expected 'Entitlement', got '{manifest.kind}'"])  # type: ignore[attr-defined]
        if manifest.name != name:
            raise EntitlementInvalid([f"metadata.name: '{echo_str(manifest.name)}' does not match the URL's "
                                      f"'{echo_str(name)}'"])
        # EntitlementInvalid 422, EntitlementConflict 409, ConfigUnavailable 503 (admitter.http.errors)
        created = await state.put_entitlement(manifest)
        found = state.entitlement_live(name)
        assert found is not None
        return json_response(entitlement_view(*found), status=201 if created else 200)

    @router.delete("/admin/entitlements/{name:anytext}")
    async def admin_delete_entitlement(name: str, request: Request) -> Response:
        """Its keys stop working at once (at every admitter, with Kafka); requests in flight finish."""
        state = require_admin(request)
        check_name(name, "name")
        deleted = await state.delete_entitlement(name)  # ConfigUnavailable 503 (admitter.http.errors)
        if not deleted:
            raise OpenAIError(404, f"no entitlement named '{echo_str(name)}'", "not_found")
        return Response(status_code=204)

    @router.get("/admin/config")
    async def admin_config(request: Request) -> Response:
        """Where the config comes from: the YAML alone, or the config topic (read yet? bad records?)."""
        state = require_admin(request)
        sync = state.config_sync
        view = {"source": "yaml", "ready": True} if sync is None else sync.status()
        view.update(pools=sorted(state.config.pools), entitlements=sorted(state.config.entitlements))
        return json_response(view)

    @router.get("/admin/tenants/{tenant:anytext}/usage")
    async def admin_tenant_usage(tenant: str, request: Request) -> Response:
        state = require_admin(request)
        check_name(tenant, "tenant")
        ents = state.tenant_entitlements(tenant)
        if not ents:
            raise OpenAIError(404, f"no entitlements for tenant '{echo_str(tenant)}'", "not_found")
        return json_response({"tenant": tenant, "entitlements": [usage_view(state, e, admin=True) for e in ents]})

    @router.get("/v1/usage")
    async def tenant_usage(request: Request) -> Response:
        """Live usage; with ``granularity`` (and ``start``/``end``) also the tenant's history (``history.py``).

        The tenant is the key's: a ``tenant`` query parameter is ignored, like every other one.
        """
        state, owner = require_tenant(request)
        query = request.query_params.multi_items()
        span = history.parse_range(query, dt.datetime.now(dt.UTC)) if history.wants_history(query) else None
        ents = state.tenant_entitlements(owner.tenant)
        body: dict[str, Any] = {"tenant": owner.tenant,
                                "entitlements": [usage_view(state, e, admin=False) for e in ents]}
        if span is not None:
            body["history"] = await history.tenant_history(state.settings, owner.tenant, span)
            body["history_range"] = span.view()
        return json_response(body)

    @router.get("/v1/models")
    async def models(request: Request) -> Response:
        state, owner = require_tenant(request)
        data = [
            {"id": state.config.pools[p].spec.model, "object": "model", "owned_by": "tokenpools", "pool": p}
            for p in sorted(owner.by_pool) if p in state.config.pools
        ]
        return json_response({"object": "list", "data": data})

    return router


def _decode_manifest(raw: bytes, content_type: str | None) -> Any:
    """The body as data, or 400 with one short line.

    YAML goes through the config loader's hardened reader (aliases bounded, duplicate keys and deep
    nesting refused; plain ``yaml.safe_load`` expanded an alias bomb into a 624 MB 422). JSON keeps
    orjson (which refuses deep nesting) and is then checked for duplicate keys, which orjson, like
    PyYAML, resolves silently to the last.
    """
    import json

    from schemas import yaml_load

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"duplicate key {echo(key)}; keep one of them")
            out[key] = value
        return out

    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    try:
        if media in {"application/yaml", "application/x-yaml", "text/yaml"}:
            return yaml_load.load_one(raw)
        if media == "application/json":
            doc = orjson.loads(raw)
            json.loads(raw, object_pairs_hook=no_duplicates)  # orjson bounded the depth already
            return doc
    except yaml_load.YAMLInputError as exc:
        raise OpenAIError(400, f"body is not acceptable YAML: {exc}", "invalid_body") from None
    except (orjson.JSONDecodeError, yaml.YAMLError, ValueError, RecursionError) as exc:
        raise OpenAIError(400, f"body is not valid {'YAML' if 'yaml' in media else 'JSON'}: "
                          f"{echo_str(str(exc).splitlines()[0], 200)}", "invalid_body") from None
    raise OpenAIError(415, f"Content-Type must be application/json or application/yaml, got {echo(media)}",
                      "unsupported_media_type")

