"""What the scaler acts through: one small async interface per replica fleet.

``LocalActuator`` (``scaler.local``) starts emulator replicas in this process. A Kubernetes actuator
can implement the same protocol on the ``scale`` subresource of each pool's Deployment with the
official ``kubernetes`` client (``AppsV1Api.read_namespaced_deployment_scale`` /
``patch_namespaced_deployment_scale``, and ``status.readyReplicas`` of the Deployment).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Actuator(Protocol):
    """Replicas of one pool's serving fleet.

    - ``current(pool)``: the replica count last asked for (a Deployment's ``spec.replicas``, read
      through its scale subresource): what the scaling rule compares its recommendation with.
    - ``ready(pool)``: replicas that serve traffic now (the Deployment's ``status.readyReplicas``):
      what the scaler reports on ``tokenpools.replicas`` as the pipeline's capacity belief. It lags
      ``current`` by the start-up time of a replica.
    - ``scale(pool, replicas)``: ask for ``replicas`` (``patch_namespaced_deployment_scale`` with
      ``{"spec": {"replicas": n}}``). It may return before the replicas are ready; it must be
      idempotent, since the scaler repeats its decision at every pool state.

    Implementations raise ``KeyError`` for a pool they do not manage.
    """

    async def current(self, pool: str) -> int: ...

    async def ready(self, pool: str) -> int: ...

    async def scale(self, pool: str, replicas: int) -> None: ...
