"""A real single-node Apache Kafka (KRaft) started from jars that Maven resolves.

There is no Docker engine and no Kafka download site on our machines, but Maven Central is reachable,
so the broker's classpath is `org.apache.kafka:kafka_2.13` plus a log4j 2 SLF4J binding, resolved
once into a cache outside the repo. The broker is a plain `java` subprocess that keeps its data in
one directory, so tests can stop it mid-run and start it again on the same port with the data intact.

Modules: `java` (finding java and mvn), `jars` (the jar cache and pom.xml), `ports`, `process`
(pids, log file), `config` (JVM flags, server.properties, log4j2.properties), `cds` (class
archives), `probe` (readiness), `broker` (`LocalKafka`) and `cli`.

Command line (also wrapped by deploy/kafka/kafka-local):

    python -m tokenpools.infra.kafka_local start [--data-dir DIR] [--port P] [--detach]
    python -m tokenpools.infra.kafka_local stop|status [--data-dir DIR]
"""

from tokenpools.infra.kafka_local.broker import PID_FILE, LocalKafka
from tokenpools.infra.kafka_local.errors import KafkaStartError
from tokenpools.infra.kafka_local.jars import KAFKA_VERSION, ensure_jars
from tokenpools.infra.kafka_local.java import find_java
from tokenpools.infra.kafka_local.probe import probe

__all__ = ["KAFKA_VERSION", "PID_FILE", "KafkaStartError", "LocalKafka", "ensure_jars", "find_java", "probe"]
