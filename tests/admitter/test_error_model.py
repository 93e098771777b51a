"""The error model: domain errors carry no HTTP status, and one table at the edge answers each of them.

The statuses and codes clients see are asserted route by route elsewhere (test_failures, test_admin,
test_admission); this pins the table itself and the rules that keep it the only one.
"""

from __future__ import annotations

import inspect

import orjson
import pytest

import schemas.errors as domain
from admitter.http.auth import KeyConflict
from admitter.http.errors import openai_error
from admitter.upstream.clients import UpstreamBroken, UpstreamConnectError, UpstreamTimeout
from schemas.loader import ConfigError, ConfigProblem, Source
from schemas.openai import OpenAIError, error_type, sse_frame
from schemas.yaml_load import YAMLInputError

LIMITS = (1000.0, 2000.0, 4.0)
LEFT = (0.0, 1500.5, 3.0)


@pytest.mark.parametrize(("exc", "status", "code"), [
    (domain.NoReplica("no replica is configured for pool 'p'"), 503, "no_backend"),
    (domain.ReplicaUnavailable("could not connect to a model replica"), 502, "upstream_unavailable"),
    (domain.ReplicaTimeout("the model replica did not answer in time"), 504, "upstream_timeout"),
    (domain.ReplicaFailed("the model replica failed (HTTP 500)"), 502, "upstream_error"),
    (domain.UpstreamProtocolError("the model replica's stream ended early"), 502, "upstream_error"),
    (domain.EntitlementInvalid(["spec.pool: unknown pool 'x'"]), 422, "invalid_manifest"),
    (domain.EntitlementConflict(["spec.apiKeys: taken", "spec.guarantee: too big"]), 409, "conflict"),
    (domain.ConfigUnavailable("Kafka did not acknowledge the write"), 503, "config_unavailable"),
    (domain.AdmissionRefused("team-a", "spot", "kv", 2.2, LIMITS, LEFT), 429, "kv_exhausted"),
    (domain.Preempted(0.5), 503, "preempted"),
])
def test_each_domain_error_has_one_answer(exc: domain.TokenPoolsError, status: int, code: str) -> None:
    err = openai_error(exc)
    assert (err.status, err.code, err.type) == (status, code, error_type(status))
    body = orjson.loads(err.body())
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]


def test_the_manifest_refusals_list_their_problems() -> None:
    err = openai_error(domain.EntitlementConflict(["a: one", "b: two"]))
    assert orjson.loads(err.body()) == {
        "error": {"message": "a: one\nb: two", "type": "invalid_request_error", "param": None, "code": "conflict"},
        "problems": ["a: one", "b: two"]}
    config = ConfigError([ConfigProblem(Source("PUT /admin/entitlements/x", 1), "Entitlement/x", "spec", "bad")])
    assert openai_error(config).problems == [str(p) for p in config.problems]


def test_headers_come_from_the_table() -> None:
    refused = openai_error(domain.AdmissionRefused("team-a", "spot", "kv", 2.2, LIMITS, LEFT))
    assert refused.headers["retry-after"] == "3"
    assert refused.headers["x-ratelimit-remaining-kv"] == "1500"
    assert refused.headers["x-tokenpools-exhausted-dimension"] == "kv"
    assert openai_error(domain.Preempted(0.2)).headers == {"retry-after": "1"}
    assert openai_error(domain.ConfigUnavailable("x")).headers == {"retry-after": "5"}


def test_an_openai_error_is_its_own_answer_and_an_unmapped_one_is_a_500() -> None:
    err = OpenAIError(415, "Content-Type must be application/json", "unsupported_media_type")
    assert openai_error(err) is err
    assert openai_error(UpstreamTimeout()).status == 500  # transport errors never reach the edge


def test_domain_errors_carry_no_http_status() -> None:
    for _, cls in inspect.getmembers(domain, inspect.isclass):
        if issubclass(cls, domain.TokenPoolsError):
            assert "status" not in vars(cls) and "status" not in inspect.signature(cls.__init__).parameters, cls


def test_every_error_the_project_defines_derives_from_the_root() -> None:
    for cls in (ConfigError, YAMLInputError, OpenAIError, KeyConflict, UpstreamConnectError, UpstreamTimeout,
                UpstreamBroken):
        assert issubclass(cls, domain.TokenPoolsError), cls
    assert issubclass(ConfigError, ValueError) and issubclass(YAMLInputError, ValueError)  # callers catch these


def test_an_in_band_error_is_one_event_then_done() -> None:
    sse = openai_error(domain.ReplicaTimeout("the model replica stopped answering")).sse()
    first, done = sse.split(b"\n\n")[:2]
    assert first + b"\n\n" == sse_frame(orjson.dumps({"error": {
        "message": "the model replica stopped answering", "type": "upstream_error", "param": None,
        "code": "upstream_timeout"}}))
    assert done == b"data: [DONE]" and sse.endswith(b"\n\n")
