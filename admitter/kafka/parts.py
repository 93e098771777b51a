"""The admitter's Kafka parts, built from settings: events out, limits in, config both ways, replicas in.

One place that turns ``AdmitterSettings`` (``--kafka``, ``--topic-prefix``, ``--spool-dir``,
``--expected-admitters``, ``--discover``) into the objects ``create_app`` wires, so the CLI,
``tokenpools up`` and tests get the same admitter; a part passed in explicitly is kept (tests swap
one for a local one).
"""

from __future__ import annotations

from dataclasses import dataclass

from admitter.admission.limits import LimitSource
from admitter.events import EventSink
from admitter.kafka.config_sync import ConfigSync
from admitter.kafka.discovery import ReplicaDiscovery
from admitter.kafka.sink import KafkaSink
from admitter.kafka.state_follower import StateFollower
from admitter.settings import AdmitterSettings, default_spool_dir
from schemas.loader import PlatformConfig


@dataclass(frozen=True, slots=True)
class KafkaParts:
    sink: EventSink
    limits: LimitSource
    config_sync: ConfigSync
    discovery: ReplicaDiscovery | None  # with ``settings.discover``


def kafka_parts(
    settings: AdmitterSettings,
    config: PlatformConfig,
    sink: EventSink | None = None,
    limits: LimitSource | None = None,
    config_sync: ConfigSync | None = None,
    discovery: ReplicaDiscovery | None = None,
) -> KafkaParts:
    kafka = settings.kafka  # the Kafka block: bootstrap and security options, for every client
    if kafka is None:
        raise ValueError("kafka_parts needs settings.kafka (a bootstrap)")
    prefix = settings.topic_prefix
    if sink is None:
        sink = KafkaSink(kafka, settings.spool_dir or default_spool_dir(settings.admitter_id), topic_prefix=prefix)
    if limits is None:
        limits = StateFollower(kafka, settings.admitter_id, topic_prefix=prefix,
                               expected_admitters=settings.expected_admitters)
    if config_sync is None:
        config_sync = ConfigSync(kafka, topic_prefix=prefix,
                                 seed=[*config.pools.values(), *config.entitlements.values()],
                                 initial_wait=settings.config_wait_seconds,
                                 write_timeout=settings.config_write_timeout,
                                 client_id=f"tokenpools-admitter-config-{settings.admitter_id}")
    if discovery is None and settings.discover:
        discovery = ReplicaDiscovery(kafka, topic_prefix=prefix,
                                     client_id=f"tokenpools-discovery-{settings.admitter_id}")
    return KafkaParts(sink, limits, config_sync, discovery)
