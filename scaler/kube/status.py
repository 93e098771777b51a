"""The status the operator writes on each CR, from the pipeline's state records (pure, clock injected).

An Entitlement's status: ``observedGeneration``; the conditions ``Provisionable`` (False when the
model refuses the spec, with its message) and ``Ready`` (True while a state record of it is recent);
and from its latest ``EntitlementState``: ``limits`` per dimension, ``fairShare``, ``debt``,
``effectiveWeight`` and ``admitters`` (how many admitters hold a share of its limits). A TokenPool's:
the same conditions, and ``readyReplicas``, ``desiredReplicas`` and ``capacity`` from its ``PoolState``.

Conditions are ``metav1.Condition``s: a condition keeps its ``lastTransitionTime`` while its status
stays the same, so comparing a new status with the last one written (``same``) tells a real change
from a new clock reading.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.records import Amounts, EntitlementState, PoolState

READY = "Ready"
PROVISIONABLE = "Provisionable"


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, ok: bool, reason: str, message: str, generation: int,
              previous: Sequence[Mapping[str, Any]] | None, now: float) -> dict[str, Any]:
    status = "True" if ok else "False"
    since = rfc3339(now)
    for old in previous or ():
        if old.get("type") == kind and old.get("status") == status and old.get("lastTransitionTime"):
            since = str(old["lastTransitionTime"])
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": since}


def _amounts(a: Amounts) -> dict[str, float]:
    return {"throughput": a.throughput, "kv": a.kv, "concurrency": a.concurrency}


def _conditions(*, generation: int, refusal: str | None, seen: float | None, state_ts: float | None,
                what: str, ready_within: float, previous: Mapping[str, Any] | None, now: float) -> list[dict[str, Any]]:
    old = previous.get("conditions") if previous else None
    prior = old if isinstance(old, list) else None
    if refusal is not None:
        provisionable = condition(PROVISIONABLE, False, "Invalid", refusal, generation, prior, now)
    else:
        provisionable = condition(PROVISIONABLE, True, "Accepted", "the spec is valid and is on the config topic",
                                  generation, prior, now)
    if state_ts is None or seen is None:
        ready = condition(READY, False, "NoState", f"the pipeline has published no {what} state for it yet",
                          generation, prior, now)
    elif now - state_ts > ready_within:
        # No age in the message: it would change the status (and cost a write) every few seconds.
        ready = condition(READY, False, "StateStale",
                          f"the pipeline has published no {what} state for it for over {ready_within:g} s: "
                          "are the pipeline workers running?", generation, prior, now)
    else:
        ready = condition(READY, True, "StateCurrent", f"the pipeline publishes its {what} state", generation,
                          prior, now)
    return [provisionable, ready]


def entitlement_status(*, generation: int, refusal: str | None, state: EntitlementState | None,
                       seen: float | None, ready_within: float, previous: Mapping[str, Any] | None,
                       now: float) -> dict[str, Any]:
    """``seen``: when the state record was read (None: never); readiness goes by the record's own ``ts``."""
    out: dict[str, Any] = {"observedGeneration": generation}
    if state is not None:
        out.update(limits=_amounts(state.limits), fairShare=state.fair_share, debt=state.debt,
                   effectiveWeight=state.effective_weight, admitters=len(state.admitter_shares))
    out["conditions"] = _conditions(generation=generation, refusal=refusal, seen=seen,
                                    state_ts=state.ts if state else None, what="entitlement",
                                    ready_within=ready_within, previous=previous, now=now)
    return out


def global_entitlement_status(*, generation: int, refusal: str | None, state: EntitlementState | None,
                              seen: float | None, shares: Mapping[str, Mapping[str, float]],
                              ready_within: float, previous: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    """A GlobalEntitlement as one region's operator sees it.

    ``state`` is the pipeline's state of the region's share (an Entitlement of the same name, written by
    the region's global loop); ``shares`` the bursts this operator can see on its own config topic,
    which is this region's only: each region's cluster has its own operator and its own CR status.
    """
    out: dict[str, Any] = {"observedGeneration": generation}
    if shares:
        out["shares"] = {region: dict(amounts) for region, amounts in sorted(shares.items())}
    out["conditions"] = _conditions(generation=generation, refusal=refusal, seen=seen,
                                    state_ts=state.ts if state else None, what="regional share",
                                    ready_within=ready_within, previous=previous, now=now)
    return out


def pool_status(*, generation: int, refusal: str | None, state: PoolState | None, seen: float | None,
                ready_within: float, previous: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    out: dict[str, Any] = {"observedGeneration": generation}
    if state is not None:
        out.update(readyReplicas=state.ready_replicas, capacity=_amounts(state.capacity))
        if state.desired_replicas is not None:
            out["desiredReplicas"] = state.desired_replicas
    out["conditions"] = _conditions(generation=generation, refusal=refusal, seen=seen,
                                    state_ts=state.ts if state else None, what="pool",
                                    ready_within=ready_within, previous=previous, now=now)
    return out


def _normal(value: Any) -> Any:
    """JSON as compared: numbers as floats (the API server gives back 100 for 100.0)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, Mapping):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normal(v) for v in value]
    return value


def same(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two statuses say the same (every field of ``a`` is in ``b`` with the same value)."""
    if a is None or b is None:
        return a is b
    na, nb = _normal(a), _normal(b)
    return all(k in nb and nb[k] == v for k, v in na.items())


@dataclass
class Throttle:
    """At most one status write per CR every ``every`` seconds (monotonic clock)."""

    every: float = 5.0
    last: dict[Any, float] = field(default_factory=dict)

    def allows(self, key: Any, now: float) -> bool:
        at = self.last.get(key)
        return at is None or now - at >= self.every

    def wrote(self, key: Any, now: float) -> None:
        self.last[key] = now

    def forget(self, key: Any) -> None:
        self.last.pop(key, None)
