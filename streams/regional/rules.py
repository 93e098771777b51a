"""The pure parts of the global loop service: no Kafka, no clock (``now`` is passed in).

- ``capacity_for``: what a region's pool can offer one global entitlement (its capacity at max replicas
  minus the guarantees of the pool's other guaranteed entitlements, clamped at 0);
- ``placement``: the region's one pool of the model, or why the entitlement is skipped;
- ``terms_of``: a GlobalEntitlement's figures and split policy as ``capacity.global_loop.GlobalTerms``;
- ``starting_shares``: the shares a (re)started loop starts from, those of the regional share it wrote;
- ``record_of`` / ``report_of``: ``capacity.global_loop.Report`` to and from ``schemas.records.RegionReport``;
- ``check_report``: a decoded record's key, id and region against the topic it came from;
- ``desired_share`` / ``needs_write``: the regional Entitlement to hold, and whether the config topic
  must be written (only when the document differs: never when the shares are unchanged);
- ``stale_shares``: regional shares of this region whose GlobalEntitlement is gone or no longer lists it;
- ``shown_status``: the status for metrics and log lines (``split``/``holding``/``waiting``), stable across
  the brief hold at every epoch's start, so nothing is logged per tick or per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Literal

from capacity.global_loop import Enforced, GlobalTerms, Report
from capacity.regions import NOTHING
from schemas.loader import PlatformConfig
from schemas.records import Amounts, RegionReport
from schemas.regions import GLOBAL_LABEL, REGION_LABEL, GlobalEntitlement, is_regional_share, pool_in_region
from schemas.regions import regional_entitlement as _regional_entitlement
from schemas.specs import Entitlement, Manifest, Resources, Tier, TokenPool, Triple
from schemas.topics import config_value

Shown = Literal["waiting", "split", "holding"]
STATUSES: tuple[Shown, ...] = ("waiting", "split", "holding")


def _lower(a: Triple, b: Triple) -> Triple:
    return (min(a[0], b[0]), min(a[1], b[1]), min(a[2], b[2]))


def capacity_for(pool: TokenPool, entitlements: Iterable[Entitlement], name: str) -> Triple:
    """``pool``'s capacity at ``replicas.max`` minus the guarantees of its guaranteed entitlements other than
    ``name`` (the regional share itself), per dimension, clamped at 0."""
    cap = pool.spec.capacity(pool.spec.replicas.max)
    others = [e.spec.guarantee.as_tuple() for e in sorted(entitlements, key=lambda e: e.name)
              if e.spec.pool == pool.name and e.name != name and e.spec.tier is Tier.GUARANTEED]
    out = [max(0.0, cap[d] - math.fsum(g[d] for g in others)) for d in range(3)]
    return (out[0], out[1], out[2])


def placement(platform: PlatformConfig, glob: GlobalEntitlement, region: str) -> tuple[TokenPool | None, str | None]:
    """The region's one pool of the model, else ``(None, why the entitlement is skipped)``."""
    held = platform.entitlements.get(glob.name)
    if held is not None and not is_regional_share(held):
        return None, (f"an Entitlement not written by the global loop is also named '{glob.name}'; "
                      "rename one of them")
    pools = pool_in_region(platform.pools, glob.spec.model, region)
    if len(pools) != 1:
        found = ", ".join(f"'{p.name}'" for p in pools) or "none"
        return None, f"region '{region}' must have exactly one pool of model '{glob.spec.model}', found {found}"
    return pools[0], None


def terms_of(glob: GlobalEntitlement) -> GlobalTerms:
    spec, split = glob.spec, glob.spec.split
    return GlobalTerms(regions=tuple(spec.regions), guarantee=spec.guarantee.as_tuple(), burst=spec.burst.as_tuple(),
                       epoch_s=split.epoch_seconds, lost_after_s=split.lost_after_seconds,
                       floor_fraction=split.floor_fraction, quantum=split.quantum)


def starting_shares(held: Manifest | None, glob: GlobalEntitlement, region: str) -> tuple[Triple, Triple]:
    """(burst, guarantee) a loop starts from: those of the regional share of ``glob`` for ``region`` the
    config holds (so a restarted loop neither drops to zero nor jumps up), within the global figures;
    nothing for a new region (or a document that is not that share)."""
    if not isinstance(held, Entitlement) or not is_regional_share(held):
        return NOTHING, NOTHING
    labels = held.metadata.labels
    if labels.get(GLOBAL_LABEL) != glob.name or labels.get(REGION_LABEL) != region:
        return NOTHING, NOTHING
    return within_terms(held.spec.burst.as_tuple(), held.spec.guarantee.as_tuple(), terms_of(glob))


