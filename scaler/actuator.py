"""What the scaler acts through: one small async interface per replica fleet.

``LocalActuator`` (``scaler.local``) starts emulator replicas in this process;
``KubernetesActuator`` (``scaler.kube.actuator``) scales each pool's vLLM Deployment through its
``scale`` subresource and reads readiness from the pool's EndpointSlices.

Discovery (which URLs an admitter routes a pool's requests to) is a separate, optional protocol,
``EndpointSource``: both actuators implement it, and the scaler then publishes the ready replicas'
base URLs in its ``ReplicasReport`` for ``admitter.kafka.discovery`` to follow. On Kubernetes those are
exactly the Ready, non-terminating endpoints of the pool's Service (a pod that fails readiness or is
terminating leaves its EndpointSlice before it stops), so admitters route to the pods the platform
would, and capacity counts only those.
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


@runtime_checkable
class EndpointSource(Protocol):
    """Base URLs of a pool's ready replicas, for actuators whose platform has no discovery of its own.

    Must agree with ``Actuator.ready``: a replica is listed once it serves, and is no longer listed
    from the moment it starts draining, so admitters stop sending it new requests while those it
    already has finish.
    """

    async def endpoints(self, pool: str) -> list[str]: ...
