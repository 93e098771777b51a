"""Builders shared by the pipeline's unit tests."""

from __future__ import annotations

import itertools
from typing import Any

from schemas.records import Amounts, Outcome, Phase, RequestEvent
from schemas.wire import encode
from streams.codec import RawMessage

_ids = itertools.count()


def decision(ent: str = "e1", outcome: str = "admitted", ts: float = 100.0, *, pool: str = "p", tier: str = "elastic",
             reserved: tuple[float, float, float] = (100.0, 1000.0, 1.0), admitter: str = "a1",
             **kw: Any) -> RequestEvent:
    n = next(_ids)
    return RequestEvent(
        id=kw.pop("id", f"d{n}"), request_id=kw.pop("request_id", f"r{n}"), phase=Phase.DECISION,
        outcome=Outcome(outcome), ts=ts, admitter_id=admitter, tenant=ent, entitlement=ent, pool=pool, tier=tier,
        reserved=Amounts(throughput=reserved[0], kv=reserved[1], concurrency=reserved[2]), **kw,
    )


def finish(ent: str = "e1", outcome: str = "completed", ts: float = 100.0, *, pool: str = "p", tier: str = "elastic",
           prompt: int = 100, output: int = 50, latency: float | None = 2.0,
           reserved: tuple[float, float, float] = (100.0, 1000.0, 1.0), **kw: Any) -> RequestEvent:
    n = next(_ids)
    return RequestEvent(
        id=kw.pop("id", f"f{n}"), request_id=kw.pop("request_id", f"r{n}"), phase=Phase.FINISH,
        outcome=Outcome(outcome), ts=ts, admitter_id=kw.pop("admitter", "a1"), tenant=ent, entitlement=ent, pool=pool,
        tier=tier, prompt_tokens=prompt, output_tokens=output, latency_s=latency,
        reserved=Amounts(throughput=reserved[0], kv=reserved[1], concurrency=reserved[2]), **kw,
    )


class Log:
    """A requests partition log: append events or raw bytes, get RawMessages with offsets."""

    def __init__(self, partition: int = 0) -> None:
        self.partition = partition
        self.messages: list[RawMessage] = []

    def add(self, *events: RequestEvent | bytes | None, key: bytes | None = None) -> list[RawMessage]:
        out = []
        for ev in events:
            value = ev if isinstance(ev, bytes) or ev is None else encode(ev)
            k = key if key is not None else (ev.entitlement.encode() if isinstance(ev, RequestEvent) else b"x")
            msg = RawMessage(self.partition, len(self.messages), k, value)
            self.messages.append(msg)
            out.append(msg)
        return out
