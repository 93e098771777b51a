"""A realistic, deterministic history for the analyst-question tests, as Python records.

Why Python records: each question's expected answer is computed from these same objects in the test,
independently of the SQL, and the rows reach ClickHouse only through the sink's own builders
(``streams.history.rows``) and ``HistoryStore.insert``, one deduplication token per block, as the sink
writes them.

What is in it (three days from ``T0``, two hours before this month began, so a chargeback has two months):
- two pools with different token weights, seven entitlements of five tenants on all three tiers;
- requests with every outcome: admitted, queued, refused on each dimension (and a few naming none),
  then completed, preempted, cancelled, failed; some finish events lack ``charged`` (older admitters);
- spec versions: an SLO tightened and relaxed, an SLO added mid-range, an entitlement whose first spec
  comes an hour after its first requests, and one (``trial``) deleted and re-created for another tenant
  on another tier, so "the spec in force at the event's time" and "this tenant's rows" both matter;
- a one-minute burst of one tenant, entitlement and pool state every ten minutes (some pool versions
  without a tier, some tiers with demand and no usage), and two hand-placed refusals for "why refused".
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from schemas.records import Amounts, EntitlementState, Outcome, Phase, PoolState, RequestEvent
from schemas.specs import (
    SLO,
    Dimension,
    Entitlement,
    EntitlementSpec,
    Manifest,
    Metadata,
    Resources,
    Tier,
    TokenPool,
    TokenPoolSpec,
    TokenWeights,
)
from streams.history.rows import (
    Located,
    config_blocks,
    entitlement_state_block,
    pool_state_blocks,
    request_block,
)
from streams.history.store import HistoryStore

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


def _month_start_ms() -> int:
    now = datetime.now(UTC)
    return int(datetime(now.year, now.month, 1, tzinfo=UTC).timestamp() * 1000)


# Two hours before this month began: recent enough for the tables' retention TTL (which drops older rows
# on insert), and a month end inside the range. Everything else is an offset from it, so the data is the
# same whenever the tests run.
T0_MS = _month_start_ms() - 2 * HOUR_MS
END_MS = T0_MS + 3 * DAY_MS
STATE_EVERY_MS = 10 * MINUTE_MS
STATE_START_MS = T0_MS + 5 * MINUTE_MS  # requests in the first five minutes see no state yet
BURST_MINUTE_MS = T0_MS + 50 * HOUR_MS + 3 * MINUTE_MS
BURST_TENANT = "globex"

REQUESTS_TOPIC = "tokenpools.requests"
ENTITLEMENT_STATE_TOPIC = "tokenpools.entitlement-state"
POOL_STATE_TOPIC = "tokenpools.pool-state"
CONFIG_TOPIC = "tokenpools.config"

# The "why was this refused" requests: one with state before it, one decided in the very millisecond a
# state was published (at or before includes it), one before any state was published.
WHY_REFUSED = "why-refused-kv"
WHY_REFUSED_AT_TICK = "why-refused-at-tick"
WHY_REFUSED_EARLY = "why-refused-early"

POOL_WEIGHTS = {"pool-a": (0.5, 1.0), "pool-b": (0.25, 1.0)}  # (input, output) throughput units per token
POOL_GUARANTEES = {"pool-a": 400.0, "pool-b": 300.0}

def millis(ts: float) -> int:
    """Seconds to whole milliseconds, as a DateTime64(3) column stores them."""
    return round(ts * 1000)


@dataclass(frozen=True, slots=True)
class SpecVersion:
    """One config-topic record of an entitlement: its spec from ``ts_ms`` on, or None (deleted)."""

    ts_ms: int
    entitlement: str
    spec: EntitlementSpec | None


@dataclass(frozen=True, slots=True)
class Activity:
    """An entitlement sending requests from ``start_ms`` to ``end_ms`` as ``tenant`` on ``tier``."""

    entitlement: str
    pool: str
    tenant: str
    tier: Tier
    start_ms: int
    end_ms: int
    requests: int
    refuse_p: float


@dataclass(slots=True)
class Seed:
    events: list[RequestEvent] = field(default_factory=list)
    entitlement_states: list[EntitlementState] = field(default_factory=list)
    pool_states: list[PoolState] = field(default_factory=list)
    spec_versions: list[SpecVersion] = field(default_factory=list)
    pool_specs: list[tuple[int, TokenPool]] = field(default_factory=list)

    def tenants(self) -> list[str]:
        return sorted({e.tenant for e in self.events})


def _spec(pool: str, tenant: str, tier: Tier, burst: float, *, guarantee: float = 0.0, weight: float = 1.0,
          ttft: float | None = None, tpot: float | None = None) -> EntitlementSpec:
    return EntitlementSpec(
        pool=pool, tenant=tenant, tier=tier, weight=weight,
        guarantee=Resources(throughput=guarantee), burst=Resources(throughput=burst, kv=200_000, concurrency=64),
        slo=SLO(ttft_seconds=ttft, tpot_seconds=tpot) if ttft is not None else None,
    )


def spec_versions() -> list[SpecVersion]:
    before = T0_MS - DAY_MS
    g, e, s = Tier.GUARANTEED, Tier.ELASTIC, Tier.SPOT
    return sorted([
        SpecVersion(before, "acme-gold", _spec("pool-a", "acme", g, 800, guarantee=400, weight=2, ttft=0.5, tpot=0.05)),
        SpecVersion(T0_MS + HOUR_MS, "acme-flex", _spec("pool-a", "acme", e, 600, ttft=1.0)),
        SpecVersion(before, "globex-std", _spec("pool-a", "globex", e, 500)),
        SpecVersion(T0_MS + 36 * HOUR_MS, "globex-std", _spec("pool-a", "globex", e, 500, ttft=0.8, tpot=0.06)),
        SpecVersion(before, "globex-batch", _spec("pool-b", "globex", s, 1000)),
        SpecVersion(before, "initech-gold", _spec("pool-b", "initech", g, 300, guarantee=300, ttft=0.3, tpot=0.04)),
        SpecVersion(T0_MS + 24 * HOUR_MS, "initech-gold",
                    _spec("pool-b", "initech", g, 300, guarantee=300, ttft=0.6, tpot=0.08)),
        SpecVersion(before, "trial", _spec("pool-b", "hooli", e, 200, ttft=2.0)),
        SpecVersion(T0_MS + 30 * HOUR_MS, "trial", None),
        SpecVersion(T0_MS + 40 * HOUR_MS, "trial", _spec("pool-b", "initech", s, 400, ttft=1.5)),
        SpecVersion(before, "umbrella-spot", _spec("pool-a", "umbrella", s, 800)),
    ], key=lambda v: v.ts_ms)


def activities() -> list[Activity]:
    g, e, s = Tier.GUARANTEED, Tier.ELASTIC, Tier.SPOT
    return [
        Activity("acme-gold", "pool-a", "acme", g, T0_MS, END_MS, 520, 0.05),
        Activity("acme-flex", "pool-a", "acme", e, T0_MS, END_MS, 400, 0.15),
        Activity("globex-std", "pool-a", "globex", e, T0_MS, END_MS, 440, 0.15),
        Activity("globex-batch", "pool-b", "globex", s, T0_MS, END_MS, 400, 0.30),
        Activity("initech-gold", "pool-b", "initech", g, T0_MS, END_MS, 480, 0.05),
        Activity("trial", "pool-b", "hooli", e, T0_MS, T0_MS + 30 * HOUR_MS, 180, 0.20),
        Activity("trial", "pool-b", "initech", s, T0_MS + 40 * HOUR_MS, END_MS, 180, 0.30),
        Activity("umbrella-spot", "pool-a", "umbrella", s, T0_MS, END_MS, 360, 0.30),
    ]


_TTFT_RANGE = {Tier.GUARANTEED: (0.08, 0.7), Tier.ELASTIC: (0.2, 1.6), Tier.SPOT: (0.4, 3.0)}
_REFUSED_ON = (Dimension.THROUGHPUT, Dimension.KV, Dimension.CONCURRENCY)


def _request(rng: random.Random, n: int, act: Activity, arrival_ms: int, *, refused_on: Dimension | None = None,
             force_refusal: bool = False, request_id: str | None = None) -> list[RequestEvent]:
    """The decision event of one request and, if admitted, its finish event."""
    rid = request_id or f"r{n:05d}"
    w_in, w_out = POOL_WEIGHTS[act.pool]
    prompt = rng.randint(20, 2000)
    estimate = prompt + rng.randint(0, 40)
    max_tokens = rng.choice((64, 256, 512, 1024))
    reserved = Amounts(throughput=w_in * estimate + w_out * max_tokens, kv=float(estimate + max_tokens),
                       concurrency=1.0)
    common = dict(request_id=rid, admitter_id=rng.choice(("adm-1", "adm-2")), region="eu-west" if act.pool == "pool-a"
                  else "us-east", tenant=act.tenant, entitlement=act.entitlement, pool=act.pool, tier=act.tier,
                  model="llama-70b" if act.pool == "pool-a" else "mixtral-8x7b", max_tokens=max_tokens,
                  reserved=reserved)
    if force_refusal or rng.random() < act.refuse_p:
        if refused_on is None and not force_refusal:
            refused_on = rng.choice(_REFUSED_ON) if rng.random() > 0.05 else None
        return [RequestEvent(id=f"{rid}-decision", phase=Phase.DECISION, outcome=Outcome.REFUSED, ts=arrival_ms / 1000,
                             prompt_tokens=estimate, refused_dimension=refused_on, retry_after_s=1.0, status_code=429,
                             **common)]
    queued = rng.random() < 0.2
    wait = round(rng.uniform(0.05, 1.5), 3) if queued else 0.0
    decided_ms = arrival_ms + round(wait * 1000)
    decision = RequestEvent(id=f"{rid}-decision", phase=Phase.DECISION,
                            outcome=Outcome.QUEUED_ADMITTED if queued else Outcome.ADMITTED, ts=decided_ms / 1000,
                            prompt_tokens=estimate, queue_wait_s=wait, **common)
    roll = rng.random()
    if roll < 0.03:
        outcome = Outcome.FAILED
    elif roll < 0.07:
        outcome = Outcome.CANCELLED
    elif act.tier is Tier.SPOT and roll < 0.22:
        outcome = Outcome.PREEMPTED
    else:
        outcome = Outcome.COMPLETED
    lo, hi = _TTFT_RANGE[act.tier]
    ttft: float | None = round(wait + rng.uniform(lo, hi), 4)
    per_token = round(rng.uniform(0.01, 0.1), 4)
    output = 1 if rng.random() < 0.05 else rng.randint(2, max_tokens)
    if outcome is Outcome.FAILED:
        ttft, output, latency = None, 0, round(rng.uniform(0.05, 0.5), 4)
    else:
        if outcome is not Outcome.COMPLETED:
            output = rng.randint(0, output)
            ttft = ttft if output > 0 else None
        latency = round((ttft or wait + 0.05) + per_token * max(output - 1, 0), 4)
    used_prompt = estimate if outcome is Outcome.FAILED else prompt
    if outcome is Outcome.FAILED:
        charged: Amounts | None = reserved  # usage unknown: the reservation's charge stays
    elif rng.random() < 0.05:
        charged = None  # an older admitter that sends no charge
    else:
        charged = Amounts(throughput=w_in * used_prompt + w_out * output, kv=reserved.kv, concurrency=1.0)
    finish = RequestEvent(
        id=f"{rid}-finish", phase=Phase.FINISH, outcome=outcome, ts=(arrival_ms + round(latency * 1000)) / 1000,
        prompt_tokens=used_prompt, output_tokens=output, queue_wait_s=wait, ttft_s=ttft, latency_s=latency,
        status_code=502 if outcome is Outcome.FAILED else 200, replica=f"http://{act.pool}-{rng.randint(0, 3)}:8000",
        preempted_by=f"r{rng.randint(0, n):05d}" if outcome is Outcome.PREEMPTED else None, charged=charged, **common)
    return [decision, finish]


def request_events(rng: random.Random) -> list[RequestEvent]:
    acts = activities()
    events: list[RequestEvent] = []
    n = 0
    for act in acts:
        for _ in range(act.requests):
            n += 1
            events += _request(rng, n, act, rng.randrange(act.start_ms, act.end_ms))
    # Every pool refuses on every dimension at least once, whatever the draws.
    for act in (acts[0], acts[3]):
        for dim in _REFUSED_ON:
            n += 1
            events += _request(rng, n, act, rng.randrange(act.start_ms, act.end_ms), refused_on=dim,
                               force_refusal=True)
    # A burst: the burst tenant's elastic entitlement sends 60 short requests within one minute.
    burst = acts[2]
    for _ in range(60):
        n += 1
        arrival = BURST_MINUTE_MS + rng.randrange(0, 40_000)
        for ev in _request(rng, n, burst, arrival):
            if ev.phase is Phase.FINISH:  # short, so it finishes in the burst minute
                ev = ev.model_copy(update={"ts": (arrival + 2000) / 1000, "latency_s": 2.0, "ttft_s": 0.3,
                                           "queue_wait_s": 0.0, "output_tokens": max(ev.output_tokens, 200),
                                           "outcome": Outcome.COMPLETED, "charged": Amounts(
                                               throughput=0.5 * ev.prompt_tokens + max(ev.output_tokens, 200))})
            events.append(ev)
    # A request of the trial entitlement that is still running when its spec is deleted: its finish comes
    # under no spec at all (no SLO counts it).
    trial, running = acts[5], list[RequestEvent]()
    while len(running) < 2:  # drawn until admitted
        n += 1
        running = _request(rng, n, trial, T0_MS + 30 * HOUR_MS - 10)  # every request takes over 10 ms
    events += [ev if ev.phase is Phase.DECISION else ev.model_copy(update={"outcome": Outcome.COMPLETED})
               for ev in running]
    initech, early = acts[4], acts[1]
    events += _request(rng, n + 1, initech, T0_MS + 20 * HOUR_MS + 7 * MINUTE_MS + 13_250, refused_on=Dimension.KV,
                       force_refusal=True, request_id=WHY_REFUSED)
    _, tick_ms = list(_state_times(initech.pool))[60]
    events += _request(rng, n + 2, initech, tick_ms, refused_on=Dimension.THROUGHPUT, force_refusal=True,
                       request_id=WHY_REFUSED_AT_TICK)
    events += _request(rng, n + 3, early, T0_MS + 2 * MINUTE_MS, refused_on=Dimension.CONCURRENCY,
                       force_refusal=True, request_id=WHY_REFUSED_EARLY)
    events.sort(key=lambda ev: (ev.ts, ev.id))
    return events


def _state_times(pool: str) -> Iterator[tuple[int, int]]:
    """(seq, ts_ms) of a pool's allocator ticks that published state: every ten minutes, pool-b 1.5 s later."""
    offset = 0 if pool == "pool-a" else 1500
    for k, ts in enumerate(range(STATE_START_MS + offset, END_MS, STATE_EVERY_MS)):
        yield 600 * (k + 1), ts


