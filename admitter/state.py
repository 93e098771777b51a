"""The admitter's shared runtime state, built once per app from settings and the platform config.

Routes (the proxy endpoint, the admin API, ``/v1/usage``, ``/metrics``) all read this one object;
the entitlement update path (admin PUT) is here too so that the config, the key ring and the live
pool state change together.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Mapping

import httpx

from admitter.admission.gate import PoolGate
from admitter.admission.limits import LimitSource, LocalAllocator
from admitter.admission.usage import UsageBook
from admitter.events import EventSink, InMemorySink
from admitter.http.auth import AdminKey, KeyConflict, KeyOwner, KeyRing
from admitter.kafka.config_sync import ConfigSync
from admitter.kafka.discovery import ReplicaDiscovery
from admitter.metrics import AdmitterMetrics
from admitter.settings import AdmitterSettings
from admitter.upstream.clients import make_client
from admitter.upstream.proxy import Upstream
from admitter.upstream.replicas import ReplicaSet
from capacity.live import EntitlementLive, PoolLive
from schemas.echo import echo_str
from schemas.errors import EntitlementConflict, EntitlementInvalid, EntitlementRejected
from schemas.loader import PlatformConfig, provisioning_problems
from schemas.specs import Entitlement, TokenPool
from schemas.topics import config_key

log = logging.getLogger("tokenpools.admitter")


class RequestIds:
    """Unique, cheap request ids: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = "req-" + os.urandom(6).hex() + "-"
        self._n = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._n):x}"


