import pytest
from pydantic import ValidationError

from schemas.records import EntitlementState, Outcome, Phase, RequestEvent


def event(**kw):
    base = dict(request_id="r1", phase=Phase.DECISION, outcome=Outcome.ADMITTED, ts=1.0, admitter_id="a1",
                tenant="t", entitlement="e", pool="p", tier="elastic")
    return RequestEvent(**(base | kw))


def test_event_has_unique_id_version_and_entitlement_key():
    a, b = event(), event()
    assert a.id != b.id and a.schema_version == 1 and a.key == "e"


def test_event_round_trips_through_json():
    a = event(prompt_tokens=5, output_tokens=7)
    assert RequestEvent.model_validate_json(a.model_dump_json()) == a


def test_unknown_version_and_bad_values_are_rejected():
    with pytest.raises(ValidationError):
        RequestEvent.model_validate(event().model_dump() | {"schema_version": 2})
    with pytest.raises(ValidationError):
        event(prompt_tokens=-1)


def test_state_record_minimal():
    s = EntitlementState(id="e", pool="p", tier="spot", seq=3, ts=2.0, limits={"throughput": 1})
    assert s.limits.throughput == 1 and s.limits.kv == 0
