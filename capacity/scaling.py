"""The scaling rule: replicas from guarantees and forecast demand, the same numbers admission uses.

Scale up at once; scale down only to the highest recommendation seen within the stabilisation
window (as Kubernetes' HPA does), and never below what the guarantees need.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from schemas.specs import TokenPoolSpec, Triple


class DemandForecaster:
    """Forecast = max(latest, decayed mean): rises with demand at once, falls slowly."""

    __slots__ = ("half_life", "mean", "updated")

    def __init__(self, half_life: float) -> None:
        self.half_life = half_life
        self.mean: Triple | None = None
        self.updated = 0.0

    def observe(self, demand: Triple, now: float) -> Triple:
        if self.mean is None:
            self.mean = demand
        else:
            keep = 0.5 ** (max(0.0, now - self.updated) / self.half_life)
            m, d = self.mean, demand
            self.mean = (keep * m[0] + (1 - keep) * d[0], keep * m[1] + (1 - keep) * d[1],
                         keep * m[2] + (1 - keep) * d[2])
        self.updated = now
        m, d = self.mean, demand
        return (max(m[0], d[0]), max(m[1], d[1]), max(m[2], d[2]))


@dataclass(frozen=True)
class ScalingDecision:
    replicas: int
    recommended: int
    guarantee_floor: int
    reason: str


def replicas_for(spec: TokenPoolSpec, amounts: Triple) -> int:
    per = spec.sellable_per_replica()
    return max(0, max(math.ceil(a / p - 1e-9) for a, p in zip(amounts, per, strict=True)))


class ScalingRule:
    """Stateful only for the stabilisation window; everything else is a pure function of its inputs."""

    def __init__(self, spec: TokenPoolSpec) -> None:
        self.spec = spec
        self.history: deque[tuple[float, int]] = deque()

    def decide(
        self,
        now: float,
        current: int,
        guarantees: Triple,
        forecast: Triple,
        spot_demand: Triple = (0.0, 0.0, 0.0),
    ) -> ScalingDecision:
        """``forecast`` is guaranteed + elastic demand; spot counts only within the spot budget."""
        spec = self.spec
        bounds = spec.replicas
        headroom = 1.0 + spec.scaling.headroom
        g, f = guarantees, forecast
        need = (max(g[0], f[0] * headroom), max(g[1], f[1] * headroom), max(g[2], f[2] * headroom))
        recommended = replicas_for(spec, need)
        if spec.scaling.spot_budget_replicas and any(s > 0 for s in spot_demand):
            recommended += min(spec.scaling.spot_budget_replicas, max(1, replicas_for(spec, spot_demand)))
        floor = min(bounds.max, max(bounds.min, replicas_for(spec, guarantees)))
        recommended = min(bounds.max, max(floor, recommended))

        window = spec.scaling.stabilisation_window_seconds
        self.history.append((now, recommended))
        while self.history and self.history[0][0] < now - window:
            self.history.popleft()
        if recommended >= current:
            return ScalingDecision(recommended, recommended, floor, "scale up" if recommended > current else "steady")
        stable = max(r for _, r in self.history)
        target = max(floor, min(current, stable))
        reason = "scale down" if target < current else "held by stabilisation window"
        return ScalingDecision(target, recommended, floor, reason)
