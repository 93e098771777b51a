"""Live admission state of one pool as one admitter sees it: in-flight reservations and limits.

Everything here is O(1) per request. Accumulators gather what the allocator tick needs (demand
including refused and queued work, time-integrated usage) so the tick never scans requests.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from capacity.bucket import TokenBucket
from capacity.cost import OutputEstimator, RequestCost
from schemas.specs import TIER_RANK, Entitlement, Tier, TokenPool, Triple

GUARANTEED, ELASTIC, SPOT = 0, 1, 2
FALLBACK_HOLD_S = 1.0  # how long a request holds KV and a sequence, until the first one ends (as streams)
_INF = math.inf


def _ratio(share: float, limit: float, default: float) -> float:
    if limit > 0:
        return min(1.0, max(0.0, share / limit))
    return default


class Reservation:
    """What one admitted request holds until it ends."""

    __slots__ = ("admitted_at", "entitlement", "kv", "max_tokens", "prompt_tokens", "request_id", "throughput")

    def __init__(self, request_id: str, entitlement: EntitlementLive, cost: RequestCost, now: float) -> None:
        self.request_id = request_id
        self.entitlement = entitlement
        self.throughput = cost.throughput
        self.kv = cost.kv
        self.prompt_tokens = cost.prompt_tokens
        self.max_tokens = cost.max_tokens
        self.admitted_at = now


class EntitlementLive:
    """One entitlement's limits, buckets, in-flight totals and per-tick accumulators."""

    __slots__ = (
        "bucket",
        "burst",
        "debt",
        "demand_conc_peak",
        "demand_kv_peak",
        "demand_tp",
        "effective_weight",
        "fair_share",
        "g_bucket",
        "guarantee",
        "hold_n",
        "hold_s",
        "hold_sum",
        "kv_in_flight",
        "kv_seconds",
        "last_change",
        "limit_conc",
        "limit_kv",
        "limit_tp",
        "name",
        "outputs",
        "over_use",
        "rank",
        "seq_seconds",
        "seqs_in_flight",
        "slo_ttft",
        "spec",
        "tenant",
        "tier",
        "unmet_kv",
        "unmet_seqs",
        "used_tp",
        "weight",
        "window",
    )

    def __init__(self, ent: Entitlement, now: float) -> None:
        self._take_spec(ent)
        # Until the first tick, an entitlement may use its guarantee (or nothing, for others).
        self.limit_tp, self.limit_kv, self.limit_conc = self.guarantee
        self.bucket = TokenBucket(self.limit_tp, self.limit_tp * self.window, now)
        g_tp = self.guarantee[0]
        self.g_bucket = TokenBucket(g_tp, g_tp * self.window, now) if self.rank == GUARANTEED else None
        self.kv_in_flight = 0.0
        self.seqs_in_flight = 0.0
        self.outputs = OutputEstimator()
        self.debt = 0.0  # usage memory carried between ticks (decayed dominant-share-seconds)
        self.over_use = 0.0  # debt: remembered usage minus its configured share of all remembered usage
        self.effective_weight = self.weight
        self.fair_share = 0.0
        self.last_change = now
        self.hold_s = FALLBACK_HOLD_S
        self.reset_accumulators(now)

    def _take_spec(self, ent: Entitlement) -> None:
        """The fields that come straight from the spec (shared by ``__init__`` and ``apply_spec``)."""
        spec = ent.spec
        self.spec = ent
        self.name = ent.name
        self.tenant = spec.tenant
        self.tier: Tier = spec.tier
        self.rank = TIER_RANK[spec.tier]
        self.weight = spec.weight
        self.window = spec.burst_window_seconds
        self.slo_ttft = spec.slo.ttft_seconds if spec.slo else None
        self.guarantee = spec.guarantee.as_tuple()
        self.burst = spec.burst.as_tuple()

    def apply_spec(self, ent: Entitlement, now: float) -> None:
        """A changed spec, applied in place so the reservations already held stay counted on this object.

        The limits stay where the last tick put them, cut to the new burst (a guaranteed entitlement
        still never goes below its guarantee); a tier change adds or drops the guarantee bucket.
        The pool's unused-guarantee totals are the caller's to recount (``PoolLive.put_entitlement``).
        """
        self.integrate(now)
        self._take_spec(ent)
        if self.rank == GUARANTEED:
            if self.g_bucket is None:
                g_tp = self.guarantee[0]
                self.g_bucket = TokenBucket(g_tp, g_tp * self.window, now)
        else:
            self.g_bucket = None
        b = self.burst
        self.set_limits(min(self.limit_tp, b[0]), min(self.limit_kv, b[1]), min(self.limit_conc, b[2]), now)

    def set_fairness(self, debt: float, effective_weight: float, fair_share: float) -> None:
        """The fairness figures an allocator tick computed elsewhere (the pipeline) for this entitlement."""
        self.debt = debt
        self.effective_weight = effective_weight
        self.fair_share = fair_share

    # -- read-only views -----------------------------------------------------------------------

    def limits(self) -> Triple:
        """The current limits: (throughput, kv, concurrency)."""
        return (self.limit_tp, self.limit_kv, self.limit_conc)

    def in_flight(self) -> tuple[float, float]:
        """Held now: (kv, concurrency)."""
        return (self.kv_in_flight, self.seqs_in_flight)

    def remaining(self) -> Triple:
        """What is left of each limit, never negative: the throughput bucket's level (as of its last
        refill; this reads, it does not refill), and the kv and concurrency not held."""
        return (max(0.0, self.bucket.level), max(0.0, self.limit_kv - self.kv_in_flight),
                max(0.0, self.limit_conc - self.seqs_in_flight))

    def held_demand(self, span: float) -> tuple[float, float]:
        """Demand on the held dimensions over the tick: (kv, sequences).

        The peak held, plus what the requests turned away or queued on their first attempt would have
        held, by Little's law: their rate over the tick times how long a request holds what it holds
        (the mean over the tick's releases; the last such mean when none ended). Without that second
        term a tenant whose limit is full shows demand of what it holds, and can grow its limit by one
        request per tick however far below its fair share it is. The pipeline counts held demand the
        same way (``streams.windows``).
        """
        if self.hold_n:
            self.hold_s = self.hold_sum / self.hold_n
        wait = self.hold_s / span
        return (max(self.demand_kv_peak, self.kv_in_flight) + self.unmet_kv * wait,
                max(self.demand_conc_peak, self.seqs_in_flight) + self.unmet_seqs * wait)

    def reset_accumulators(self, now: float) -> None:
        self.demand_tp = 0.0
        self.demand_kv_peak = self.kv_in_flight
        self.demand_conc_peak = self.seqs_in_flight
        self.unmet_kv = 0.0
        self.unmet_seqs = 0.0
        self.hold_sum = 0.0
        self.hold_n = 0
        self.used_tp = 0.0
        self.kv_seconds = 0.0
        self.seq_seconds = 0.0
        self.last_change = now

    def integrate(self, now: float) -> None:
        """Accumulate KV- and sequence-seconds up to ``now`` (called before every change)."""
        dt = now - self.last_change
        if dt > 0:
            self.kv_seconds += self.kv_in_flight * dt
            self.seq_seconds += self.seqs_in_flight * dt
            self.last_change = now

    def set_limits(self, throughput: float, kv: float, concurrency: float, now: float, *,
                   share: bool = False) -> None:
        """Apply new limits; a guaranteed entitlement never drops below its guarantee.

        ``share``: these are this admitter's share of limits split across admitters (the pipeline's),
        not the whole limit; the buckets then never grant a raise at once (``TokenBucket.reconfigure``).

        NaN or infinity (which no allocator or state record should ever pass) falls back to the
        guarantee too: an infinite limit would make the bucket infinitely deep and never refuse.
        """
        g = self.guarantee
        self.limit_tp = throughput if g[0] < throughput < _INF else g[0]
        self.limit_kv = kv if g[1] < kv < _INF else g[1]
        self.limit_conc = concurrency if g[2] < concurrency < _INF else g[2]
        self.bucket.reconfigure(self.limit_tp, self.limit_tp * self.window, now, share=share)
        if self.g_bucket is not None:
            # Rate: this admitter's share of the guarantee. Depth: the whole guarantee's burst window, so
            # a burst that happens to land on one admitter is not refused for how the tenant's traffic
            # split across admitters last tick. The rates still sum to the guarantee; what the split
            # can let through on top is at most one burst window per extra admitter, once.
            full = self.spec.spec.guarantee.throughput
            self.g_bucket.reconfigure(g[0], (full if full > g[0] else g[0]) * self.window, now, share=share)