def entitlement_states(rng: random.Random) -> list[EntitlementState]:
    out: list[EntitlementState] = []
    for act in activities():
        if act.entitlement == "trial" and act.tenant == "initech":
            continue  # one state stream per entitlement name; the tier it carries is the first one's
        debt = 0.0
        for seq, ts_ms in _state_times(act.pool):
            debt = max(0.0, debt * 0.9 + rng.uniform(-0.2, 0.5))
            weight = 2.0 if act.entitlement == "acme-gold" else 1.0
            limit = round(rng.uniform(50, 800), 3)
            usage = round(limit * rng.uniform(0.2, 1.1), 3)
            out.append(EntitlementState(
                id=act.entitlement, pool=act.pool, tier=act.tier, seq=seq, ts=ts_ms / 1000,
                limits=Amounts(throughput=limit, kv=round(limit * 250, 1), concurrency=float(rng.randint(4, 64))),
                admitter_shares={"adm-1": Amounts(throughput=limit / 2), "adm-2": Amounts(throughput=limit / 2)},
                demand=Amounts(throughput=round(usage * rng.uniform(1.0, 1.6), 3), kv=1000.0, concurrency=8.0),
                usage=Amounts(throughput=usage, kv=round(usage * 200, 1), concurrency=float(rng.randint(0, 32))),
                debt=round(debt, 6), effective_weight=round(weight * 2 ** -debt, 6),
                fair_share=round(rng.uniform(0.05, 0.6), 4), dominant_share=round(rng.uniform(0.0, 1.0), 4)))
    return out


