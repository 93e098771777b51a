"""What MirrorMaker runs with: JVM flags, mm2.properties and the log4j 2 configuration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tokenpools.infra.kafka_local.config import LOG4J2_PROPERTIES as BROKER_LOG4J2

# A dedicated-mode MirrorMaker with two flows moves test-sized traffic: 256 MB of heap is plenty (the
# process settles near 400 MB resident with metaspace and threads). Serial GC: no GC threads competing
# with the two brokers for the machine's 2 cores.
JVM_FLAGS = (
    "-Xmx256m",
    "-Xms64m",
    "-XX:+UseSerialGC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)

# The broker's log4j 2 configuration (everything to stdout, redirected to <data-dir>/mirror.log), less
# Connect's chatter: every client and connector prints its whole configuration (hundreds of lines per
# flow), every plugin found on the classpath and, with a 1 s offset flush, a commit line a second.
LOG4J2_PROPERTIES = (
    BROKER_LOG4J2.replace("tokenpools-kafka-local", "tokenpools-mirror-local")
    + """
# MirrorMaker (tokenpools.infra.mirror_local): quiet the lines that repeat, keep warnings and errors.
logger.configs.name = org.apache.kafka.common.config.AbstractConfig
logger.configs.level = WARN
logger.plugins.name = org.apache.kafka.connect.runtime.isolation
logger.plugins.level = WARN
logger.appinfo.name = org.apache.kafka.common.utils.AppInfoParser
logger.appinfo.level = WARN
logger.metrics.name = org.apache.kafka.common.metrics.Metrics
logger.metrics.level = WARN
logger.commits.name = org.apache.kafka.connect.runtime.WorkerSourceTask
logger.commits.level = WARN
logger.scheduler.name = org.apache.kafka.connect.mirror.Scheduler
logger.scheduler.level = WARN
logger.subscription.name = org.apache.kafka.clients.consumer.internals.SubscriptionState
logger.subscription.level = WARN
"""
)

# Kafka Connect worker settings are not read from the top level of mm2.properties (only offset.storage.*,
# status.storage.*, config.storage.*, task.*, worker.* and converters are): MirrorMaker builds each
# flow's worker from the *target* cluster's `<alias>.` properties, so these are written once per alias.
WORKER_PER_CLUSTER = {
    # Source offsets reach the target's mm2-offsets topic each second: a killed MirrorMaker replays at
    # most about a second of records (duplicates on the target), not a minute's worth (the default).
    "offset.flush.interval.ms": "1000",
    # One worker per flow: a worker that left comes back as a new member, so waiting for it to return
    # (the default holds its connectors and tasks for 5 minutes) only delays a restart.
    "scheduled.rebalance.max.delay.ms": "0",
    # The broker's minimum (group.min.session.timeout.ms): a killed worker's group membership expires in
    # 6 s instead of 10 s, and its replacement joins that much sooner.
    "session.timeout.ms": "6000",
    "heartbeat.interval.ms": "2000",
    # Kafka's own plugins have ServiceLoader manifests: scanning the classpath by reflection instead
    # costs about 3 s per flow at startup on this machine.
    "plugin.discovery": "service_load",
    # Short client timeouts, so an unreachable cluster shows up in the log within seconds.
    "producer.request.timeout.ms": "10000",
    "producer.delivery.timeout.ms": "30000",
    "consumer.request.timeout.ms": "10000",
    "consumer.default.api.timeout.ms": "20000",
    "admin.request.timeout.ms": "10000",
    "admin.default.api.timeout.ms": "20000",
}

INTERNAL_TOPIC_REPLICATION = (
    "replication.factor",  # remote topics (a.T on cluster b)
    "checkpoints.topic.replication.factor",
    "heartbeats.topic.replication.factor",
    "offset-syncs.topic.replication.factor",
    "offset.storage.replication.factor",
    "status.storage.replication.factor",
    "config.storage.replication.factor",
)


def flows(aliases: Sequence[str], targets: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """Every ordered (source, target) pair, restricted to the targets this process runs."""
    return [(s, t) for s in aliases for t in aliases if s != t and (targets is None or t in targets)]


def mm2_config(
    clusters: Mapping[str, str],
    topics: str,
    *,
    refresh_seconds: float = 2,
    sync_group_offsets: bool = False,
    replication_factor: int = 1,
) -> dict[str, str]:
    """mm2.properties for `clusters` (alias -> bootstrap servers), every flow on; `--clusters` picks targets."""
    refresh = f"{max(1, round(refresh_seconds))}"
    config: dict[str, str] = {
        "clusters": ", ".join(clusters),
        # KIP-710's internal REST server is off by default; say so: dedicated mode then listens nowhere.
        "dedicated.mode.enable.internal.rest": "false",
        "plugin.discovery": "service_load",  # MirrorMaker's own config also loads the plugins once
    }
    for alias, servers in clusters.items():
        config[f"{alias}.bootstrap.servers"] = servers
        config.update({f"{alias}.{key}": value for key, value in WORKER_PER_CLUSTER.items()})
    for source, target in flows(list(clusters)):
        config[f"{source}->{target}.enabled"] = "true"
        config[f"{source}->{target}.topics"] = topics
    config.update(dict.fromkeys(INTERNAL_TOPIC_REPLICATION, str(replication_factor)))
    config.update(
        {
            # DefaultReplicationPolicy: topic T of cluster a is a.T on b, and a.T is never sent back to a.
            "replication.policy.class": "org.apache.kafka.connect.mirror.DefaultReplicationPolicy",
            "replication.policy.separator": ".",
            "refresh.topics.interval.seconds": refresh,  # a new source topic is mirrored within this
            "refresh.groups.interval.seconds": refresh,
            "emit.heartbeats.interval.seconds": "1",
            "emit.checkpoints.interval.seconds": refresh,
            "sync.topic.acls.enabled": "false",  # local brokers run no authorizer
            "sync.group.offsets.enabled": str(sync_group_offsets).lower(),
            "sync.group.offsets.interval.seconds": refresh,
        }
    )
    return config


def render_properties(config: Mapping[str, str]) -> str:
    """java.util.Properties syntax: a backslash escapes, so a regex's `\\.` is written `\\\\.`."""
    header = "# Written by tokenpools.infra.mirror_local on every start; edits are overwritten.\n"
    return header + "".join(f"{key} = {_escape(value)}\n" for key, value in config.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")
