"""What a `WorkloadSpec` offers on average: expected arrivals, lengths and load, to size experiments.

The arrivals themselves (seeded, reproducible, shared with the load generator) come from
`schemas.arrivals`; this module holds the simulator's analytic side: the expected count and sizes
of those arrivals, computed in closed form, which the experiments use to size a workload against
a pool's capacity and to draw offered-rate curves.
"""

from __future__ import annotations

import math

import numpy as np

from schemas.arrivals import active_window, rate_at
from schemas.workload import LengthDistribution, OnOffArrivals, TenantLoad, WorkloadSpec


def tenant_rate(tenant: TenantLoad, t: np.ndarray, horizon: float = math.inf) -> np.ndarray:
    """The tenant's offered rate (req/s) at times `t`, zero outside its active window (for plots)."""
    t = np.asarray(t, dtype=np.float64)
    start, stop = active_window(tenant, horizon)
    inside = (t >= start) & (t < stop)
    return np.where(inside, rate_at(tenant.arrivals, t, start), 0.0)


def expected_arrivals(tenant: TenantLoad, horizon: float) -> float:
    """Expected number of arrivals in [0, horizon): the integral of the rate over the window."""
    start, stop = active_window(tenant, horizon)
    if stop <= start:
        return 0.0
    arrivals = tenant.arrivals
    if isinstance(arrivals, OnOffArrivals):
        span = stop - start
        cycles, rest = divmod(span, arrivals.period)
        return arrivals.rate * (cycles * arrivals.on_seconds + min(rest, arrivals.on_seconds))
    if arrivals.profile is None:
        return float(arrivals.rate or 0.0) * (stop - start)
    # Piecewise linear: the trapezoid rule over the breakpoints inside the window is exact.
    inner = [t for t, _ in arrivals.profile if start < t < stop]
    grid = np.array([start, *inner, stop], dtype=np.float64)
    values = rate_at(arrivals, grid)
    return float(np.sum((values[1:] + values[:-1]) * np.diff(grid)) / 2)


def expected_length(dist: LengthDistribution, cap: int | None = None) -> float:
    """Mean of the clipped lognormal (before rounding, which moves it by well under 0.5 token).

    `cap` further lowers the upper clip (an output is cut at the request's max_tokens). Uses
    E[X; X < c] = mean * Phi((ln c - mu) / sigma - sigma) for a lognormal X.
    """
    lo = float(dist.min_tokens)
    hi = float(dist.max_tokens if cap is None else min(dist.max_tokens, cap))
    mean, mu, s = dist.mean_tokens, dist.mu, dist.sigma
    if s == 0:
        return min(max(mean, lo), hi)
    a, b = (math.log(lo) - mu) / s, (math.log(hi) - mu) / s
    body = mean * (_phi(b - s) - _phi(a - s))
    return lo * _phi(a) + hi * (1 - _phi(b)) + body


def _phi(x: float) -> float:
    """Standard normal CDF."""
    return 0.5 * math.erfc(-x / math.sqrt(2))


def offered_load(spec: WorkloadSpec, duration: float | None = None) -> dict[str, dict[str, float]]:
    """Per tenant label, what the workload offers, to size experiments against a pool's capacity.

    Keys: `requests` (expected count), `rate` (mean req/s over the whole duration), `peak_rate`,
    `prompt_tokens` and `output_tokens` (mean per request; output after the max_tokens cap),
    `max_tokens`, and the mean `prompt_tokens_per_s` / `output_tokens_per_s` over the duration.
    Multiply by the pool's token weights for weighted throughput.
    """
    horizon = spec.duration_seconds if duration is None else float(duration)
    out: dict[str, dict[str, float]] = {}
    for tenant in spec.tenants:
        requests = expected_arrivals(tenant, horizon)
        rate = requests / horizon
        prompt = expected_length(tenant.prompt)
        output = expected_length(tenant.output, cap=tenant.request_max_tokens)
        out[tenant.label] = {
            "requests": requests,
            "rate": rate,
            "peak_rate": tenant.arrivals.peak_rate,
            "prompt_tokens": prompt,
            "output_tokens": output,
            "max_tokens": float(tenant.request_max_tokens),
            "prompt_tokens_per_s": rate * prompt,
            "output_tokens_per_s": rate * output,
        }
    return out
