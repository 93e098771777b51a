from capacity.scaling import DemandForecaster, ScalingRule
from tests.factories import pool


def rule(**scaling):
    p = pool(replicas=1, max_replicas=10, per=(100.0, 1000.0, 10.0),
             scaling={"headroom": 0.0, "stabilisationWindowSeconds": 60, **scaling})
    return ScalingRule(p.spec)


def test_replicas_follow_the_most_demanding_dimension():
    r = rule()
    d = r.decide(now=0, current=1, guarantees=(0, 0, 0), forecast=(250, 100, 1))
    assert d.replicas == 3 and d.reason == "scale up"


def test_headroom_and_clamp_to_max():
    r = rule(headroom=0.5)
    assert r.decide(now=0, current=1, guarantees=(0, 0, 0), forecast=(200, 0, 0)).replicas == 3
    assert r.decide(now=1, current=3, guarantees=(0, 0, 0), forecast=(1e6, 0, 0)).replicas == 10


def test_never_below_the_guarantees():
    r = rule()
    d = r.decide(now=0, current=5, guarantees=(400, 0, 0), forecast=(0, 0, 0))
    assert d.guarantee_floor == 4
    assert d.replicas >= 4


def test_scale_down_waits_for_the_stabilisation_window():
    r = rule()
    assert r.decide(now=0, current=1, guarantees=(0, 0, 0), forecast=(500, 0, 0)).replicas == 5
    held = r.decide(now=30, current=5, guarantees=(0, 0, 0), forecast=(100, 0, 0))
    assert held.replicas == 5 and held.recommended == 1
    later = r.decide(now=61, current=5, guarantees=(0, 0, 0), forecast=(100, 0, 0))
    assert later.replicas == 1 and later.reason == "scale down"


def test_spot_budget_adds_replicas_only_when_spot_wants_them():
    r = rule(spotBudgetReplicas=2)
    assert r.decide(now=0, current=1, guarantees=(0, 0, 0), forecast=(100, 0, 0)).replicas == 1
    d = r.decide(now=1, current=1, guarantees=(0, 0, 0), forecast=(100, 0, 0), spot_demand=(1000, 0, 0))
    assert d.replicas == 3


def test_forecast_rises_at_once_and_falls_slowly():
    f = DemandForecaster(half_life=10)
    assert f.observe((100, 0, 0), now=0)[0] == 100
    assert f.observe((0, 0, 0), now=10)[0] == 50
    assert f.observe((200, 0, 0), now=11)[0] == 200