class PoolLive:
    """A pool's capacity and every reservation held in it, with spot kept newest-last for preemption."""

    __slots__ = (
        "cap_conc",
        "cap_kv",
        "cap_tp",
        "entitlements",
        "kv_in_flight",
        "name",
        "queue_max_wait",
        "replicas",
        "reservations",
        "seqs_in_flight",
        "spec",
        "spot",
        "spot_conc",
        "spot_kv",
        "spot_kv_in_flight",
        "spot_max_wait",
        "spot_seqs",
        "tick_seconds",
        "unused_g_conc",
        "unused_g_kv",
        "w_in",
        "w_out",
    )

    def __init__(self, pool: TokenPool, entitlements: list[Entitlement], now: float,
                 replicas: int | None = None) -> None:
        self.name = pool.name
        self._take_spec(pool)
        self.kv_in_flight = 0.0
        self.seqs_in_flight = 0.0
        self.spot_kv_in_flight = 0.0
        self.spot_seqs = 0.0
        # Guarantees not in use, reserved against elastic and burst on the held dimensions.
        self.unused_g_kv = 0.0
        self.unused_g_conc = 0.0
        self.reservations: dict[str, Reservation] = {}
        self.spot: dict[str, Reservation] = {}
        self.entitlements: dict[str, EntitlementLive] = {}
        self.set_replicas(pool.spec.replicas.start if replicas is None else replicas)
        for ent in entitlements:
            self.add_entitlement(ent, now)

    def _take_spec(self, pool: TokenPool) -> None:
        spec = pool.spec
        self.spec = pool
        self.w_in = spec.token_weights.input
        self.w_out = spec.token_weights.output
        self.queue_max_wait = spec.queue.max_wait_seconds
        self.spot_max_wait = spec.queue.spot_max_wait_seconds
        self.tick_seconds = spec.tick_seconds

    def apply_spec(self, pool: TokenPool) -> None:
        """A changed pool spec, applied in place: reservations stay, the capacity follows the new spec
        at the current replica count."""
        self._take_spec(pool)
        self.set_replicas(self.replicas)

    def share_replicas(self, replicas: int, admitters: int) -> None:
        """``replicas`` ready, this admitter filling its even part of their capacity among ``admitters``."""
        self.replicas = replicas
        cap = self.spec.spec.capacity(replicas)
        self.set_capacity(*(c / admitters for c in cap))

    def set_replicas(self, replicas: int) -> None:
        self.replicas = replicas
        self.set_capacity(*self.spec.spec.capacity(replicas))

    def set_capacity(self, throughput: float, kv: float, concurrency: float) -> None:
        """Capacity this admitter may fill; with several admitters, the pipeline gives each its share."""
        self.cap_tp, self.cap_kv, self.cap_conc = throughput, kv, concurrency
        keep = 1.0 - self.spec.spec.reclaim_buffer
        self.spot_kv = kv * keep
        self.spot_conc = concurrency * keep

    def add_entitlement(self, ent: Entitlement, now: float) -> EntitlementLive:
        live = self.entitlements.get(ent.name)
        if live is None:
            live = EntitlementLive(ent, now)
            self.entitlements[ent.name] = live
            self.recount_unused_guarantees()
        return live

    def put_entitlement(self, ent: Entitlement, now: float) -> EntitlementLive:
        """Add an entitlement, or apply its changed spec in place (``EntitlementLive.apply_spec``)."""
        live = self.entitlements.get(ent.name)
        if live is None:
            return self.add_entitlement(ent, now)
        live.apply_spec(ent, now)
        self.recount_unused_guarantees()
        return live

    def remove_entitlement(self, name: str) -> bool:
        """Forget an entitlement (its reservations still release); False if it was not here."""
        if self.entitlements.pop(name, None) is None:
            return False
        self.recount_unused_guarantees()
        return True

    def apply_share(self, name: str, share: Triple, total: Triple, admitters: int, now: float) -> bool:
        """This admitter's ``share`` of an entitlement's limits, out of the pipeline's ``total``.

        The guarantee is scaled by the same ratio, per dimension (``1 / admitters`` where the total
        is 0), and set first, so the limits never go below this admitter's part of the guarantee.
        On KV and concurrency that part is at least ``1 / admitters`` of the guarantee: a share
        follows demand a tick or two late (the pipeline holds a raise back a tick, and lists a new
        admitter from the tick after its first event), and guaranteed work moving onto this
        admitter must not be refused meanwhile. The held dimensions bound what is in flight, not a
        rate, so this adds nothing to the throughput limit; throughput within the guarantee comes
        from the guarantee bucket, whose depth is the whole guarantee's burst window at every
        admitter. False if the entitlement is not in this pool.
        """
        ent = self.entitlements.get(name)
        if ent is None:
            return False
        g = ent.spec.spec.guarantee.as_tuple()
        fallback = 1.0 / admitters
        guarantee = (g[0] * _ratio(share[0], total[0], fallback),
                     g[1] * max(fallback, _ratio(share[1], total[1], fallback)),
                     g[2] * max(fallback, _ratio(share[2], total[2], fallback)))
        self.set_guarantee_share(name, guarantee, now, share=True)
        ent.set_limits(*share, now, share=True)
        return True

    def set_guarantee_share(self, name: str, guarantee: Triple, now: float, *, share: bool = True) -> None:
        """This admitter's share of an entitlement's guarantee (the pipeline splits it across admitters)."""
        ent = self.entitlements[name]
        ent.guarantee = guarantee
        ent.set_limits(ent.limit_tp, ent.limit_kv, ent.limit_conc, now, share=share)
        self.recount_unused_guarantees()

    def recount_unused_guarantees(self) -> None:
        """Full recount, for the rare changes (entitlements added, guarantee shares moved)."""
        kv = conc = 0.0
        for e in self.entitlements.values():
            if e.rank == GUARANTEED:
                kv += max(0.0, e.guarantee[1] - e.kv_in_flight)
                conc += max(0.0, e.guarantee[2] - e.seqs_in_flight)
        self.unused_g_kv, self.unused_g_conc = kv, conc

    def _track_guarantee(self, ent: EntitlementLive, kv_delta: float, seq_delta: float) -> None:
        g_kv, g_conc = ent.guarantee[1], ent.guarantee[2]
        kv_before, seq_before = ent.kv_in_flight, ent.seqs_in_flight
        self.unused_g_kv += max(0.0, g_kv - kv_before - kv_delta) - max(0.0, g_kv - kv_before)
        self.unused_g_conc += max(0.0, g_conc - seq_before - seq_delta) - max(0.0, g_conc - seq_before)

    def cost(self, prompt_tokens: int, max_tokens: int, ent: EntitlementLive) -> RequestCost:
        return RequestCost(prompt_tokens, max_tokens, ent.outputs.estimate(max_tokens), self.w_in, self.w_out)

    def hold(self, request_id: str, ent: EntitlementLive, cost: RequestCost, now: float) -> Reservation:
        res = Reservation(request_id, ent, cost, now)
        ent.bucket.take(cost.throughput)
        if ent.g_bucket is not None:
            ent.g_bucket.take(cost.throughput)
        ent.integrate(now)
        if ent.rank == GUARANTEED:
            self._track_guarantee(ent, cost.kv, 1.0)
        ent.kv_in_flight += cost.kv
        ent.seqs_in_flight += 1.0
        ent.used_tp += cost.throughput
        if ent.kv_in_flight > ent.demand_kv_peak:
            ent.demand_kv_peak = ent.kv_in_flight
        if ent.seqs_in_flight > ent.demand_conc_peak:
            ent.demand_conc_peak = ent.seqs_in_flight
        self.kv_in_flight += cost.kv
        self.seqs_in_flight += 1.0
        self.reservations[request_id] = res
        if ent.rank == SPOT:
            self.spot[request_id] = res
            self.spot_kv_in_flight += cost.kv
            self.spot_seqs += 1.0
        return res

    def release(self, request_id: str, now: float, prompt_tokens: int | None = None,
                output_tokens: int | None = None) -> Reservation | None:
        """End a reservation, charging the real usage when known (reserve-then-correct).

        Unknown usage (a cancel before the backend said anything) keeps the reserved charge, which
        errs on the side of the limit. Returns None if the request holds nothing (already ended).
        """
        res = self.reservations.pop(request_id, None)
        if res is None:
            return None
        ent = res.entitlement
        if prompt_tokens is not None or output_tokens is not None:
            p = res.prompt_tokens if prompt_tokens is None else prompt_tokens
            o = 0 if output_tokens is None else output_tokens
            refund = res.throughput - (self.w_in * p + self.w_out * o)
            ent.bucket.give_back(refund)
            if ent.g_bucket is not None:
                ent.g_bucket.give_back(refund)
            ent.used_tp -= refund
            if output_tokens is not None:
                ent.outputs.observe(output_tokens)
        ent.integrate(now)
        ent.hold_sum += max(0.0, now - res.admitted_at)
        ent.hold_n += 1
        if ent.rank == GUARANTEED:
            self._track_guarantee(ent, -res.kv, -1.0)
        ent.kv_in_flight -= res.kv
        ent.seqs_in_flight -= 1.0
        self.kv_in_flight -= res.kv
        self.seqs_in_flight -= 1.0
        if self.spot.pop(request_id, None) is not None:
            self.spot_kv_in_flight -= res.kv
            self.spot_seqs -= 1.0
        return res

    def newest_spot(self) -> Iterator[Reservation]:
        return reversed(self.spot.values())
