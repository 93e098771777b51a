"""The topics of token pools and the keys of the config topic: part of the contract between services.

Every service names topics through ``Topics(prefix)``, so a prefix (several installations, or test
runs, sharing one cluster) is applied in one place instead of by string concatenation at each call.
Events are keyed by entitlement, so one entitlement's events stay ordered on one partition and one
worker. State topics are compacted: the latest record per key is the state, and a reader that
starts late replays it from the beginning. Creating them is the pipeline worker's job
(``streams.topics.create_topics``); this module only says what they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import orjson

from schemas.specs import Manifest

REQUESTS: Final = "tokenpools.requests"
CONFIG: Final = "tokenpools.config"
ENTITLEMENT_STATE: Final = "tokenpools.entitlement-state"
POOL_STATE: Final = "tokenpools.pool-state"
# The scaler's report of ready replicas per pool (compacted, key = pool name): the pipeline's
# capacity belief. Without a report a pool counts ``spec.replicas.initial`` (else ``min``).
REPLICAS: Final = "tokenpools.replicas"
# Internal: stage 1 (partitioned by entitlement) sends per-entitlement window summaries keyed by
# pool, so stage 2 (partitioned by pool) sees a whole pool on one worker. Short retention: only the
# latest summary per entitlement matters, and stage 1 re-sends every tick.
ENTITLEMENT_USAGE: Final = "tokenpools.entitlement-usage"
# Multi-region: each region's global loop publishes ``RegionReport``s here, on its own cluster
# (compacted, key = <global entitlement>/<region>). MirrorMaker 2 copies the topic to every other
# region's cluster as ``<source region>.<this name>``, so a loop reads its own and the mirrored ones.
REGION_SUMMARIES: Final = "tokenpools.region-summaries"

COMPACTED: Final[dict[str, str]] = {
    "cleanup.policy": "compact",
    "min.cleanable.dirty.ratio": "0.1",
    "segment.ms": "600000",
    "min.compaction.lag.ms": "0",
}
_WEEK_MS: Final = 7 * 24 * 3600 * 1000
_HOUR_MS: Final = 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Topics:
    """Every topic's full name under one prefix (``""`` for an installation of its own)."""

    prefix: str = ""

    @property
    def requests(self) -> str:
        return self.prefix + REQUESTS

    @property
    def config(self) -> str:
        return self.prefix + CONFIG

    @property
    def entitlement_state(self) -> str:
        return self.prefix + ENTITLEMENT_STATE

    @property
    def pool_state(self) -> str:
        return self.prefix + POOL_STATE

    @property
    def replicas(self) -> str:
        return self.prefix + REPLICAS

    @property
    def entitlement_usage(self) -> str:
        return self.prefix + ENTITLEMENT_USAGE

    @property
    def region_summaries(self) -> str:
        return self.prefix + REGION_SUMMARIES

    def mirrored_region_summaries(self, region: str) -> str:
        """The name MirrorMaker 2's default replication policy gives ``region``'s summaries here."""
        return f"{region}.{self.region_summaries}"

    def specs(self, partitions: int = 6) -> list[TopicSpec]:
        """Every topic with its partitions and settings, as the pipeline worker creates them."""
        return [
            TopicSpec(self.requests, partitions, {"retention.ms": str(_WEEK_MS)}),
            TopicSpec(self.config, 1, dict(COMPACTED)),
            TopicSpec(self.entitlement_state, partitions, dict(COMPACTED)),
            TopicSpec(self.pool_state, 1, dict(COMPACTED)),
            TopicSpec(self.replicas, 1, dict(COMPACTED)),
            TopicSpec(self.entitlement_usage, partitions, {"retention.ms": str(_HOUR_MS)}),
            TopicSpec(self.region_summaries, 1, dict(COMPACTED)),
        ]


def config_key(manifest: Manifest) -> str:
    """The config topic's key of a manifest: ``<Kind>/<name>`` (a tombstone under it deletes)."""
    return f"{manifest.kind}/{manifest.name}"


def config_value(manifest: Manifest) -> bytes:
    """A manifest as the config topic holds it: the YAML's camelCase fields, as JSON."""
    return orjson.dumps(manifest.model_dump(mode="json", by_alias=True))
