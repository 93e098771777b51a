"""The answers to a request the capacity model turned away: 429 when refused, 503 when preempted."""

from __future__ import annotations

from admitter.http.errors import OpenAIError, retry_after_header
from capacity.admission import Decision
from capacity.live import EntitlementLive


def refusal_error(ent: EntitlementLive, decision: Decision) -> OpenAIError:
    """429 in the OpenAI shape with Retry-After and the entitlement's limits and what remains of them."""
    dim = decision.dimension.value if decision.dimension else "capacity"
    retry = retry_after_header(decision.retry_after)
    limit_tp, limit_kv, limit_conc = ent.limits()
    left_tp, left_kv, left_conc = ent.remaining()
    headers = {
        "retry-after": retry,
        "x-ratelimit-limit-throughput": _whole(limit_tp),
        "x-ratelimit-limit-kv": _whole(limit_kv),
        "x-ratelimit-limit-concurrency": _whole(limit_conc),
        "x-ratelimit-remaining-throughput": _whole(left_tp),
        "x-ratelimit-remaining-kv": _whole(left_kv),
        "x-ratelimit-remaining-concurrency": _whole(left_conc),
        "x-tokenpools-exhausted-dimension": dim,
    }
    return OpenAIError(
        429, f"rate limit reached for entitlement '{ent.name}' ({ent.tier.value}): {dim} exhausted; "
        f"retry after {retry}s", f"{dim}_exhausted", headers=headers)


def preempted_error(tick_seconds: float) -> OpenAIError:
    """503 for a spot request preempted by guaranteed work; retry after one allocator tick."""
    return OpenAIError(503, "this spot request was preempted to make room for guaranteed work; retry later",
                       "preempted", headers={"retry-after": retry_after_header(tick_seconds)})


def _whole(x: float) -> str:
    return str(int(x)) if x < 1e18 else "inf"
