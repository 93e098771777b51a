"""Apache Kafka's own MirrorMaker 2 between local Kafka clusters, started from jars that Maven resolves.

Like kafka_local's broker: no Docker and no Kafka download site, but Maven Central is reachable, so the
classpath is `org.apache.kafka:connect-mirror` (with connect-runtime and connect-mirror-client) plus the
broker's log4j 2 SLF4J binding, resolved once into a cache outside the repo ($TOKENPOOLS_CACHE or
~/.cache/tokenpools, then mirror/<version>-<pom hash>/libs). MirrorMaker runs in dedicated mode
(`org.apache.kafka.connect.mirror.MirrorMaker mm2.properties [--clusters TARGET...]`): one Connect
worker per flow, its offsets, configs and statuses in topics on the flow's target cluster, and no
REST server, so it listens on no port.

Modules: `jars` (the jar cache and its pom), `config` (JVM flags, mm2.properties, log4j2), `status`
(readiness from the flows' status topics), `mirror` (`MirrorMaker`) and `cli`.

Command line:

    python -m tokenpools.infra.mirror_local start --cluster us-east=127.0.0.1:9092 \\
        --cluster eu-west=127.0.0.1:9093 --topics 'tp\\..*' [--target eu-west] --data-dir DIR
    python -m tokenpools.infra.mirror_local jars
"""

from tokenpools.infra.mirror_local.errors import MirrorMakerError
from tokenpools.infra.mirror_local.jars import MIRROR_VERSION, ensure_mirror_jars
from tokenpools.infra.mirror_local.mirror import MirrorMaker

__all__ = ["MIRROR_VERSION", "MirrorMaker", "MirrorMakerError", "ensure_mirror_jars"]
