"""One region's side of the global loop: when to report, when to split, what share to enforce.

Pure (no I/O, the clock passed in), so the streams service (``streams.regional``) and the simulator
(``sim.experiments.regions``) run the same rule. ``capacity.regions.split_global`` decides the split;
this module decides *which* reports it is computed from and how a region moves to its new share
without the regions together ever enforcing more than the global figures.

The protocol, per global entitlement, with wall-clock epochs of ``epoch_s`` (regions' clocks synced):

1. **Report.** At the start of each epoch ``e`` a region publishes its report of ``e``: its demand,
   usage and capacity, a heartbeat, and the shares it enforces as it publishes.
2. **Split.** A region computes the split of epoch ``e`` only while ``e`` is its own latest report,
   and only from the reports of ``e`` of every region it does not consider lost. Every region then
   computes the same split from the same reports (the rule is deterministic), so the split's shares
   sum to at most the global figures.
3. **Move.** From the split and the reports of ``e`` every region computes the same *targets*: a
   region above its share of the split lowers to it; a region below it raises by its part of the room
   no live region reported holding (``global - the sum of the reported shares``: a lost region's
   share, what the last lowers freed), in proportion to how far below the split it is. Its new share
   is then ``min(its target, global - the sum over live peers of max(what the peer reported enforcing
   in its report of e, the peer's target))``, per dimension, rounded down to ``quantum`` of the global
   figure. A lower share is therefore immediate, and the room it frees is raised into one epoch
   later (once the region has reported it); a raise into room already free is granted in full at
   once. Why this never overshoots: a region changes its share only through the targets of its
   latest epoch ``e``; each peer is then either still at what it reported for ``e`` or has moved
   through the same targets to at most its own, and the cap counts the larger of the two for every
   peer, so any mix of moved and unmoved regions stays within the global figure. No peer can be
   further on, because the split of ``e + 1`` needs this region's report of ``e + 1``, which comes
   after. (Capping by the reported shares alone is not enough with three regions or more: two that
   raise in the same epoch while a third has not lowered yet overshoot; the property test with
   per-link delays found it. Raising straight to the split under that cap is safe but slow: each
   raiser must leave room for *every* peer still lowering, so with several regions shifting at once
   each raise falls short by the sum of the peers' drops, often below the raiser's own reported share;
   after a loss the survivors took up to 11 epochs to take the lost region's guarantee.)
   **Hysteresis.** If every live region's reported share is within ``hysteresis`` of the global
   figure of its share of the split, nobody lowers: the reported shares stand (they were all enforced
   at once, so they sum within the global figures), plus their part of any free room. Shares move
   only when demand moved, not with its noise.
   Under demand that keeps moving, the shares add up to the whole figure only at an epoch without
   lowers: what a region lowers is in transit for one epoch (the price of never overshooting).
4. **Cut off.** While some peer's report of ``e`` is missing (its link stopped, or it is slow), the
   region cannot compute ``e``: it keeps the share it enforces, never more. When the link returns,
   the next epoch with every report converges the shares again (a raise one epoch after the lower).
5. **Lost.** A peer whose newest heartbeat is more than ``lost_after_s`` old is lost: the split runs
   over the live regions, and the room it held is free, so its guarantee share moves to the others.
   A peer never heard from is not lost until ``lost_after_s`` after this loop started (it may simply
   be starting too). Two regions cannot tell a peer that died from a link that stopped: a partition
   longer than ``lost_after_s`` is taken for a loss on both sides, and may overshoot by the share the
   other side held. Choose ``lost_after_s`` above the partitions to ride out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from capacity.regions import NOTHING, RegionSummary, split_global
from schemas.specs import Triple

Verdict = Literal["applied", "duplicate", "stale", "foreign"]
Status = Literal["waiting", "split", "holding"]
KEEP_EPOCHS = 8  # reports kept per region: the split of an epoch needs its reports only briefly


@dataclass(frozen=True)
class GlobalTerms:
    """What a global entitlement promises, and its split policy (``schemas.regions``)."""

    regions: tuple[str, ...]
    guarantee: Triple
    burst: Triple
    epoch_s: float = 2.0
    lost_after_s: float = 120.0
    floor_fraction: float = 0.1
    quantum: float = 0.005
    hysteresis: float = 0.02

    def __post_init__(self) -> None:
        for name in ("epoch_s", "lost_after_s"):
            v = getattr(self, name)
            if not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be finite and > 0, got {v!r}")
        if not 0 <= self.quantum <= 0.1:
            raise ValueError(f"quantum must lie in [0, 0.1], got {self.quantum!r}")
        if not 0 <= self.hysteresis <= 0.1:
            raise ValueError(f"hysteresis must lie in [0, 0.1], got {self.hysteresis!r}")
        if len(set(self.regions)) != len(self.regions) or not self.regions:
            raise ValueError("regions must be a non-empty list of distinct names")


@dataclass(frozen=True)
class Report:
    """One region's report of one epoch (``schemas.records.RegionReport`` as plain numbers)."""

    region: str
    epoch: int
    heartbeat: float
    demand: Triple
    capacity: Triple
    usage: Triple = NOTHING
    enforced_burst: Triple = NOTHING
    enforced_guarantee: Triple = NOTHING