class AdmitterState:
    def __init__(self, settings: AdmitterSettings, config: PlatformConfig, sink: EventSink | None = None,
                 limits: LimitSource | None = None, config_sync: ConfigSync | None = None,
                 discovery: ReplicaDiscovery | None = None) -> None:
        self.settings = settings
        self.config = config
        self.keyring = KeyRing(config.entitlements.values())
        self.admin_key = AdminKey(settings.admin_key_sha256)
        self.sink: EventSink = sink if sink is not None else InMemorySink()
        self.limits: LimitSource = limits if limits is not None else LocalAllocator()
        self.usage = UsageBook()
        self.ids = RequestIds()
        now = time.monotonic()
        self.config_sync = config_sync
        self.discovery = discovery
        self._write_lock = asyncio.Lock()  # admin writes validate, publish and apply one at a time
        self.gates: dict[str, PoolGate] = {
            name: PoolGate(PoolLive(pool, config.entitlements_of(name), now), max_queue=settings.max_queue)
            for name, pool in config.pools.items()
        }
        self.models = model_index(config)
        replica_sets = {name: self._replica_set(pool) for name, pool in config.pools.items()}
        timeout = httpx.Timeout(connect=settings.connect_timeout, read=settings.read_timeout,
                                write=settings.write_timeout, pool=settings.connect_timeout)
        client = make_client(settings.upstream_client, timeout, settings.max_idle_connections_per_replica,
                             settings.upstream_keepalive_seconds)
        self.upstream = Upstream(replica_sets, client)
        self.metrics = AdmitterMetrics(lambda: self.gates, lambda: self.upstream.replicas)

    async def start(self) -> None:
        if self.discovery is not None:  # first: the members are current when the first request comes
            await self.discovery.start(self.upstream.replicas)
        await self.upstream.start()
        await self.limits.start(self.gates)
        if self.config_sync is not None:  # after the limits: topic changes may add pools to them
            await self.config_sync.start(self)

    async def stop(self) -> None:
        try:
            if self.config_sync is not None:
                await self.config_sync.stop()
            await self.limits.stop()
            await self.upstream.stop()
            await self.sink.close()
        finally:
            if self.discovery is not None:  # last, as it started first
                await self.discovery.stop()

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

    # -- entitlement and pool changes (admin API and the config topic) ---------------------------

    def check_entitlement(self, ent: Entitlement) -> tuple[TokenPool, Entitlement | None, dict[str, KeyOwner]]:
        """Validate a create or update without changing anything: the pool, the previous spec, the new key table.

        Refused (``EntitlementInvalid``) for an unknown pool, and (``EntitlementConflict``) when its
        guarantee could not be provisioned at the pool's max replicas, when its keys clash with another
        tenant's, or when it would move pools with requests in flight.
        """
        pool = self.config.pools.get(ent.spec.pool)
        if pool is None:
            known = ", ".join(sorted(self.config.pools)) or "none"
            raise EntitlementInvalid([f"spec.pool: unknown pool '{echo_str(ent.spec.pool)}' (known: {known})"])
        previous = self.config.entitlements.get(ent.name)
        others = [e for e in self.config.entitlements_of(pool.name) if e.name != ent.name]
        # The loader names whichever entitlement tips a dimension over (in name order); here the
        # existing ones were provisionable, so any new problem is this entitlement's doing.
        after = provisioning_problems(pool, [*others, ent])
        if len(after) > len(provisioning_problems(pool, others)):
            raise EntitlementConflict(list(dict.fromkeys(f"{fld}: {msg}" for _, fld, msg in after)))
        entitlements = dict(self.config.entitlements)
        entitlements[ent.name] = ent
        try:
            owners = KeyRing.build(entitlements.values(), incoming=ent.name)
        except KeyConflict as exc:
            raise EntitlementConflict([f"spec.apiKeys: {exc}"]) from None
        if previous is not None and previous.spec.pool != ent.spec.pool:
            old_gate = self.gates.get(previous.spec.pool)
            old = old_gate.live.entitlements.get(ent.name) if old_gate is not None else None
            requests = old.in_flight()[1] if old is not None else 0.0
            if requests > 0:
                raise EntitlementConflict([
                    f"spec.pool: entitlement '{ent.name}' has {requests:g} request(s) in flight on pool "
                    f"'{previous.spec.pool}'; move it when they have finished"])
        return pool, previous, owners

    def apply_entitlement(self, ent: Entitlement) -> bool:
        """Create or update an entitlement in the config, the key ring and the live pool; True if created.

        Refused (an ``EntitlementRejected``) for the reasons ``check_entitlement`` gives.
        """
        pool, previous, owners = self.check_entitlement(ent)
        now = time.monotonic()
        if previous is not None and previous.spec.pool != ent.spec.pool:
            old_gate = self.gates.get(previous.spec.pool)
            if old_gate is not None:
                old_gate.live.remove_entitlement(ent.name)
        self.gates[pool.name].live.put_entitlement(ent, now)
        self.config.entitlements[ent.name] = ent
        self.keyring.install(owners)
        self.limits.refresh(pool.name)
        if previous is not None and previous.spec.pool != ent.spec.pool:
            self.limits.refresh(previous.spec.pool)
        return previous is None

    def remove_entitlement(self, name: str) -> bool:
        """Delete an entitlement: its keys stop working at once; requests in flight finish and release."""
        ent = self.config.entitlements.pop(name, None)
        if ent is None:
            return False
        self.keyring.rebuild(self.config.entitlements.values())  # fewer keys cannot conflict
        gate = self.gates.get(ent.spec.pool)
        if gate is not None and gate.live.remove_entitlement(name):
            self.limits.refresh(ent.spec.pool)
        return True

    async def put_entitlement(self, ent: Entitlement) -> bool:
        """The admin API's create/update: validate, write to the config topic (with Kafka), apply; True if created.

        With Kafka the write must be acknowledged first (``ConfigUnavailable`` otherwise, and nothing
        changes); it is then applied here at once, so the writer reads its own write.
        """
        async with self._write_lock:
            self.check_entitlement(ent)
            # Decided before the write: once Kafka acks it, this admitter's own config follower may
            # apply the record from the topic before the line below does (a 200 for a create, seen in CI).
            created = ent.name not in self.config.entitlements
            if self.config_sync is not None:
                await self.config_sync.write(config_key(ent), ent)
            self.apply_entitlement(ent)
            return created

    async def delete_entitlement(self, name: str) -> bool:
        """The admin API's delete: False if there is no such entitlement (see ``put_entitlement``)."""
        async with self._write_lock:
            ent = self.config.entitlements.get(name)
            if ent is None:
                return False
            if self.config_sync is not None:
                await self.config_sync.write(config_key(ent), None)
            self.remove_entitlement(name)  # may already be gone: the follower can apply the tombstone first
            return True

    def add_pool(self, pool: TokenPool) -> None:
        """A pool that appeared on the config topic: its gate, replicas, routing and limits."""
        gate = PoolGate(PoolLive(pool, [], time.monotonic()), max_queue=self.settings.max_queue)
        self.gates[pool.name] = gate
        self.upstream.replicas[pool.name] = self._replica_set(pool)
        self.config.pools[pool.name] = pool
        self.models = model_index(self.config)
        self.limits.add_pool(pool.name, gate)

    def update_pool(self, pool: TokenPool) -> None:
        """A changed pool spec, applied in place so reservations and queued requests stay where they are."""
        previous = self.config.pools[pool.name]
        self.gates[pool.name].live.apply_spec(pool)
        if pool.spec.backends != previous.spec.backends and pool.name not in self.settings.backends:
            self.upstream.replicas[pool.name] = self._replica_set(pool)
        self.config.pools[pool.name] = pool
        self.models = model_index(self.config)
        self.limits.refresh(pool.name)

    def remove_pool(self, name: str) -> str | None:
        """Delete a pool with no entitlements left; else the reason it stays."""
        users = sorted(e.name for e in self.config.entitlements_of(name))
        if users:
            return f"pool '{name}' was deleted but entitlement(s) {', '.join(users)} still use it; it stays"
        self.config.pools.pop(name, None)
        self.gates.pop(name, None)
        self.upstream.replicas.pop(name, None)
        self.models = model_index(self.config)
        self.limits.remove_pool(name)
        return None

    def sync_config(self, pools: Mapping[str, TokenPool], entitlements: Mapping[str, Entitlement]) -> dict[str, str]:
        """Make the live config equal to the config topic's; ``{key: problem}`` for what could not be applied.

        Deletions go first (they free API keys and guarantee room for what replaces them), then
        pools, then entitlements in name order; a pool is removed last, once nothing uses it.
        """
        problems: dict[str, str] = {}
        for name in [n for n, e in self.config.entitlements.items() if n not in entitlements]:
            self.remove_entitlement(name)
        for name, pool in pools.items():
            current = self.config.pools.get(name)
            if current is None:
                self.add_pool(pool)
            elif current != pool:
                self.update_pool(pool)
        for name in sorted(entitlements):
            ent = entitlements[name]
            if self.config.entitlements.get(name) == ent:
                continue
            try:
                self.apply_entitlement(ent)
            except EntitlementRejected as exc:
                problems[config_key(ent)] = "; ".join(exc.problems)
        for name in [n for n in self.config.pools if n not in pools]:
            problem = self.remove_pool(name)
            if problem is not None:
                problems[f"TokenPool/{name}"] = problem
        return problems

    def _replica_set(self, pool: TokenPool) -> ReplicaSet:
        urls = self.settings.backends.get(pool.name, pool.spec.backends)
        return ReplicaSet(urls, self.settings.backend_cooldown_seconds)


def model_index(config: PlatformConfig) -> dict[str, TokenPool]:
    """Model (or pool) name -> pool, so routing is a dict lookup; the first pool in config order wins,
    as in ``PlatformConfig.pool_for_model``."""
    index: dict[str, TokenPool] = {}
    for pool in reversed(list(config.pools.values())):
        index[pool.name] = pool
        index[pool.spec.model] = pool
    return index

