"""The pure parts of the global loop service (``streams.regional.rules``)."""

from __future__ import annotations

import pytest

from capacity.global_loop import Enforced, Report
from capacity.regions import NOTHING
from schemas.loader import PlatformConfig
from schemas.records import RegionReport
from schemas.regions import GLOBAL_LABEL, REGION_LABEL
from schemas.wire import BadRecords, decode, encode
from streams.regional.rules import (
    capacity_for,
    check_report,
    desired_share,
    needs_write,
    peers_of,
    placement,
    record_of,
    relevant,
    report_of,
    shown_status,
    stale_shares,
    starting_shares,
    terms_of,
    tick_seconds,
)
from tests.streams.regional.helpers import ent, glob, pool, share


def platform(*docs: object) -> PlatformConfig:
    config = PlatformConfig()
    for doc in docs:
        kind = type(doc).__name__
        target = {"TokenPool": config.pools, "Entitlement": config.entitlements,
                  "GlobalEntitlement": config.global_entitlements}[kind]
        target[doc.name] = doc  # type: ignore[attr-defined]
    return config


# -- capacity ------------------------------------------------------------------------------------


def test_capacity_is_max_replicas_minus_the_other_guarantees() -> None:
    p = pool(per=(1000.0, 100000.0, 100.0), max_replicas=8)  # 8,000 / 800,000 / 800 at max
    ents = [ent("other", guarantee=(500.0, 1000.0, 5.0)),
            ent("elastic", tier="elastic"),  # no guarantee: nothing reserved
            ent("elsewhere", pool_name="pb", guarantee=(3000.0, 0.0, 0.0)),  # another pool's
            share(glob(), burst=(300.0, 0.0, 0.0), guarantee=(300.0, 0.0, 0.0))]  # the share itself: not subtracted
    assert capacity_for(p, ents, "g") == (7500.0, 799000.0, 795.0)


def test_capacity_is_clamped_at_zero() -> None:
    p = pool(max_replicas=1)
    ents = [ent("x", guarantee=(800.0, 0.0, 0.0)), ent("y", guarantee=(700.0, 0.0, 0.0))]
    assert capacity_for(p, ents, "g") == (0.0, 100000.0, 100.0)


def test_placement_needs_exactly_one_pool_of_the_model_in_the_region() -> None:
    g = glob()
    assert placement(platform(g, pool("pa"), pool("pb", region="b")), g, "a") == (pool("pa"), None)
    none, why = placement(platform(g, pool("pb", region="b")), g, "a")
    assert none is None and why is not None and "found none" in why
    two, why = placement(platform(g, pool("pa"), pool("pa2")), g, "a")
    assert two is None and why is not None and "'pa', 'pa2'" in why
    other_model, why = placement(platform(g, pool("pa", model="other")), g, "a")
    assert other_model is None and why is not None


def test_placement_refuses_an_entitlement_a_person_named_like_the_global_one() -> None:
    g = glob()
    found, why = placement(platform(g, pool("pa"), ent("g")), g, "a")
    assert found is None and why is not None and "not written by the global loop" in why
    found, why = placement(platform(g, pool("pa"), share(g)), g, "a")  # its own share is fine
    assert found is not None and why is None


# -- restart ---------------------------------------------------------------------------------------


def test_a_new_region_starts_from_nothing() -> None:
    assert starting_shares(None, glob(), "a") == (NOTHING, NOTHING)


def test_a_restarted_loop_starts_from_the_share_it_wrote() -> None:
    g = glob()
    held = share(g, burst=(725.0, 72500.0, 72.5), guarantee=(290.0, 29000.0, 29.0))
    assert starting_shares(held, g, "a") == ((725.0, 72500.0, 72.5), (290.0, 29000.0, 29.0))


def test_starting_shares_ignore_other_documents_and_stay_within_the_global_figures() -> None:
    g = glob()
    assert starting_shares(share(g, region="b", burst=(1.0, 1.0, 1.0)), g, "a") == (NOTHING, NOTHING)
    assert starting_shares(ent("g", guarantee=(5.0, 5.0, 5.0)), g, "a") == (NOTHING, NOTHING)
    assert starting_shares(pool("pa"), g, "a") == (NOTHING, NOTHING)
    lowered = glob(guarantee=(100.0, 100.0, 10.0), burst=(200.0, 200.0, 20.0))
    held = share(g, burst=(725.0, 150.0, 72.5), guarantee=(290.0, 120.0, 29.0))
    assert starting_shares(held, lowered, "a") == ((200.0, 150.0, 20.0), (100.0, 100.0, 10.0))


# -- reports ---------------------------------------------------------------------------------------


