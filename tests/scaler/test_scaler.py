"""The scaler without Kafka: pool states in, emulator replicas up and down, reports out."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from capacity.scaling import replicas_for
from scaler.actuator import Actuator
from scaler.local import LocalActuator
from scaler.loop import ScalerLoop
from schemas.records import Amounts, PoolState, ReplicasReport
from schemas.specs import TokenPool
from tests.factories import emulators

WINDOW = 10.0


def pool() -> TokenPool:
    return TokenPool.model_validate({"metadata": {"name": "p"}, "spec": {
        "model": "m", "perReplica": {"throughput": 1000.0, "kv": 10000.0, "concurrency": 10.0},
        "replicas": {"min": 1, "max": 4, "initial": 1},
        "scaling": {"headroom": 0.0, "stabilisationWindowSeconds": WINDOW, "forecastHalfLifeSeconds": 0.01},
    }})


def state(seq: int, elastic_tp: float, spot_tp: float = 0.0) -> PoolState:
    return PoolState(id="p", seq=seq, ts=0.0, ready_replicas=1, capacity=Amounts(), guarantees=Amounts(),
                     demand={"elastic": Amounts(throughput=elastic_tp), "spot": Amounts(throughput=spot_tp)})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def healthy(urls: list[str]) -> bool:
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        codes = [(await client.get(u + "/health")).status_code for u in urls]
    return codes == [200] * len(urls)


async def test_scales_up_at_once_and_down_after_the_stabilisation_window() -> None:
    changes: list[list[str]] = []
    actuator = LocalActuator({"p": 1}, on_change=lambda _, urls: changes.append(list(urls)),
                             server_factory=emulators(100.0))
    assert isinstance(actuator, Actuator)
    reports: list[ReplicasReport] = []

    async def publish(r: ReplicasReport) -> None:
        reports.append(r)

    clock = Clock()
    spec = pool()
    loop = ScalerLoop({"p": spec}, actuator, clock=clock, publish=publish)
    await actuator.start()
    try:
        assert len(actuator.urls("p")) == 1
        high = 2.5 * spec.spec.sellable_per_replica()[0]
        step = await loop.observe(state(1, high))
        expected = replicas_for(spec.spec, (high, 0.0, 0.0))
        assert expected > 1
        assert step is not None and step.decision.replicas == expected
        urls = actuator.urls("p")
        assert len(urls) == expected == await actuator.ready("p")
        assert await healthy(urls)
        assert changes[-1] == urls
        assert reports[-1] == ReplicasReport(pool="p", ready_replicas=expected, ts=reports[-1].ts, endpoints=urls)

        # Demand falls: held while the high recommendation is inside the window.
        clock.now += 1
        step = await loop.observe(state(2, 10.0))
        assert step is not None and step.decision.replicas == expected
        assert step.decision.reason == "held by stabilisation window"
        clock.now += WINDOW / 2
        await loop.observe(state(3, 10.0))
        assert len(actuator.urls("p")) == expected

        # Past the window: down to the minimum.
        clock.now += WINDOW
        step = await loop.observe(state(4, 10.0))
        assert step is not None and step.decision.replicas == 1
        assert len(actuator.urls("p")) == 1 and reports[-1].ready_replicas == 1
        assert await healthy(actuator.urls("p"))
    finally:
        await actuator.close()


async def test_spot_demand_uses_only_the_spot_budget_and_unknown_pools_are_ignored() -> None:
    actuator = LocalActuator({"p": 1}, server_factory=emulators(100.0))
    spec = TokenPool.model_validate({**pool().model_dump(by_alias=True), "spec": {
        **pool().model_dump(by_alias=True)["spec"], "scaling": {"spotBudgetReplicas": 1, "headroom": 0.0}}})
    loop = ScalerLoop({"p": spec}, actuator, clock=Clock())
    await actuator.start()
    try:
        half = 0.5 * spec.spec.sellable_per_replica()[0]
        step = await loop.observe(state(1, half, spot_tp=1e6))
        assert step is not None and step.decision.replicas == 2  # 1 for elastic + at most the budget of 1
        other = PoolState(id="q", seq=1, ts=0.0, ready_replicas=1, capacity=Amounts(), guarantees=Amounts())
        assert await loop.observe(other) is None
        with pytest.raises(KeyError):
            await actuator.current("q")
    finally:
        await actuator.close()


async def test_scale_down_returns_at_once_and_the_removed_replica_drains_its_request() -> None:
    """Slow emulator (speedup 0.05: a token takes tens of ms) so the stream is surely still running."""
    actuator = LocalActuator({"p": 2}, server_factory=emulators(0.05))
    await actuator.start()
    try:
        keep, victim = actuator.urls("p")
        body = {"model": "p", "max_tokens": 40, "stream": True, "emulator": {"output_tokens": 40},
                "messages": [{"role": "user", "content": "hello"}]}
        async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
            async with client.stream("POST", victim + "/v1/chat/completions", json=body) as resp:
                lines = resp.aiter_lines()
                assert (await anext(lines)).startswith("data: ")  # the request is running on the victim
                await actuator.scale("p", 1)
                # Out of the live set (and of what the scaler reports) before its request is done.
                assert await actuator.endpoints("p") == [keep] and await actuator.ready("p") == 1
                assert actuator.draining == 1
                again = await client.post(victim + "/v1/chat/completions", json={**body, "stream": False})
                assert again.status_code == 503  # draining: no new work
                rest = [line async for line in lines if line]
            assert rest[-1] == "data: [DONE]"  # the request it had finished normally
        for _ in range(200):  # the drain task ends once uvicorn has closed
            if actuator.draining == 0:
                break
            await asyncio.sleep(0.05)
        assert actuator.draining == 0
    finally:
        await actuator.close()


async def test_a_pool_whose_platform_cannot_say_is_skipped_and_the_others_still_report() -> None:
    class HalfDown:
        """Pool "down"'s platform is unreachable (a Kubernetes API server before the first snapshot)."""

        async def current(self, pool: str) -> int:
            return 1

        async def ready(self, pool: str) -> int:
            if pool == "down":
                raise ConnectionError("API server unreachable")
            return 2

        async def scale(self, pool: str, replicas: int) -> None:
            return None

    reports: list[ReplicasReport] = []

    async def publish(r: ReplicasReport) -> None:
        reports.append(r)

    up, down = pool(), pool().model_copy(update={"metadata": pool().metadata.model_copy(update={"name": "down"})})
    loop = ScalerLoop({"down": down, "p": up}, HalfDown(), clock=Clock(), publish=publish)
    await loop.report_all()
    assert [(r.pool, r.ready_replicas) for r in reports] == [("p", 2)]
