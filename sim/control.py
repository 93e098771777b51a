"""The control loop in simulated time: the capacity model wired exactly as the services use it.

Per arrival the admission decision runs (``capacity.admission.decide``), admitted work goes to the
emulated replicas, queued work waits in per-entitlement queues ordered by tier then SLO deadline,
preempted spot is aborted on its replica, and every completion corrects its reservation. The
allocator ticks every ``tickSeconds``; the scaling rule adds replicas (after a start-up delay) or
drains them.

Modes are the policies compared in the experiments:
  - ``baseline``/``fcfs``: no admission control, everything straight to the replicas' queues;
  - ``tokenpools``: the product, with debt;
  - ``no-debt``: the same allocator with no memory (weighted fair share of the moment);
  - ``vtc``: a Virtual Token Counter scheduler (Sheng et al., OSDI 2024) holding requests at the
    edge and dispatching the least-served client's first whenever a replica slot is free.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from capacity.admission import Verdict, decide, queue_bound
from capacity.allocator import AllocatorPolicy, allocate
from capacity.cost import RequestCost
from capacity.live import EntitlementLive, PoolLive
from capacity.scaling import DemandForecaster, ScalingRule
from capacity.tick import apply, collect
from schemas.arrivals import Arrival
from schemas.specs import Entitlement, TokenPool
from sim.cluster import Cluster
from sim.costmodel import ReplicaCostModel
from sim.engine import Request, RequestResult

TIER_PRIORITY = {"guaranteed": 0, "elastic": 1, "spot": 2}


class Mode(StrEnum):
    BASELINE = "baseline"
    TOKENPOOLS = "tokenpools"
    NO_DEBT = "no-debt"
    VTC = "vtc"


class SimOutcome(StrEnum):
    COMPLETED = "completed"
    REFUSED = "refused"
    QUEUE_TIMEOUT = "queue_timeout"
    PREEMPTED = "preempted"
    UNFINISHED = "unfinished"


@dataclass(slots=True)
class RequestRecord:
    """What happened to one arrival; times in simulated seconds."""

    request_id: str
    tenant: str
    entitlement: str
    tier: str
    arrival: float
    prompt_tokens: int
    output_target: int
    max_tokens: int
    outcome: SimOutcome = SimOutcome.UNFINISHED
    submitted: float | None = None
    first_token: float | None = None
    finish: float | None = None
    output_tokens: int = 0
    refused_dimension: str | None = None
    engine_preemptions: int = 0

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival

    @property
    def e2e(self) -> float | None:
        return None if self.finish is None or self.outcome is not SimOutcome.COMPLETED else self.finish - self.arrival

    @property
    def queue_wait(self) -> float | None:
        return None if self.submitted is None else self.submitted - self.arrival


@dataclass(slots=True)
class _Queued:
    record: RequestRecord
    ent: EntitlementLive
    cost: RequestCost
    deadline: float
    expires: float


@dataclass
class Sample:
    """Pool state every ``sample_seconds``, for time-series plots."""

    t: float
    ready_replicas: int
    replicas: int
    in_flight: int
    queued: int
    limits: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    debt: dict[str, float] = field(default_factory=dict)
    effective_weight: dict[str, float] = field(default_factory=dict)


@dataclass
class SimResult:
    mode: Mode
    duration: float
    end: float  # duration plus any drain time
    records: list[RequestRecord]
    samples: list[Sample]
    capacity: tuple[float, float, float]  # per ready replica (sellable)
    busy_time: float
    replica_seconds: float
    replica_timeline: list[tuple[float, int]]
    w_in: float
    w_out: float


@dataclass(frozen=True)
class LoopSettings:
    replicas: int
    max_replicas: int
    autoscale: bool = True
    scale_every: float = 5.0
    sample_every: float = 5.0
    cost_model: ReplicaCostModel = field(default_factory=ReplicaCostModel)


class ControlLoop:
    """One run of one mode over one list of arrivals."""

    def __init__(self, pool: TokenPool, entitlements: list[Entitlement], mode: Mode, settings: LoopSettings) -> None:
        self.mode = mode
        self.settings = settings
        self.pool_spec = pool
        self.live = PoolLive(pool, entitlements, now=0.0, replicas=settings.replicas)
        self.policy = AllocatorPolicy(
            reclaim_buffer=pool.spec.reclaim_buffer,
            debt_half_life=pool.spec.debt.half_life_seconds,
            debt_sharpness=pool.spec.debt.sharpness,
            use_debt=mode is not Mode.NO_DEBT,
        )
        self.tick_seconds = pool.spec.tick_seconds
        self.cluster = Cluster(
            settings.replicas, settings.cost_model, on_first_token=self._on_first_token, on_finish=self._on_finish
        )
        self.records: dict[str, RequestRecord] = {}
        self.queues: dict[str, deque[_Queued]] = {name: deque() for name in self.live.entitlements}
        self.samples: list[Sample] = []
        self.rule = ScalingRule(pool.spec)
        self.forecaster = DemandForecaster(pool.spec.scaling.forecast_half_life_seconds)
        self.replica_timeline: list[tuple[float, int]] = [(0.0, settings.replicas)]
        self._demand_window: list[tuple[tuple[float, ...], tuple[float, ...]]] = []
        self._drain_scheduled = False
        self._vtc = _VirtualTokenCounter(self.live) if mode is Mode.VTC else None

    # ------------------------------------------------------------------ run
    def run(self, arrivals: Iterable[Arrival], duration: float,
            progress: Callable[[float], None] | None = None, drain: float = 0.0) -> SimResult:
        """Arrivals stop at ``duration``; the replicas then get ``drain`` more seconds to finish."""
        controlled = self.mode is not Mode.BASELINE
        if controlled:
            self.cluster.call_at(self.tick_seconds, self._tick)
            if self.settings.autoscale and self.mode is not Mode.VTC:
                self.cluster.call_at(self.settings.scale_every, self._scale)
        self.cluster.call_at(0.0, self._sample)
        next_report = 0.0
        for a in arrivals:
            if a.t > duration:
                break
            self.cluster.run_until(a.t)
            self._arrive(a)
            if progress is not None and a.t >= next_report:
                progress(a.t)
                next_report = a.t + 1.0
        self.cluster.run_until(duration)
        if progress is not None:
            progress(duration)
        end = duration
        while drain > 0 and self.cluster.outstanding and end < duration + drain:
            end = min(duration + drain, end + 10.0)
            self.cluster.run_until(end)
        return SimResult(
            mode=self.mode,
            duration=duration,
            end=end,
            records=list(self.records.values()),
            samples=self.samples,
            capacity=self.pool_spec.spec.sellable_per_replica(),
            busy_time=self.cluster.busy_time(duration),
            replica_seconds=self.cluster.replica_seconds(duration),
            replica_timeline=self.replica_timeline,
            w_in=self.live.w_in,
            w_out=self.live.w_out,
        )

    # ------------------------------------------------------------- arrivals
    def _arrive(self, a: Arrival) -> None:
        ent = self.live.entitlements[a.entitlement]
        rec = RequestRecord(a.request_id, a.tenant, a.entitlement, ent.tier.value, a.t,
                            a.prompt_tokens, a.output_tokens, a.max_tokens)
        self.records[a.request_id] = rec
        if self.mode is Mode.BASELINE:
            self._submit(rec, a.t)
            return
        cost = self.live.cost(a.prompt_tokens, a.max_tokens, ent)
        if self._vtc is not None:
            self._vtc.enqueue(rec, ent, cost, a.t)
            self._vtc_dispatch(a.t)
            return
        deadline = a.t + (ent.slo_ttft if ent.slo_ttft is not None else math.inf)
        self._decide(rec, ent, cost, a.t, deadline, retry=False)

    def _decide(self, rec: RequestRecord, ent: EntitlementLive, cost: RequestCost, now: float,
                deadline: float, retry: bool) -> bool:
        d = decide(self.live, ent, rec.request_id, cost, now, deadline=deadline, retry=retry)
        if d.verdict is Verdict.ADMIT or d.verdict is Verdict.PREEMPT:
            for victim in d.victims:
                self._preempt(victim.request_id, now)
            self._submit(rec, now)
            return True
        if retry:
            return False
        if d.verdict is Verdict.QUEUE:
            max_wait = queue_bound(self.live, ent)
            self.queues[ent.name].append(_Queued(rec, ent, cost, deadline, now + max_wait))
            if math.isfinite(d.retry_after) and d.retry_after > 0:
                self._schedule_drain(now + d.retry_after)
        else:
            rec.outcome = SimOutcome.REFUSED
            rec.refused_dimension = d.dimension.value if d.dimension else None
        return False

    def _submit(self, rec: RequestRecord, now: float) -> None:
        """Hand the request to a replica; with token pools the tier travels as vLLM's priority."""
        rec.submitted = now
        priority = 0 if self.mode is Mode.BASELINE else TIER_PRIORITY[rec.tier]
        self.cluster.submit(
            Request(rec.request_id, rec.prompt_tokens, rec.output_target, rec.max_tokens, priority=priority), now
        )

    def _preempt(self, request_id: str, now: float) -> None:
        self.cluster.abort(request_id, now)
        rec = self.records[request_id]
        rec.outcome = SimOutcome.PREEMPTED
        rec.finish = now

    # ---------------------------------------------------------- completions
    def _on_first_token(self, t: float, request: Request, replica: int) -> None:
        rec = self.records[request.request_id]
        if rec.first_token is None:
            rec.first_token = t

    def _on_finish(self, result: RequestResult) -> None:
        rec = self.records[result.request_id]
        t = result.finish_time
        rec.finish = t
        rec.output_tokens = result.output_tokens
        rec.engine_preemptions = result.preemptions
        rec.outcome = SimOutcome.COMPLETED
        if self.mode is Mode.BASELINE:
            return
        self.live.release(result.request_id, t, result.prompt_tokens, result.output_tokens)
        if self._vtc is not None:
            self._vtc.charge_output(rec.tenant, result.output_tokens)
            self._vtc_dispatch(t)
        else:
            self._schedule_drain(t)

    # ---------------------------------------------------------------- queue
    def _schedule_drain(self, t: float) -> None:
        if t <= self.cluster.now and self._drain_scheduled:
            return
        if t <= self.cluster.now:
            self._drain_scheduled = True
        self.cluster.call_at(max(t, self.cluster.now), self._drain)

    def _drain(self, now: float) -> None:
        """Retry queued requests: tiers first, then SLO deadline; each entitlement in FIFO order."""
        self._drain_scheduled = False
        heads = [(q[0].ent.rank, q[0].deadline, name) for name, q in self.queues.items() if q]
        heads.sort()
        for _, _, name in heads:
            queue = self.queues[name]
            while queue:
                item = queue[0]
                if item.expires < now:
                    queue.popleft()
                    item.record.outcome = SimOutcome.QUEUE_TIMEOUT
                    continue
                if not self._decide(item.record, item.ent, item.cost, now, item.deadline, retry=True):
                    break
                queue.popleft()

    # ----------------------------------------------------------------- vtc
    def _vtc_dispatch(self, now: float) -> None:
        vtc = self._vtc
        assert vtc is not None
        live = self.live
        while True:
            item = vtc.peek()
            if item is None:
                return
            if live.kv_in_flight + item.cost.kv > live.cap_kv or live.seqs_in_flight + 1 > live.cap_conc:
                return
            vtc.pop()
            live.hold(item.record.request_id, item.ent, item.cost, now)
            self._submit(item.record, now)

    # ---------------------------------------------------------- tick, scale
    def _tick(self, now: float) -> None:
        if self._vtc is None:
            ents, inp = collect(self.live, now, self.tick_seconds)
            apply(ents, allocate(inp, self.policy), now)
            spot = inp.rank == 2
            self._demand_window.append(
                (tuple(inp.demand[~spot].sum(axis=0)), tuple(inp.demand[spot].sum(axis=0)))  # type: ignore[arg-type]
            )
            self._drain(now)
        self.cluster.call_at(now + self.tick_seconds, self._tick)

    def _scale(self, now: float) -> None:
        """The scaling rule on the demand the allocator saw (refused and queued work included)."""
        guaranteed = [e for e in self.live.entitlements.values() if e.rank == 0]
        guarantees = tuple(sum(e.spec.spec.guarantee.as_tuple()[d] for e in guaranteed) for d in range(3))
        window = self._demand_window[-max(1, int(self.settings.scale_every / self.tick_seconds)):]
        demand = tuple(max((w[0][d] for w in window), default=0.0) for d in range(3))
        spot = tuple(max((w[1][d] for w in window), default=0.0) for d in range(3))
        forecast = self.forecaster.observe(demand, now)  # type: ignore[arg-type]
        current = len([r for r in self.cluster.replicas if not r.draining])
        decision = self.rule.decide(now, current, guarantees, forecast, spot)  # type: ignore[arg-type]
        startup = self.pool_spec.spec.scaling.startup_delay_seconds
        for _ in range(decision.replicas - current):
            self.cluster.add_replica(now + startup)
            self.cluster.call_at(now + startup, self._capacity_changed)
        for _ in range(current - decision.replicas):
            self.cluster.remove_replica()
            self._capacity_changed(now)
        if decision.replicas != current:
            self.replica_timeline.append((now, decision.replicas))
        self.cluster.call_at(now + self.settings.scale_every, self._scale)

    def _capacity_changed(self, now: float) -> None:
        self.live.set_replicas(len(self.cluster.ready_replicas(now)))

    # --------------------------------------------------------------- sample
    def _sample(self, now: float) -> None:
        live = self.live
        self.samples.append(Sample(
            t=now,
            ready_replicas=len(self.cluster.ready_replicas(now)),
            replicas=len(self.cluster.replicas),
            in_flight=self.cluster.outstanding,
            queued=sum(len(q) for q in self.queues.values()) + (self._vtc.size if self._vtc else 0),
            limits={n: (e.limit_tp, e.limit_kv, e.limit_conc) for n, e in live.entitlements.items()},
            debt={n: e.over_use for n, e in live.entitlements.items()},
            effective_weight={n: e.effective_weight for n, e in live.entitlements.items()},
        ))
        self.cluster.call_at(now + self.settings.sample_every, self._sample)