def test_reports_round_trip_through_the_record_and_the_wire() -> None:
    report = Report("a", 17, 1234.5, (300.0, 1.0, 2.0), (7500.0, 3.0, 4.0), (250.0, 0.5, 1.0),
                    (725.0, 5.0, 6.0), (290.0, 1.5, 2.5))
    record = record_of("g", report)
    assert record.id == RegionReport.id_of("a", "g", 17) == "a/g/17"
    decoded = decode(RegionReport, encode(record), "t", BadRecords())
    assert decoded is not None and report_of(decoded) == report


def test_a_report_must_fit_its_key_id_and_topic() -> None:
    record = record_of("g", Report("b", 3, 1.0, NOTHING, NOTHING))
    good = RegionReport.key_of("g", "b").encode()
    assert check_report(record, good, "b") is None
    assert check_report(record, good, None) is None
    assert check_report(record, None, "b") == "key_mismatch"
    assert check_report(record, b"g/a", "b") == "key_mismatch"
    assert check_report(record.model_copy(update={"id": "b/g/4"}), good, "b") == "id_mismatch"
    assert check_report(record, good, "a") == "wrong_region"  # on a's own topic, or a's mirror


# -- the write decision ----------------------------------------------------------------------------


def test_the_share_is_written_when_absent_or_different_and_never_when_unchanged() -> None:
    g, p = glob(), pool("pa")
    desired = desired_share(g, p, "a", (725.0, 72500.0, 72.5), (290.0, 29000.0, 29.0))
    assert desired.name == "g" and desired.spec.pool == "pa"
    assert desired.metadata.labels == {GLOBAL_LABEL: "g", REGION_LABEL: "a"}
    assert desired.spec.api_keys == g.spec.api_keys and desired.spec.tier.value == "guaranteed"
    assert needs_write(desired, None)
    same = share(g, burst=(725.0, 72500.0, 72.5), guarantee=(290.0, 29000.0, 29.0))
    assert not needs_write(desired, same)
    assert needs_write(desired, share(g, burst=(725.0, 72500.0, 72.5), guarantee=(285.0, 29000.0, 29.0)))
    rekeyed = desired_share(glob(key="another"), p, "a", (725.0, 72500.0, 72.5), (290.0, 29000.0, 29.0))
    assert needs_write(rekeyed, same)  # the global entitlement's keys changed: the share follows
    assert needs_write(desired, ent("g"))


def test_zero_shares_are_a_valid_regional_entitlement() -> None:
    zero = desired_share(glob(), pool("pa"), "a", NOTHING, NOTHING)
    assert zero.spec.burst.as_tuple() == NOTHING and zero.spec.guarantee.as_tuple() == NOTHING


def test_stale_shares_are_those_whose_global_entitlement_is_gone_or_left_the_region() -> None:
    g, gone, moved = glob("g"), glob("gone"), glob("moved", regions=("b", "c"))
    config = platform(g, moved, pool("pa"), share(g), share(gone), share(moved), ent("human"),
                      share(glob("theirs"), region="b"))
    assert stale_shares(config, "a") == ["gone", "moved"]
    assert stale_shares(config, "b") == ["theirs"]


def test_relevant_peers_and_tick() -> None:
    g1, g2, g3 = glob("g1", regions=("a", "b")), glob("g2", regions=("c", "a"), epochSeconds=0.4), glob("g3",
                                                                                                       regions=("d",))
    mine = relevant({"g1": g1, "g2": g2, "g3": g3}, "a")
    assert list(mine) == ["g1", "g2"]
    assert peers_of(mine.values(), "a") == ["b", "c"]
    assert tick_seconds(mine.values()) == pytest.approx(0.1)  # 0.4 / 8 = 0.05, at least 0.1
    assert tick_seconds([g1]) == pytest.approx(0.25)  # the default epoch of 2 s / 8
    assert tick_seconds([]) == pytest.approx(0.25)
    terms = terms_of(g2)
    assert terms.regions == ("c", "a") and terms.epoch_s == 0.4 and terms.burst == (1000.0, 100000.0, 100.0)


# -- status ----------------------------------------------------------------------------------------


def test_the_hold_at_each_epoch_start_is_shown_as_split() -> None:
    def enforced(status: str, epoch: int | None) -> Enforced:
        return Enforced(NOTHING, NOTHING, status, epoch)  # type: ignore[arg-type]

    assert shown_status(enforced("waiting", None), None) == "waiting"
    assert shown_status(enforced("split", 5), 5) == "split"
    assert shown_status(enforced("holding", 5), 6) == "split"  # the peers' reports of 6 are on their way
    assert shown_status(enforced("holding", 5), 7) == "holding"  # a whole epoch missed
    assert shown_status(enforced("holding", None), 3) == "holding"  # never split yet