def pool_states(rng: random.Random) -> list[PoolState]:
    out: list[PoolState] = []
    for pool in ("pool-a", "pool-b"):
        replicas = 3
        for k, (seq, ts_ms) in enumerate(_state_times(pool)):
            replicas = min(6, max(2, replicas + rng.choice((-1, 0, 0, 0, 1))))
            capacity = 900.0 * replicas
            demand: dict[Tier, Amounts] = {}
            usage: dict[Tier, Amounts] = {}
            for tier in Tier:
                if tier is Tier.SPOT and k % 7 == 3:
                    continue  # a version without any spot demand: the tier is missing from it
                if tier is Tier.GUARANTEED:  # guaranteed tenants near their guarantees, sometimes bursting past
                    used = round(rng.uniform(0.3, 1.15) * POOL_GUARANTEES[pool], 3)
                elif tier is Tier.ELASTIC and k % 17 == 8:  # elastic over capacity: nothing left idle
                    used = round(0.95 * capacity, 3)
                else:
                    used = round(rng.uniform(0.0, 0.4) * capacity, 3)
                demand[tier] = Amounts(throughput=round(used * rng.uniform(1.0, 1.8), 3), kv=used * 100)
                if not (tier is Tier.ELASTIC and k % 11 == 5):  # demand with nothing served yet
                    usage[tier] = Amounts(throughput=used, kv=used * 90, concurrency=float(rng.randint(0, 20)))
            out.append(PoolState(
                id=pool, seq=seq, ts=ts_ms / 1000, ready_replicas=replicas,
                desired_replicas=None if k % 13 == 0 else replicas + rng.choice((0, 1)),
                capacity=Amounts(throughput=capacity, kv=90_000.0 * replicas, concurrency=28.0 * replicas),
                guarantees=Amounts(throughput=POOL_GUARANTEES[pool], kv=50_000.0, concurrency=10.0),
                demand=demand, usage=usage))
    return out