class _VirtualTokenCounter:
    """VTC: serve the backlogged client with the least weighted service; lift newcomers' counters.

    Counters charge ``w_in * prompt`` at dispatch and ``w_out * output`` at completion (the paper
    charges output per generated token; per request is close at these request lengths). Clients
    are few (tenants), so the least-served one is found by a scan rather than a heap.
    """

    def __init__(self, live: PoolLive) -> None:
        self.live = live
        self.counter: dict[str, float] = {}
        self.weight: dict[str, float] = {}
        self.queues: dict[str, deque[_Queued]] = {}
        self.size = 0

    def enqueue(self, rec: RequestRecord, ent: EntitlementLive, cost: RequestCost, now: float) -> None:
        client = rec.tenant
        queue = self.queues.setdefault(client, deque())
        self.weight[client] = ent.weight
        if not queue:
            backlogged = [self.counter[c] for c, q in self.queues.items() if q and c != client]
            lifted = min(backlogged) if backlogged else 0.0
            self.counter[client] = max(self.counter.get(client, 0.0), lifted)
        queue.append(_Queued(rec, ent, cost, math.inf, math.inf))
        self.size += 1

    def _head_client(self) -> str | None:
        best: str | None = None
        for client, queue in self.queues.items():
            if queue and (best is None or self.counter[client] < self.counter[best]):
                best = client
        return best

    def peek(self) -> _Queued | None:
        client = self._head_client()
        return self.queues[client][0] if client is not None else None

    def pop(self) -> _Queued:
        client = self._head_client()
        assert client is not None
        item = self.queues[client].popleft()
        self.size -= 1
        self.counter[client] += self.live.w_in * item.record.prompt_tokens / self.weight[client]
        return item

    def charge_output(self, client: str, output_tokens: int) -> None:
        if client in self.counter:
            self.counter[client] += self.live.w_out * output_tokens / self.weight[client]
