"""Per-entitlement usage as this admitter saw it: tokens in and out, requests by outcome.

Kept as plain counters updated where the events are built (no scan of the event log), and read by
``/v1/usage`` (a tenant's own entitlements only) and ``/admin/tenants/{tenant}/usage``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.records import Outcome


@dataclass(slots=True)
class EntitlementUsage:
    prompt_tokens: int = 0
    output_tokens: int = 0
    requests: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: Outcome) -> None:
        self.requests[outcome.value] = self.requests.get(outcome.value, 0) + 1

    def as_dict(self) -> dict[str, object]:
        return {
            "tokens": {"input": self.prompt_tokens, "output": self.output_tokens},
            "requests": dict(sorted(self.requests.items())),
        }


class UsageBook:
    def __init__(self) -> None:
        self._by_entitlement: dict[str, EntitlementUsage] = {}

    def of(self, entitlement: str) -> EntitlementUsage:
        usage = self._by_entitlement.get(entitlement)
        if usage is None:
            usage = self._by_entitlement[entitlement] = EntitlementUsage()
        return usage

    def decision(self, entitlement: str, outcome: Outcome) -> None:
        self.of(entitlement).count(outcome)

    def finish(self, entitlement: str, outcome: Outcome, prompt_tokens: int, output_tokens: int) -> None:
        usage = self.of(entitlement)
        usage.count(outcome)
        usage.prompt_tokens += prompt_tokens
        usage.output_tokens += output_tokens
