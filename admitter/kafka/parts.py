"""The admitter's Kafka parts, built from settings: events out, limits in, config both ways.

One place that turns ``AdmitterSettings`` (``--kafka``, ``--topic-prefix``, ``--spool-dir``,
``--expected-admitters``) into the three objects ``create_app`` wires, so the CLI, ``tokenpools up``
and tests get the same admitter; a part passed in explicitly is kept (tests swap one for a local one).
"""

from __future__ import annotations

from admitter.config_follower import ConfigSync
from admitter.events import EventSink
from admitter.follower import StateFollower
from admitter.kafka_sink import KafkaSink
from admitter.limits import LimitSource
from admitter.settings import AdmitterSettings, default_spool_dir
from schemas.loader import PlatformConfig


def kafka_parts(
    settings: AdmitterSettings,
    config: PlatformConfig,
    sink: EventSink | None = None,
    limits: LimitSource | None = None,
    config_sync: ConfigSync | None = None,
) -> tuple[EventSink, LimitSource, ConfigSync]:
    bootstrap = settings.kafka_bootstrap
    if bootstrap is None:
        raise ValueError("kafka_parts needs settings.kafka_bootstrap")
    prefix = settings.topic_prefix
    if sink is None:
        sink = KafkaSink(bootstrap, settings.spool_dir or default_spool_dir(settings.admitter_id), topic_prefix=prefix)
    if limits is None:
        limits = StateFollower(bootstrap, settings.admitter_id, topic_prefix=prefix,
                               expected_admitters=settings.expected_admitters)
    if config_sync is None:
        config_sync = ConfigSync(bootstrap, topic_prefix=prefix,
                                 seed=[*config.pools.values(), *config.entitlements.values()],
                                 initial_wait=settings.config_wait_seconds,
                                 write_timeout=settings.config_write_timeout,
                                 client_id=f"tokenpools-admitter-config-{settings.admitter_id}")
    return sink, limits, config_sync
