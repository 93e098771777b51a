from schemas.records import Outcome, Phase, RequestEvent
from schemas.wire import BadRecords, decode, encode


def event() -> RequestEvent:
    return RequestEvent(request_id="r", phase=Phase.DECISION, outcome=Outcome.ADMITTED, ts=1.0, admitter_id="a",
                        tenant="t", entitlement="e", pool="p", tier="spot")


def test_round_trip():
    bad = BadRecords()
    e = event()
    assert decode(RequestEvent, encode(e), "topic", bad) == e
    assert bad.total() == 0


def test_bad_records_are_counted_by_reason_and_skipped():
    bad = BadRecords()
    assert decode(RequestEvent, b"{not json", "t", bad) is None
    assert decode(RequestEvent, b"[1, 2]", "t", bad) is None
    assert decode(RequestEvent, b'{"schema_version": 99}', "t", bad) is None
    assert decode(RequestEvent, b'{"schema_version": 1, "phase": "nope"}', "t", bad) is None
    assert decode(RequestEvent, None, "t", bad) is None  # tombstone
    assert dict(bad.counts) == {("t", "not_json"): 1, ("t", "not_an_object"): 1,
                                ("t", "unknown_schema_version"): 1, ("t", "invalid"): 1}