@dataclass(frozen=True)
class Enforced:
    """The share a region enforces, and why.

    ``status``: ``split`` when this step moved to the split of ``epoch``; ``holding`` when a live peer's
    report of the region's latest epoch is missing (``waiting_for``), so nothing changed; ``waiting``
    before the first report. ``lost`` are the peers taken for lost; ``shortfall`` the part of the global
    guarantee the live regions could not hold at the last split.
    """

    burst: Triple
    guarantee: Triple
    status: Status
    epoch: int | None = None
    lost: tuple[str, ...] = ()
    waiting_for: tuple[str, ...] = ()
    shortfall: Triple = NOTHING


def _floor_to(x: float, q: float) -> float:
    return math.floor(x / q) * q if q > 0 else x


def _higher(a: Triple, b: Triple) -> Triple:
    return (max(a[0], b[0]), max(a[1], b[1]), max(a[2], b[2]))


def _lower(a: Triple, b: Triple) -> Triple:
    return (min(a[0], b[0]), min(a[1], b[1]), min(a[2], b[2]))


@dataclass
class RegionalLoop:
    """One region's loop for one global entitlement.

    ``enforced`` starts at what the region already enforces (after a restart: the regional Entitlement
    it wrote before), else nothing. ``started`` is when the loop began, for peers never heard from.
    """

    region: str
    terms: GlobalTerms
    started: float
    burst: Triple = NOTHING
    guarantee: Triple = NOTHING
    reports: dict[str, dict[int, Report]] = field(default_factory=dict)
    heartbeats: dict[str, float] = field(default_factory=dict)
    split_epoch: int | None = None
    last: Enforced | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.region not in self.terms.regions:
            raise ValueError(f"region {self.region!r} is not one of the entitlement's regions")

    def epoch_at(self, now: float) -> int:
        return math.floor(now / self.terms.epoch_s)

    def own_epoch(self) -> int | None:
        mine = self.reports.get(self.region)
        return max(mine) if mine else None

    def observe(self, report: Report) -> Verdict:
        """Take a report (a peer's, mirrored, or this region's own); replays are counted, not applied."""
        verdict = self._observe(report)
        self.counts[verdict] = self.counts.get(verdict, 0) + 1
        return verdict

    def _observe(self, report: Report) -> Verdict:
        if report.region not in self.terms.regions:
            return "foreign"
        kept = self.reports.setdefault(report.region, {})
        if report.epoch in kept:
            return "duplicate"
        if kept and report.epoch < max(kept):
            return "stale"  # out of order: an older epoch than one already applied
        kept[report.epoch] = report
        for old in sorted(kept)[:-KEEP_EPOCHS]:
            del kept[old]
        self.heartbeats[report.region] = max(report.heartbeat, self.heartbeats.get(report.region, report.heartbeat))
        return "applied"

    def own_report(self, now: float, demand: Triple, capacity: Triple, usage: Triple = NOTHING) -> Report | None:
        """This region's report of the current epoch, once per epoch (None if already made)."""
        epoch = self.epoch_at(now)
        latest = self.own_epoch()
        if latest is not None and epoch <= latest:
            return None
        report = Report(self.region, epoch, now, demand, capacity, usage, self.burst, self.guarantee)
        self.observe(report)
        return report

    def lost(self, now: float) -> tuple[str, ...]:
        after = self.terms.lost_after_s
        out = []
        for r in self.terms.regions:
            if r == self.region:
                continue
            heard = self.heartbeats.get(r)
            if (heard is None and now - self.started > after) or (heard is not None and now - heard > after):
                out.append(r)
        return tuple(out)

    def step(self, now: float) -> Enforced:
        """Move to the split of this region's latest epoch if every live peer's report of it is here."""
        epoch = self.own_epoch()
        lost = self.lost(now)
        if epoch is None:
            return self._keep("waiting", lost, ())
        live = [r for r in self.terms.regions if r not in lost]
        missing = tuple(r for r in live if epoch not in self.reports.get(r, {}))
        if missing:
            return self._keep("holding", lost, missing)
        if self.split_epoch == epoch:
            return self._keep("split", lost, ())
        of_epoch = [self.reports[r][epoch] for r in sorted(live)]
        t = epoch * self.terms.epoch_s  # the same for every region: the split depends on the reports only
        split = split_global(
            self.terms.guarantee, self.terms.burst,
            [RegionSummary(r.region, r.demand, r.capacity, t) for r in of_epoch], t,
            lost_after_s=1.0, floor_fraction=self.terms.floor_fraction)
        peers = [r for r in of_epoch if r.region != self.region]
        bursts = self._target(split.burst, {r.region: r.enforced_burst for r in of_epoch}, self.terms.burst)
        guarantees = self._target(split.guarantee, {r.region: r.enforced_guarantee for r in of_epoch},
                                  self.terms.guarantee)
        burst = self._moved(bursts[self.region], self.terms.burst,
                            [_higher(p.enforced_burst, bursts[p.region]) for p in peers])
        guarantee = _lower(self._moved(guarantees[self.region], self.terms.guarantee,
                                       [_higher(p.enforced_guarantee, guarantees[p.region]) for p in peers]),
                           burst)
        self.burst, self.guarantee, self.split_epoch = burst, guarantee, epoch
        self.last = Enforced(burst, guarantee, "split", epoch, lost, (), split.shortfall)
        return self.last

    def _target(self, split: Mapping[str, Triple], reported: Mapping[str, Triple],
                total: Triple) -> Mapping[str, Triple]:
        """The shares every live region moves towards this epoch, from the split and the reported shares.

        Every region computes it from the same reports, so they agree (all the move rule needs for its
        safety). Per dimension, with ``free`` the room no live region reported holding
        (``total - sum(reported)``: a lost region's share, what the last lowers freed, the floors' rest)
        and each region's ``deficit`` below its split (``max(0, split - reported)``):

        * A region above its split lowers to it (at once; its room is usable by the others one epoch
          later, once it has reported the lower share).
        * A region below its split raises by its part of ``min(free, sum(deficits))``, in proportion to
          its deficit. That room is free *now*, so the move rule grants every such raise in full. (Raising
          straight to the split instead, each raiser had to leave room for *every* peer still lowering,
          so with several regions shifting at once each raise fell short by the sum of the peers' drops,
          often below the raiser's own reported share: after a loss the survivors took up to 11 epochs
          to take the lost region's guarantee, and one entitlement never did.)
        * **Hysteresis.** If every region's reported share is within ``hysteresis`` of the global figure
          of its split, nobody lowers: the reported shares stand, plus their part of the free room, so
          demand noise does not move shares every epoch, and room left free still gets taken.
        """
        names = sorted(reported)
        out: dict[str, list[float]] = {r: [0.0, 0.0, 0.0] for r in names}
        stand = all(abs(reported[r][d] - split[r][d]) <= self.terms.hysteresis * total[d]
                    for r in names for d in range(3))
        for d in range(3):
            rep = [reported[r][d] for r in names]
            sp = [split[r][d] for r in names]
            deficit = [max(0.0, s - x) for s, x in zip(sp, rep, strict=True)]
            need = math.fsum(deficit)
            fill = min(max(0.0, total[d] - math.fsum(rep)), need)
            for i, r in enumerate(names):
                if sp[i] >= rep[i] or stand:
                    out[r][d] = rep[i] + (fill * deficit[i] / need if need > 0 else 0.0)
                else:
                    out[r][d] = sp[i]
        return {r: (v[0], v[1], v[2]) for r, v in out.items()}

    def _moved(self, share: Triple, total: Triple, peers: Iterable[Triple]) -> Triple:
        held = list(peers)
        out = []
        for d in range(3):
            room = total[d] - math.fsum(p[d] for p in held)
            x = max(0.0, min(share[d], room))
            out.append(min(_floor_to(x, self.terms.quantum * total[d]), x))
        return (out[0], out[1], out[2])

    def _keep(self, status: Status, lost: tuple[str, ...], waiting_for: tuple[str, ...]) -> Enforced:
        shortfall = self.last.shortfall if self.last is not None else NOTHING
        return Enforced(self.burst, self.guarantee, status, self.split_epoch, lost, waiting_for, shortfall)
