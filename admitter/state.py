"""The admitter's shared runtime state, built once per app from settings and the platform config.

Routes (the proxy endpoint, the admin API, ``/v1/usage``, ``/metrics``) all read this one object;
the entitlement update path (admin PUT) is here too so that the config, the key ring and the live
pool state change together.
"""

from __future__ import annotations

import itertools
import os
import time

import httpx

from admitter.auth import AdminKey, KeyConflict, KeyRing
from admitter.clients import make_client
from admitter.events import EventSink, InMemorySink
from admitter.gate import PoolGate
from admitter.limits import LimitSource, LocalAllocator
from admitter.metrics import AdmitterMetrics
from admitter.proxy import ReplicaSet, Upstream
from admitter.settings import AdmitterSettings
from admitter.usage import UsageBook
from capacity.bucket import TokenBucket
from capacity.live import GUARANTEED, EntitlementLive, PoolLive
from schemas.loader import PlatformConfig, provisioning_problems
from schemas.specs import TIER_RANK, Entitlement


class EntitlementRejected(Exception):
    """An entitlement update that cannot be applied; ``status`` is the HTTP answer (409 or 422)."""

    def __init__(self, status: int, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.status = status
        self.problems = problems


class RequestIds:
    """Unique, cheap request ids: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = "req-" + os.urandom(6).hex() + "-"
        self._n = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._n):x}"


class AdmitterState:
    def __init__(self, settings: AdmitterSettings, config: PlatformConfig, sink: EventSink | None = None,
                 limits: LimitSource | None = None) -> None:
        self.settings = settings
        self.config = config
        self.keyring = KeyRing(config.entitlements.values())
        self.admin_key = AdminKey(settings.admin_key_sha256)
        self.sink: EventSink = sink if sink is not None else InMemorySink()
        self.limits: LimitSource = limits if limits is not None else LocalAllocator()
        self.usage = UsageBook()
        self.ids = RequestIds()
        now = time.monotonic()
        self.gates: dict[str, PoolGate] = {
            name: PoolGate(PoolLive(pool, config.entitlements_of(name), now), max_queue=settings.max_queue)
            for name, pool in config.pools.items()
        }
        replica_sets = {
            name: ReplicaSet(settings.backends.get(name, pool.spec.backends), settings.backend_cooldown_seconds)
            for name, pool in config.pools.items()
        }
        timeout = httpx.Timeout(connect=settings.connect_timeout, read=settings.read_timeout,
                                write=settings.write_timeout, pool=settings.connect_timeout)
        client = make_client(settings.upstream_client, timeout, settings.max_idle_connections_per_replica,
                             settings.upstream_keepalive_seconds)
        self.upstream = Upstream(replica_sets, client)
        self.metrics = AdmitterMetrics(lambda: self.gates, lambda: self.upstream.replicas)

    async def start(self) -> None:
        await self.upstream.start()
        await self.limits.start(self.gates)

    async def stop(self) -> None:
        await self.limits.stop()
        await self.upstream.stop()
        await self.sink.close()

    def entitlement_live(self, name: str) -> tuple[PoolGate, EntitlementLive] | None:
        ent = self.config.entitlements.get(name)
        if ent is None:
            return None
        gate = self.gates.get(ent.spec.pool)
        if gate is None:
            return None
        return gate, gate.live.entitlements[name]

    def tenant_entitlements(self, tenant: str) -> list[Entitlement]:
        return sorted((e for e in self.config.entitlements.values() if e.spec.tenant == tenant), key=lambda e: e.name)

    def apply_entitlement(self, ent: Entitlement) -> bool:
        """Create or update an entitlement in the config, the key ring and the live pool; True if created.

        Refused with 409 when its guarantee could not be provisioned at the pool's max replicas, when
        its keys clash with another tenant's, or when it would move pools with requests in flight.
        """
        pool = self.config.pools.get(ent.spec.pool)
        if pool is None:
            known = ", ".join(sorted(self.config.pools)) or "none"
            raise EntitlementRejected(422, [f"spec.pool: unknown pool '{ent.spec.pool}' (known: {known})"])
        previous = self.config.entitlements.get(ent.name)
        others = [e for e in self.config.entitlements_of(pool.name) if e.name != ent.name]
        # The loader names whichever entitlement tips a dimension over (in name order); here the
        # existing ones were provisionable, so any new problem is this entitlement's doing.
        after = provisioning_problems(pool, [*others, ent])
        if len(after) > len(provisioning_problems(pool, others)):
            raise EntitlementRejected(409, list(dict.fromkeys(f"{fld}: {msg}" for _, fld, msg in after)))
        entitlements = dict(self.config.entitlements)
        entitlements[ent.name] = ent
        try:
            owners = KeyRing.build(entitlements.values())
        except KeyConflict as exc:
            raise EntitlementRejected(409, [f"spec.apiKeys: {exc}"]) from None
        now = time.monotonic()
        if previous is not None and previous.spec.pool != ent.spec.pool:
            old_gate = self.gates[previous.spec.pool]
            old = old_gate.live.entitlements.get(ent.name)
            if old is not None and old.seqs_in_flight > 0:
                raise EntitlementRejected(409, [
                    f"spec.pool: entitlement '{ent.name}' has {old.seqs_in_flight:g} request(s) in flight on pool "
                    f"'{previous.spec.pool}'; move it when they have finished"])
            if old is not None:
                del old_gate.live.entitlements[ent.name]
                old_gate.live.recount_unused_guarantees()
        gate = self.gates[pool.name]
        live = gate.live.entitlements.get(ent.name)
        if live is None:
            gate.live.add_entitlement(ent, now)
        else:
            update_entitlement_live(gate.live, live, ent, now)
        self.config.entitlements[ent.name] = ent
        self.keyring.install(owners)
        self.limits.refresh(pool.name)
        if previous is not None and previous.spec.pool != ent.spec.pool:
            self.limits.refresh(previous.spec.pool)
        return previous is None


def update_entitlement_live(pool: PoolLive, live: EntitlementLive, ent: Entitlement, now: float) -> None:
    """Apply a changed spec in place, so reservations already held stay counted on the same object."""
    spec = ent.spec
    live.integrate(now)
    live.spec = ent
    live.tenant = spec.tenant
    live.tier = spec.tier
    live.rank = TIER_RANK[spec.tier]
    live.weight = spec.weight
    live.window = spec.burst_window_seconds
    live.slo_ttft = spec.slo.ttft_seconds if spec.slo else None
    live.guarantee = spec.guarantee.as_tuple()
    live.burst = spec.burst.as_tuple()
    g_tp = live.guarantee[0]
    if live.rank == GUARANTEED:
        if live.g_bucket is None:
            live.g_bucket = TokenBucket(g_tp, g_tp * live.window, now)
    else:
        live.g_bucket = None
    b = live.burst
    live.set_limits(min(live.limit_tp, b[0]), min(live.limit_kv, b[1]), min(live.limit_conc, b[2]), now)
    pool.recount_unused_guarantees()