def within_terms(burst: Triple, guarantee: Triple, terms: GlobalTerms) -> tuple[Triple, Triple]:
    """Shares lowered to the global figures (and the guarantee to the burst share): what a loop may start
    from, after a restart or after its global entitlement changed."""
    b = _lower(burst, terms.burst)
    return b, _lower(_lower(guarantee, terms.guarantee), b)


def record_of(entitlement: str, report: Report) -> RegionReport:
    return RegionReport(
        id=RegionReport.id_of(report.region, entitlement, report.epoch), entitlement=entitlement,
        region=report.region, epoch=report.epoch, ts=report.heartbeat, demand=Amounts.from_tuple(report.demand),
        usage=Amounts.from_tuple(report.usage), capacity=Amounts.from_tuple(report.capacity),
        enforced_burst=Amounts.from_tuple(report.enforced_burst),
        enforced_guarantee=Amounts.from_tuple(report.enforced_guarantee))


def report_of(record: RegionReport) -> Report:
    return Report(region=record.region, epoch=record.epoch, heartbeat=record.ts, demand=record.demand.as_tuple(),
                  capacity=record.capacity.as_tuple(), usage=record.usage.as_tuple(),
                  enforced_burst=record.enforced_burst.as_tuple(),
                  enforced_guarantee=record.enforced_guarantee.as_tuple())


def check_report(record: RegionReport, key: bytes | None, region: str | None) -> str | None:
    """Why a decoded report cannot be used (a BadRecords reason), else None. ``region``: the only region
    the topic may carry (a region's own topic holds only its own reports, so does each mirror of it)."""
    want_key = RegionReport.key_of(record.entitlement, record.region)
    if key is None or key.decode("utf-8", "replace") != want_key:
        return "key_mismatch"
    if record.id != RegionReport.id_of(record.region, record.entitlement, record.epoch):
        return "id_mismatch"
    if region is not None and record.region != region:
        return "wrong_region"
    return None


def desired_share(glob: GlobalEntitlement, pool: TokenPool, region: str, burst: Triple,
                  guarantee: Triple) -> Entitlement:
    """The regional Entitlement for the shares the loop enforces."""
    return _regional_entitlement(glob, pool.name, region, Resources.from_tuple(burst), Resources.from_tuple(guarantee))


def needs_write(desired: Entitlement, held: Manifest | None) -> bool:
    """Whether the config topic must get ``desired``: it holds nothing there, or a different document (other
    shares, or the global entitlement's keys, tier or pool changed). Compared as the topic's bytes."""
    return held is None or config_value(held) != config_value(desired)


def stale_shares(platform: PlatformConfig, region: str) -> list[str]:
    """Names of the regional shares of ``region`` in the config whose GlobalEntitlement is gone or no longer
    lists ``region``: the loop tombstones them."""
    out = []
    for name, ent in sorted(platform.entitlements.items()):
        labels = ent.metadata.labels
        if not is_regional_share(ent) or labels.get(REGION_LABEL) != region:
            continue
        glob = platform.global_entitlements.get(labels[GLOBAL_LABEL])
        if glob is None or glob.name != name or region not in glob.spec.regions:
            out.append(name)
    return out


def relevant(globs: Mapping[str, GlobalEntitlement], region: str) -> dict[str, GlobalEntitlement]:
    """The global entitlements that list ``region``."""
    return {name: g for name, g in sorted(globs.items()) if region in g.spec.regions}


def peers_of(globs: Iterable[GlobalEntitlement], region: str) -> list[str]:
    """Every other region named by the global entitlements: whose mirrored summaries to read."""
    return sorted({r for g in globs for r in g.spec.regions if r != region})


def tick_seconds(globs: Iterable[GlobalEntitlement], minimum: float = 0.1) -> float:
    """An eighth of the shortest epoch, at least ``minimum`` (a quarter second with nothing loaded)."""
    epochs = [g.spec.split.epoch_seconds for g in globs]
    return max(minimum, min(epochs) / 8) if epochs else max(minimum, 0.25)


def shown_status(enforced: Enforced, own_epoch: int | None) -> Shown:
    """``split`` while the loop follows the splits, also during the brief hold at each epoch's start (the
    peers' reports of a new epoch are not in yet); ``holding`` once it has missed a whole epoch (a peer cut
    off or slow), or has never split; ``waiting`` before its first report."""
    if enforced.status == "holding" and enforced.epoch is not None and own_epoch is not None \
            and own_epoch - enforced.epoch <= 1:
        return "split"
    return enforced.status
