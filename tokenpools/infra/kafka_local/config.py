"""What the broker runs with: JVM flags, server.properties and the log4j 2 configuration."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from tokenpools.infra.kafka_local.ports import HOST

# log4j2.properties beside this module, shipped as package data; deploy/kafka/log4j2.properties is
# a copy (a test checks they are identical). Everything goes to stdout, which is redirected to
# <data-dir>/kafka.log, so JVM crashes and log lines end up in one file.
LOG4J2_PROPERTIES = resources.files(__package__).joinpath("log4j2.properties").read_text(encoding="utf-8")

JVM_FLAGS = (
    "-Xmx512m",
    "-Xms256m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
# The storage tool runs for a second: a small heap and the C1 compiler start it fastest.
TOOL_JVM_FLAGS = ("-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true")


def default_server_config(port: int, controller_port: int, log_dirs: Path) -> dict[str, str]:
    """Single node: every internal topic has replication 1 and min ISR 1, or nothing works."""
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dirs),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "10",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
        "num.recovery.threads.per.data.dir": "2",
    }


def render_server_properties(config: Mapping[str, str]) -> str:
    header = "# Written by tokenpools.infra.kafka_local on every start; edits are overwritten.\n"
    return header + "".join(f"{key}={value}\n" for key, value in config.items())