def pool_specs() -> list[tuple[int, TokenPool]]:
    out = []
    for pool, (w_in, w_out) in POOL_WEIGHTS.items():
        spec = TokenPoolSpec(model="llama-70b" if pool == "pool-a" else "mixtral-8x7b",
                             region="eu-west" if pool == "pool-a" else "us-east",
                             per_replica=Resources(throughput=1000, kv=100_000, concurrency=32),
                             token_weights=TokenWeights(input=w_in, output=w_out))
        out.append((T0_MS - 2 * DAY_MS, TokenPool(metadata=Metadata(name=pool), spec=spec)))
    return out


def build(seed: int = 13) -> Seed:
    rng = random.Random(seed)
    return Seed(events=request_events(rng), entitlement_states=entitlement_states(rng), pool_states=pool_states(rng),
                spec_versions=spec_versions(), pool_specs=pool_specs())


class _Timed(Protocol):
    @property
    def ts(self) -> float: ...


R = TypeVar("R", bound=_Timed)


def _blocks(records: Sequence[R], topic: str, size: int) -> Iterator[tuple[str, list[tuple[R, Located]]]]:
    """Consecutive offset ranges of one partition, located, each with its token (topic/partition/first-last)."""
    for first in range(0, len(records), size):
        chunk = records[first:first + size]
        located = [(r, Located(topic, 0, first + i, millis(r.ts))) for i, r in enumerate(chunk)]
        yield f"{topic}/0/{first}-{first + len(chunk) - 1}", located


