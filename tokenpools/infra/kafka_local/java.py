"""Finding the tools: `java` (17+) to run the broker and `mvn` to resolve its jars."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from tokenpools.infra.kafka_local.errors import KafkaStartError

MIN_JAVA = 17


def find_java() -> str:
    """JAVA_HOME wins over PATH, as in Kafka's own scripts; Kafka 4 brokers need Java 17+."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = str(Path(java_home) / "bin" / "java") if java_home else None
    if not (candidate and os.access(candidate, os.X_OK)):
        candidate = shutil.which("java")
    if not candidate:
        raise KafkaStartError(
            f"Java not found: no `java` on PATH and no JAVA_HOME; install a JDK {MIN_JAVA}+ "
            "(e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME"
        )
    major = _java_major(candidate)
    if major is not None and major < MIN_JAVA:
        raise KafkaStartError(
            f"Java {major} at {candidate} is too old: Kafka 4 needs Java {MIN_JAVA}+; set JAVA_HOME to a newer JDK"
        )
    return candidate


def _java_major(java: str) -> int | None:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_maven() -> str:
    mvn = shutil.which("mvn")
    if not mvn:
        raise KafkaStartError(
            "Maven not found: `mvn` is not on PATH and the Kafka jars are not cached yet; "
            "install Maven 3.8+ (e.g. `apt-get install maven`)"
        )
    return mvn
