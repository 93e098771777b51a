"""The gate's queue on its own (no HTTP): priority order, the wait bound, the queue bound, victims."""

from __future__ import annotations

import asyncio
import time

from admitter.admission.gate import Flight, PoolGate
from capacity.admission import Verdict
from capacity.live import PoolLive
from tests.factories import ent, pool


def make_gate(max_wait: float = 5.0, max_queue: int = 100, conc: float = 1.0, gold: bool = False) -> PoolGate:
    p = pool(per=(1e9, 1e9, conc), queue={"maxWaitSeconds": max_wait}, tickSeconds=0.5)
    ents = [ent("slow", slo=10.0), ent("fast", slo=1.0), ent("spot", "spot")]
    if gold:
        ents.append(ent("gold", "guaranteed", guarantee=(1e3, 1e4, 1), burst=(1e3, 1e4, 1)))
    live = PoolLive(p, ents, now=time.monotonic())
    for e in live.entitlements.values():
        e.set_limits(1e9, 1e9, 10, now=time.monotonic())
    return PoolGate(live, max_queue=max_queue)


async def queued(gate: PoolGate, name: str, rid: str) -> asyncio.Task:
    e = gate.live.entitlements[name]
    flight = Flight(rid, e)
    cost = gate.live.cost(10, 10, e)
    now = time.monotonic()
    first = gate.decide(flight, cost, now, gate.deadline(e, now))
    assert first.verdict is Verdict.QUEUE, first
    task = asyncio.create_task(gate.wait(flight, cost, gate.deadline(e, now), first))
    await asyncio.sleep(0)
    return task


async def test_released_room_goes_to_the_earliest_deadline_first() -> None:
    gate = make_gate()
    holder = Flight("r0", gate.live.entitlements["slow"])
    assert gate.decide(holder, gate.live.cost(10, 10, holder.ent), time.monotonic(), 0).admitted
    slow = await queued(gate, "slow", "r1")
    fast = await queued(gate, "fast", "r2")  # arrived later, tighter TTFT target
    assert gate.waiting == 2
    gate.end(holder, 10, 5)
    decision = await asyncio.wait_for(fast, 2)
    assert decision.admitted and "r2" in gate.live.reservations
    assert not slow.done() and gate.waiting == 1
    gate.end(Flight("r2", gate.live.entitlements["fast"]), 10, 5)
    assert (await asyncio.wait_for(slow, 2)).admitted


async def test_wait_is_bounded() -> None:
    gate = make_gate(max_wait=0.05)
    holder = Flight("r0", gate.live.entitlements["slow"])
    assert gate.decide(holder, gate.live.cost(10, 10, holder.ent), time.monotonic(), 0).admitted
    gate.live.tick_seconds = 0.01  # expected wait within the bound, so it queues
    task = await queued(gate, "slow", "r1")
    decision = await asyncio.wait_for(task, 2)
    assert decision.verdict is Verdict.REFUSE and decision.dimension is not None
    assert gate.waiting == 0 and "r1" not in gate.live.reservations


async def test_queue_length_is_bounded() -> None:
    gate = make_gate(max_queue=1)
    holder = Flight("r0", gate.live.entitlements["slow"])
    assert gate.decide(holder, gate.live.cost(10, 10, holder.ent), time.monotonic(), 0).admitted
    first = await queued(gate, "slow", "r1")
    second = await queued(gate, "slow", "r2")
    assert (await asyncio.wait_for(second, 1)).verdict is Verdict.REFUSE
    first.cancel()
    await asyncio.sleep(0)
    assert gate.waiting == 0


async def test_preemption_interrupts_the_victims_flight() -> None:
    gate = make_gate(gold=True)
    spot = Flight("s1", gate.live.entitlements["spot"])
    assert gate.decide(spot, gate.live.cost(10, 10, spot.ent), time.monotonic(), 0).admitted
    gold = Flight("g1", gate.live.entitlements["gold"])
    decision = gate.decide(gold, gate.live.cost(10, 10, gold.ent), time.monotonic(), 0)
    assert decision.verdict is Verdict.PREEMPT
    assert spot.preempted_by == "g1" and spot.scope.cancel_called
    assert "s1" not in gate.flights and "s1" not in gate.live.reservations
    assert gate.end(spot, None, None) is False  # already released by the preemption