def insert(store: HistoryStore, seed: Seed, block: int = 2000) -> None:
    """Write the seed as the sink would: blocks cut by offset range, one deduplication token each."""
    for token, events in _blocks(seed.events, REQUESTS_TOPIC, block):
        store.insert("request_events", request_block(events), token)
    for token, states in _blocks(seed.entitlement_states, ENTITLEMENT_STATE_TOPIC, block):
        store.insert("entitlement_state", entitlement_state_block(states), token)
    for token, pools in _blocks(seed.pool_states, POOL_STATE_TOPIC, block):
        blocks = pool_state_blocks(pools)
        store.insert("pool_state", blocks.pools, token)
        store.insert("pool_tier_state", blocks.tiers, token)
    changes: list[tuple[str, Manifest | None, Located]] = []
    for i, (ts_ms, pool) in enumerate(seed.pool_specs):
        changes.append((f"TokenPool/{pool.name}", pool, Located(CONFIG_TOPIC, 0, i, ts_ms)))
    for i, v in enumerate(seed.spec_versions, start=len(changes)):
        manifest = Entitlement(metadata=Metadata(name=v.entitlement), spec=v.spec) if v.spec is not None else None
        changes.append((f"Entitlement/{v.entitlement}", manifest, Located(CONFIG_TOPIC, 0, i, v.ts_ms)))
    config = config_blocks(changes)
    token = f"{CONFIG_TOPIC}/0/0-{len(changes) - 1}"
    store.insert("pool_specs", config.pools, token)
    store.insert("entitlement_specs", config.entitlements, token)
