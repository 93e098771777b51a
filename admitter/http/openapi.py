"""The admitter's OpenAPI document, written by hand because FastAPI cannot derive it.

Why by hand: the completion routes are raw ASGI endpoints (``completions.py``) and every other route
reads ``Request`` itself (``admin.py``), so FastAPI's generator would see no bodies, no parameters
and no error responses. This module describes what the routes really accept and answer:

- the tenant routes with OpenAI-shaped request schemas (the fields the admitter reads are typed as
  it checks them; ``n`` is documented as 1 because that is all it admits); unknown fields are
  allowed and passed through, as the OpenAI API does;
- the admin routes, with the Entitlement manifest schema taken from the pydantic models at build
  time (the same source as ``schemas/jsonschema/Entitlement.json``), so the two cannot drift;
- every error in the OpenAI shape ``{"error": {"message", "type", "param", "code"}}`` (the admin
  API's 409 and 422 add ``problems``), and the two bearer schemes (tenant key, admin key).

It is served at ``GET /openapi.json`` without a credential: it is a schema and holds no secrets.
The schemathesis fuzzer (``tests/admitter/test_fuzz_openapi.py``) checks the routes against it.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.routing import Route

from schemas.specs import Entitlement

OPENAPI_PATH = "/openapi.json"

JSON = "application/json"
Schema = dict[str, Any]

_REF = "#/components/schemas/{model}"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


# -- errors ----------------------------------------------------------------------------------------

_ERROR: Schema = {
    "type": "object",
    "description": "The OpenAI error shape; every failure the admitter produces has it, never a stack trace.",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "additionalProperties": False,
            "properties": {
                "message": {"type": "string", "minLength": 1},
                "type": {"type": "string", "minLength": 1},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

_PROBLEMS: Schema = {
    "type": "object",
    "description": "An admin-API refusal: the OpenAI error shape plus one line per problem found.",
    "required": ["error", "problems"],
    "additionalProperties": False,
    "properties": {
        "error": _ERROR["properties"]["error"],
        "problems": {"type": "array", "items": {"type": "string"}},
    },
}

# Status -> why it is answered; the texts become the response descriptions.
_ERROR_TEXT = {
    400: "Bad request: malformed JSON, a field of the wrong type or value, more than one credential header",
    401: "Missing or invalid credential",
    403: "The key has no entitlement on this model",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict with the current config (a guarantee the pool cannot provision, a key another tenant holds)",
    413: "Request body over the limit (--max-body-bytes)",
    415: "Unsupported Content-Type",
    422: "The manifest is not a valid Entitlement",
    429: "The entitlement's limit is reached on one dimension (see x-tokenpools-exhausted-dimension)",
    500: "Internal error (logged server-side; never a stack trace)",
    502: "The replica failed or answered badly",
    503: "Overloaded, preempted (spot), no replica, the config topic or the usage history unavailable; "
         "see Retry-After",
    504: "The replica did not answer in time",
}


def _error_response(status: int) -> Schema:
    body = _ref("ProblemResponse") if status in (409, 422) else _ref("ErrorResponse")
    response: Schema = {"description": _ERROR_TEXT[status], "content": {JSON: {"schema": body}}}
    if status in (429, 503):
        response["headers"] = {"Retry-After": {"description": "Whole seconds", "schema": {"type": "string"}}}
    return response


def _responses(ok: dict[int, Schema], errors: tuple[int, ...]) -> dict[str, Schema]:
    out = {str(status): response for status, response in ok.items()}
    out.update({str(status): {"$ref": f"#/components/responses/E{status}"} for status in errors})
    return out


def _json_ok(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}}


# -- tenant requests (OpenAI shapes) ----------------------------------------------------------------

_CONTENT_PART: Schema = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string"}, "text": {"type": "string"}},
}

_MESSAGE: Schema = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool", "function"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _ref("ContentPart")}, {"type": "null"}]},
        "name": {"type": "string"},
        "tool_call_id": {"type": "string"},
        "tool_calls": {"type": "array", "items": {"type": "object"}},
    },
}

_STOP: Schema = _nullable({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"},
                                                            "maxItems": 4}]})

# Sampling and output fields both request kinds share, typed as the OpenAI API types them.
_COMMON: dict[str, Schema] = {
    "model": {"type": "string", "minLength": 1, "description": "A pool's model (GET /v1/models)"},
    "max_tokens": _nullable({"type": "integer", "minimum": 1}),
    "stream": _nullable({"type": "boolean"}),
    "stream_options": _nullable({"type": "object", "properties": {"include_usage": {"type": "boolean"}}}),
    "temperature": _nullable({"type": "number", "minimum": 0, "maximum": 2}),
    "top_p": _nullable({"type": "number", "minimum": 0, "maximum": 1}),
    "n": _nullable({"type": "integer", "minimum": 1, "maximum": 1,
                    "description": "Only 1: each choice would need its own reservation"}),
    "stop": _STOP,
    "presence_penalty": _nullable({"type": "number", "minimum": -2, "maximum": 2}),
    "frequency_penalty": _nullable({"type": "number", "minimum": -2, "maximum": 2}),
    "logit_bias": _nullable({"type": "object", "additionalProperties": {"type": "number", "minimum": -100,
                                                                         "maximum": 100}}),
    "seed": _nullable({"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}),
    "user": _nullable({"type": "string"}),
}

_CHAT_REQUEST: Schema = {
    "type": "object",
    "description": "An OpenAI chat completion request; unknown fields are passed through to the replica.",
    "required": ["model", "messages"],
    "properties": {
        **_COMMON,
        "messages": {"type": "array", "minItems": 1, "items": _ref("ChatMessage")},
        "max_completion_tokens": _nullable({"type": "integer", "minimum": 1}),
        "logprobs": _nullable({"type": "boolean"}),
        "top_logprobs": _nullable({"type": "integer", "minimum": 0, "maximum": 20}),
        "tools": _nullable({"type": "array", "items": {"type": "object"}}),
        "tool_choice": _nullable({"anyOf": [{"enum": ["none", "auto", "required"]}, {"type": "object"}]}),
        "parallel_tool_calls": _nullable({"type": "boolean"}),
        "functions": _nullable({"type": "array", "items": {"type": "object"}}),
        "function_call": _nullable({"anyOf": [{"enum": ["none", "auto"]}, {"type": "object"}]}),
        "response_format": _nullable({"type": "object", "required": ["type"],
                                      "properties": {"type": {"type": "string"}}}),
    },
}

_COMPLETION_REQUEST: Schema = {
    "type": "object",
    "description": "An OpenAI (legacy) completion request: one prompt, as text or token ids.",
    "required": ["model", "prompt"],
    "properties": {
        **_COMMON,
        "prompt": {"anyOf": [
            {"type": "string"},
            {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
            {"type": "array", "minItems": 1, "maxItems": 1, "items": {"type": "string"}},
        ]},
        "best_of": _nullable({"type": "integer", "minimum": 1, "maximum": 1}),
        "echo": _nullable({"type": "boolean"}),
        "logprobs": _nullable({"type": "integer", "minimum": 0, "maximum": 5}),
        "suffix": _nullable({"type": "string"}),
    },
}

# What a replica answers, relayed as is: documented loosely (the admitter does not rewrite it).
_COMPLETION_RESPONSE: Schema = {
    "type": "object",
    "required": ["choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object"}},
        "usage": _nullable({"type": "object"}),
    },
}

_COMPLETION_ERRORS = (400, 401, 403, 404, 405, 413, 415, 429, 500, 502, 503, 504)


def _completion(summary: str, request: str) -> Schema:
    return {
        "summary": summary,
        "tags": ["tenant"],
        "security": [{"tenantKey": []}],
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref(request)}}},
        "responses": _responses({200: {
            "description": "The replica's answer, relayed (SSE when stream is true)",
            "headers": {"x-request-id": {"schema": {"type": "string"}}},
            "content": {JSON: {"schema": _ref("CompletionResponse")},
                        # Each server-sent event (as clients parse them: data, event) is one item.
                        "text/event-stream": {"schema": {"type": "object", "required": ["data"],
                                                         "properties": {"data": {"type": "string"}}}}},
        }}, _COMPLETION_ERRORS),
    }


# -- tenant and admin views -------------------------------------------------------------------------

_AMOUNTS: Schema = {
    "type": "object",
    "properties": {"throughput": {"type": "number"}, "kv": {"type": "number"}, "concurrency": {"type": "number"}},
}

_USAGE_ITEM: Schema = {
    "type": "object",
    "required": ["entitlement", "pool", "tier"],
    "properties": {"entitlement": {"type": "string"}, "pool": {"type": "string"}, "tier": {"type": "string"},
                   "model": {"type": "string"}, "limits": _ref("Amounts"), "in_flight": {"type": "object"}},
}

_USAGE: Schema = {
    "type": "object",
    "required": ["tenant", "entitlements"],
    "properties": {
        "tenant": {"type": "string"},
        "entitlements": {"type": "array", "items": _ref("UsageItem")},
        "history": {"type": "array", "items": _ref("UsageHistoryRow"),
                    "description": "With ?granularity= only: the tenant's rows from the history process, "
                                   "ordered by bucket, entitlement, pool, tier"},
        "history_range": _ref("UsageHistoryRange"),
    },
}

_USAGE_HISTORY_ROW: Schema = {
    "type": "object",
    "description": "One bucket of one entitlement of the caller's tenant (the history's tenant_usage question). "
                   "Decisions count in the bucket they were made in, tokens in the bucket the request finished in.",
    "required": ["bucket", "tenant", "entitlement", "pool", "tier"],
    "properties": {
        "bucket": {"type": "string", "format": "date-time", "description": "Start of the hour or day (UTC)"},
        "tenant": {"type": "string", "description": "Always the caller's tenant"},
        "entitlement": {"type": "string"}, "pool": {"type": "string"}, "tier": {"type": "string"},
        "requests": {"type": "integer", "description": "Admission decisions (admitted, queued then admitted, "
                                                       "refused)"},
        "refused": {"type": "integer"},
        "prompt_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"},
        "charged_throughput": {"type": "number", "description": "Weighted tokens charged to the entitlement "
                                                                "(the pool's token weights times the tokens used)"},
    },
}

_USAGE_HISTORY_RANGE: Schema = {
    "type": "object",
    "description": "The range the history counts: the one asked for, widened to whole buckets (UTC)",
    "required": ["granularity", "bucket_seconds", "start", "end"],
    "properties": {"granularity": {"enum": ["hour", "day"]}, "bucket_seconds": {"enum": [3600, 86400]},
                   "start": {"type": "string", "format": "date-time"},
                   "end": {"type": "string", "format": "date-time"}},
}

_HISTORY_PARAMS: list[Schema] = [
    {"name": "granularity", "in": "query", "required": False,
     "description": "Add the tenant's usage history per hour or per day (needs the admitter's "
                    "TOKENPOOLS_ADMITTER_HISTORY_URL; 503 without it or while the history process is unavailable)",
     "schema": {"enum": ["hour", "day"]}},
    {"name": "start", "in": "query", "required": False,
     "description": "ISO 8601, UTC without an offset; rounded down to a whole bucket (default: end minus 24 hours "
                    "for hour, 30 days for day). At most 400 days before end",
     "schema": {"type": "string", "format": "date-time"}},
    {"name": "end", "in": "query", "required": False,
     "description": "ISO 8601, first instant not counted; rounded up to a whole bucket (default: the end of the "
                    "bucket now in progress). Must be after start",
     "schema": {"type": "string", "format": "date-time"}},
]

_MODELS: Schema = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {
        "object": {"const": "list"},
        "data": {"type": "array", "items": {
            "type": "object", "required": ["id", "object"],
            "properties": {"id": {"type": "string"}, "object": {"const": "model"}, "owned_by": {"type": "string"},
                           "pool": {"type": "string"}},
        }},
    },
}

_ENTITLEMENT_VIEW: Schema = {
    "type": "object",
    "description": "An entitlement with its live state (limits, buckets, in flight) at this admitter.",
    "required": ["name", "tenant", "pool", "tier", "limits"],
    "properties": {"name": {"type": "string"}, "tenant": {"type": "string"}, "pool": {"type": "string"},
                   "tier": {"type": "string"}, "weight": {"type": "number"}, "limits": _ref("Amounts"),
                   "guarantee": _ref("Amounts"), "burst": _ref("Amounts")},
}

_POOL_VIEW: Schema = {
    "type": "object",
    "required": ["name", "model"],
    "properties": {"name": {"type": "string"}, "model": {"type": "string"}, "replicas": {"type": "integer"},
                   "capacity": _ref("Amounts"), "entitlements": {"type": "array", "items": {"type": "string"}}},
}

_NAME_PARAM: Schema = {
    "name": "name", "in": "path", "required": True,
    "description": "The entitlement's metadata.name (an RFC 1123 name)",
    "schema": {"type": "string", "minLength": 1, "maxLength": 253},
}

_ADMIN = [{"adminKey": []}]
_ADMIN_ERRORS = (400, 401)


def _admin_get(summary: str, ok: Schema, errors: tuple[int, ...] = _ADMIN_ERRORS, **extra: Any) -> Schema:
    return {"summary": summary, "tags": ["admin"], "security": _ADMIN,
            "responses": _responses({200: _json_ok("OK", ok)}, errors), **extra}


def _paths() -> dict[str, Schema]:
    manifest = {JSON: {"schema": _ref("Entitlement")}, "application/yaml": {"schema": _ref("Entitlement")}}
    return {
        "/v1/chat/completions": {"post": _completion("Create a chat completion", "ChatCompletionRequest")},
        "/v1/completions": {"post": _completion("Create a completion", "CompletionRequest")},
        "/v1/models": {"get": {
            "summary": "The models this key has an entitlement on", "tags": ["tenant"], "security": [{"tenantKey": []}],
            "responses": _responses({200: _json_ok("OK", _ref("ModelList"))}, (400, 401)),
        }},
        "/v1/usage": {"get": {
            "summary": "Usage of the key's tenant (derived from the key, never from the request: a tenant "
                       "parameter is ignored); with granularity, also its usage history", "tags": ["tenant"],
            "security": [{"tenantKey": []}],
            "parameters": _HISTORY_PARAMS,
            "responses": _responses({200: _json_ok("OK", _ref("Usage"))}, (400, 401, 503)),
        }},
        "/admin/pools": {"get": _admin_get("Every pool with its live state", {
            "type": "object", "required": ["pools"],
            "properties": {"pools": {"type": "array", "items": _ref("PoolView")}}})},
        "/admin/entitlements": {"get": _admin_get("Every entitlement with its live state", {
            "type": "object", "required": ["entitlements"],
            "properties": {"entitlements": {"type": "array", "items": _ref("EntitlementView")}}})},
        "/admin/entitlements/{name}": {
            "parameters": [_NAME_PARAM],
            "get": _admin_get("One entitlement", _ref("EntitlementView"), (*_ADMIN_ERRORS, 404)),
            "put": {
                "summary": "Create or replace an entitlement (with Kafka: answered once the config topic acked it)",
                "tags": ["admin"], "security": _ADMIN,
                "requestBody": {"required": True, "content": manifest},
                "responses": _responses({200: _json_ok("Replaced", _ref("EntitlementView")),
                                         201: _json_ok("Created", _ref("EntitlementView"))},
                                        (*_ADMIN_ERRORS, 404, 409, 413, 415, 422, 503)),
            },
            "delete": {
                "summary": "Delete an entitlement: its keys stop working at once, requests in flight finish",
                "tags": ["admin"], "security": _ADMIN,
                "responses": _responses({204: {"description": "Deleted"}}, (*_ADMIN_ERRORS, 404, 503)),
            },
        },
        "/admin/config": {"get": _admin_get("Where the config comes from (YAML or the config topic)", {
            "type": "object", "required": ["source", "ready", "pools", "entitlements"],
            "properties": {"source": {"type": "string"}, "ready": {"type": "boolean"},
                           "pools": {"type": "array", "items": {"type": "string"}},
                           "entitlements": {"type": "array", "items": {"type": "string"}}}})},
        "/admin/tenants/{tenant}/usage": {"get": _admin_get(
            "Usage of one tenant", _ref("Usage"), (*_ADMIN_ERRORS, 404),
            parameters=[{"name": "tenant", "in": "path", "required": True,
                         "schema": {"type": "string", "minLength": 1, "maxLength": 253}}])},
        "/metrics": {"get": {
            "summary": "Prometheus metrics (admin key, unless the admitter runs with --public-metrics)",
            "tags": ["ops"], "security": _ADMIN,
            "responses": _responses({200: {"description": "Prometheus text format",
                                           "content": {"text/plain": {"schema": {"type": "string"}}}}},
                                    _ADMIN_ERRORS),
        }},
        "/healthz": {"get": {
            "summary": "Liveness: the admitter's id and the pools it serves", "tags": ["ops"], "security": [],
            "responses": {"200": _json_ok("OK", {
                "type": "object", "required": ["status", "admitter_id", "pools"],
                "properties": {"status": {"const": "ok"}, "admitter_id": {"type": "string"},
                               "passthrough": {"type": "boolean"},
                               "pools": {"type": "array", "items": {"type": "string"}}}})},
        }},
        OPENAPI_PATH: {"get": {
            "summary": "This document", "tags": ["ops"], "security": [],
            "responses": {"200": _json_ok("OK", {"type": "object", "required": ["openapi", "paths"]})},
        }},
    }


def _manifest_schemas() -> dict[str, Schema]:
    """Entitlement and its parts from the pydantic model, hoisted into ``components/schemas``."""
    schema = Entitlement.model_json_schema(by_alias=True, mode="validation", ref_template=_REF)
    defs: dict[str, Schema] = schema.pop("$defs", {})
    return {**defs, "Entitlement": schema}


def build_openapi(version: str = "0.1.0") -> dict[str, Any]:
    """The whole document (a fresh copy each call, so a caller may change it freely)."""
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "tokenpools admitter",
            "version": version,
            "description": "OpenAI-compatible gateway that admits requests against token-pool entitlements, "
                           "and its admin API. Errors always have the OpenAI error shape.",
        },
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "tenantKey": {"type": "http", "scheme": "bearer", "description": "A tenant API key"},
                "adminKey": {"type": "http", "scheme": "bearer", "description": "The admin token"},
            },
            "responses": {f"E{status}": _error_response(status) for status in _ERROR_TEXT},
            "schemas": {
                **_manifest_schemas(),
                "ErrorResponse": _ERROR,
                "ProblemResponse": _PROBLEMS,
                "ChatMessage": _MESSAGE,
                "ContentPart": _CONTENT_PART,
                "ChatCompletionRequest": _CHAT_REQUEST,
                "CompletionRequest": _COMPLETION_REQUEST,
                "CompletionResponse": _COMPLETION_RESPONSE,
                "ModelList": _MODELS,
                "Usage": _USAGE,
                "UsageItem": _USAGE_ITEM,
                "UsageHistoryRow": _USAGE_HISTORY_ROW,
                "UsageHistoryRange": _USAGE_HISTORY_RANGE,
                "Amounts": _AMOUNTS,
                "EntitlementView": _ENTITLEMENT_VIEW,
                "PoolView": _POOL_VIEW,
            },
        },
    }
    return copy.deepcopy(doc)


def install_openapi(app: FastAPI) -> None:
    """Serve the document at ``GET /openapi.json``, public, encoded once (it does not change at run time)."""
    body = orjson.dumps(build_openapi())

    async def openapi_json(_: Request) -> Response:
        return Response(body, media_type=JSON)

    app.router.routes.append(Route(OPENAPI_PATH, openapi_json, methods=["GET"]))
