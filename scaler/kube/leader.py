"""Leader election on a ``coordination.k8s.io/v1`` Lease: one operator replica writes, the others wait.

The kubernetes Python client's ``leaderelection`` module locks a ConfigMap; Kubernetes' own components
have used Leases for years (less write traffic, a type made for it), so this is a small Lease lock of
the same design as client-go's:

- **Acquire.** A candidate reads the Lease every ``retry_period``. It takes it when there is none
  (create), when it holds no holder (released), or when the record has not changed for
  ``lease_duration`` *as measured by the candidate's own clock since it first saw that record*: the
  holder's ``renewTime`` is another machine's clock and is never compared with ours.
- **Renew** every ``renew_deadline / 2`` with the Lease's ``resourceVersion``, so two candidates that
  race for an expired Lease cannot both win: the API server answers the loser 409.
- **Lose at once.** ``is_leader`` is true only until ``renew_deadline`` after the start of the last
  successful renew, measured on the monotonic clock before the request went out. A holder that cannot
  reach the API server therefore stops leading (and writing) before any other candidate can take the
  Lease, which needs ``lease_duration`` > ``renew_deadline`` of silence; a holder that sees someone
  else in the Lease stops at once.
- **Release** on a clean stop: the holder clears ``holderIdentity`` so the next candidate takes over
  at its next retry instead of waiting out the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("tokenpools.operator.leader")


@dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    identity: str
    name: str = "tokenpools-operator"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "lease timings must satisfy 0 < retry period < renew deadline < lease duration (got "
                f"{self.retry_period:g} s, {self.renew_deadline:g} s, {self.lease_duration:g} s): a holder must "
                "give up before another candidate may take the lease")
        if not self.identity:
            raise ValueError("the leader election identity must not be empty")


def _now() -> datetime:
    # MicroTime on the wire: the API server parses RFC 3339 with exactly six fractional digits,
    # and isoformat() drops them when the microsecond happens to be 0.
    now = datetime.now(UTC)
    return now if now.microsecond else now.replace(microsecond=1)


class LeaderElector:
    """Holds (or waits for) one Lease; see the module doc."""

    def __init__(self, api: client.ApiClient, settings: LeaseSettings,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.settings = settings
        self.coord = client.CoordinationV1Api(api)
        self.on_change = on_change
        self.transitions = 0  # times this candidate became leader
        self._valid_until = 0.0
        self._leading = False
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def identity(self) -> str:
        return self.settings.identity

    @property
    def is_leader(self) -> bool:
        return self._leading and time.monotonic() < self._valid_until

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"lease-{self.identity}")

    async def stop(self, release: bool = True) -> None:
        """Stop electing; ``release`` clears the Lease if this candidate holds it (a clean stop)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        was = self._leading
        self._set(False)
        if release and was:
            try:
                await asyncio.to_thread(self._release)
            except Exception as exc:  # the lease then simply expires
                log.warning("could not release lease %s/%s: %s", self.settings.namespace, self.settings.name, exc)

    async def run(self) -> None:
        s = self.settings
        while True:
            started = time.monotonic()
            try:
                held = await asyncio.to_thread(self._try_acquire_or_renew)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                held = None  # unknown: keep leading until the deadline, no longer
                log.warning("lease %s/%s: %s", s.namespace, s.name, _short(exc))
            if held:
                self._valid_until = started + s.renew_deadline
                self._set(True)
            elif held is False or not self.is_leader:
                self._set(False)
            # A failed renew is retried sooner, so a short API server outage does not cost the lease.
            await asyncio.sleep(s.renew_deadline / 2 if held and self.is_leader else s.retry_period)

    def _set(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        if leading:
            self.transitions += 1
            log.info("%s is now the leader (lease %s/%s)", self.identity, self.settings.namespace, self.settings.name)
        else:
            self._valid_until = 0.0
            log.info("%s is no longer the leader", self.identity)
        if self.on_change is not None:
            self.on_change(leading)

    # -- the lock (blocking; run in a thread) ---------------------------------------------------

    def holder(self) -> str | None:
        """The Lease's current holder as the API server has it (None: no Lease, or released)."""
        try:
            lease = self.coord.read_namespaced_lease(self.settings.name, self.settings.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return lease.spec.holder_identity if lease.spec else None

    def _try_acquire_or_renew(self) -> bool:
        s = self.settings
        try:
            lease = self.coord.read_namespaced_lease(s.name, s.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return self._create()
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity
        version = lease.metadata.resource_version if lease.metadata else None
        record = (holder, spec.renew_time, spec.lease_transitions, version)
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        duration = float(spec.lease_duration_seconds or s.lease_duration)
        if holder and holder != s.identity and time.monotonic() < self._observed_at + duration:
            return False
        now = _now()
        if holder != s.identity:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + (1 if holder else 0)
            if holder:
                log.info("%s takes over lease %s/%s from %s (not renewed for %.0f s)", s.identity, s.namespace,
                         s.name, holder, duration)
        spec.holder_identity = s.identity
        spec.renew_time = now
        spec.lease_duration_seconds = round(s.lease_duration)
        lease.spec = spec
        try:
            self.coord.replace_namespaced_lease(s.name, s.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:  # another candidate wrote first
                return False
            raise
        return True

    def _create(self) -> bool:
        s = self.settings
        now = _now()
        lease = client.V1Lease(
            metadata=client.V1ObjectMeta(name=s.name, namespace=s.namespace),
            spec=client.V1LeaseSpec(holder_identity=s.identity, acquire_time=now, renew_time=now,
                                    lease_duration_seconds=round(s.lease_duration), lease_transitions=0))
        try:
            self.coord.create_namespaced_lease(s.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def _release(self) -> None:
        s = self.settings
        lease = self.coord.read_namespaced_lease(s.name, s.namespace)
        if lease.spec is None or lease.spec.holder_identity != s.identity:
            return
        lease.spec.holder_identity = None
        lease.spec.renew_time = _now()
        lease.spec.lease_duration_seconds = 1
        with contextlib.suppress(ApiException):  # 409: someone took it already
            self.coord.replace_namespaced_lease(s.name, s.namespace, lease)
        log.info("%s released lease %s/%s", s.identity, s.namespace, s.name)


def _short(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"API server answered {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"
