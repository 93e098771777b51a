"""The MirrorMaker 2 jar cache: `org.apache.kafka:connect-mirror` and a log4j 2 binding, resolved by Maven once.

A classpath of its own beside the broker's (kafka_local.jars): Connect's runtime brings Jetty, Jersey and
Jackson modules that the broker does not need. Same cache root (`$TOKENPOOLS_CACHE` or ~/.cache/tokenpools),
then mirror/<version>-<pom hash>/libs with a `.resolved` marker whose content is the cache key.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from pathlib import Path

from tokenpools.infra.kafka_local.errors import KafkaStartError, one_line
from tokenpools.infra.kafka_local.jars import LOG4J_VERSION, _dir_mb, _file_lock, _progress, cache_root
from tokenpools.infra.kafka_local.java import find_maven
from tokenpools.infra.mirror_local.errors import say

MIRROR_VERSION = "4.1.1"  # kafka_local.KAFKA_VERSION: the brokers and MirrorMaker are one release
MAIN_CLASS = "org.apache.kafka.connect.mirror.MirrorMaker"

# Written into the cache dir as pom.xml. Its exact text is part of the cache key: editing it re-resolves.
POM_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<!--
  Classpath of Apache Kafka's MirrorMaker 2 in dedicated mode, run by tokenpools.infra.mirror_local as
    java -cp 'libs/*' org.apache.kafka.connect.mirror.MirrorMaker mm2.properties
  Written by tokenpools/infra/mirror_local/jars.py (POM_XML); edits here are overwritten.
-->
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 http://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.tokenpools</groupId>
  <artifactId>tokenpools-mirror-local</artifactId>
  <version>1</version>
  <packaging>pom</packaging>

  <properties>
    <kafka.version>4.1.1</kafka.version>
    <log4j.version>2.25.3</log4j.version>
    <slf4j.version>2.0.17</slf4j.version>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
  </properties>

  <dependencies>
    <!-- MirrorMaker's main class and connectors; brings connect-runtime, connect-mirror-client,
         connect-api, connect-json, connect-transforms and kafka-clients. -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>connect-mirror</artifactId>
      <version>${kafka.version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>connect-mirror-client</artifactId>
      <version>${kafka.version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>connect-runtime</artifactId>
      <version>${kafka.version}</version>
    </dependency>
    <!-- The broker pom's binding: the SLF4J 2 API (1.7 callers accept it) and log4j 2 behind it. -->
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-api</artifactId>
      <version>${slf4j.version}</version>
      <scope>runtime</scope>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId>
      <version>${log4j.version}</version>
      <scope>runtime</scope>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>${log4j.version}</version>
      <scope>runtime</scope>
    </dependency>
  </dependencies>

  <build>
    <pluginManagement>
      <plugins>
        <!-- Pinned: Maven 3.8's default dependency plugin predates Java 17 class files. -->
        <plugin>
          <groupId>org.apache.maven.plugins</groupId>
          <artifactId>maven-dependency-plugin</artifactId>
          <version>3.8.1</version>
        </plugin>
      </plugins>
    </pluginManagement>
  </build>
</project>
"""


def _digest(version: str, log4j_version: str) -> str:
    return hashlib.sha256(f"{POM_XML}\0{version}\0{log4j_version}".encode()).hexdigest()[:12]


def jars_dir(version: str = MIRROR_VERSION, log4j_version: str = LOG4J_VERSION) -> Path:
    """Where the jars of this version and pom live (resolved or not)."""
    return cache_root() / "mirror" / f"{version}-{_digest(version, log4j_version)}" / "libs"


def ensure_mirror_jars(version: str = MIRROR_VERSION, log4j_version: str = LOG4J_VERSION) -> Path:
    """Resolve once per version and pom; the lock makes concurrent sessions wait instead of racing."""
    libs = jars_dir(version, log4j_version)
    base, marker = libs.parent, libs.parent / ".resolved"
    key = f"connect-mirror {version} log4j {log4j_version} pom {_digest(version, log4j_version)}\n"
    if marker.is_file() and marker.read_text() == key and libs.is_dir():
        return libs
    with _file_lock(base / ".lock"):
        if marker.is_file() and marker.read_text() == key and libs.is_dir():
            return libs
        _resolve(base, version, log4j_version)
        marker.write_text(key)
    return libs


def _maven_errors(log_path: Path) -> list[str]:
    """Maven closes with generic help lines; the first [FATAL]/[ERROR] lines say what went wrong."""
    lines = [ln.replace("\x1b[0m", "") for ln in log_path.read_text(errors="replace").splitlines()]
    errors = [ln for ln in lines if "[FATAL]" in ln or ("[ERROR]" in ln and "Help" not in ln)]
    errors = [ln for ln in errors if ln.strip() != "[ERROR]"]
    return errors[:4] or lines[-6:]


def _resolve(base: Path, version: str, log4j_version: str) -> None:
    mvn = find_maven()
    staging, libs = base / "libs.partial", base / "libs"
    shutil.rmtree(staging, ignore_errors=True)
    (base / "pom.xml").write_text(POM_XML)
    cmd = [
        mvn, "-q", "-B", "-f", str(base / "pom.xml"), "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
        f"-Dkafka.version={version}", f"-Dlog4j.version={log4j_version}",
    ]  # fmt: skip
    say(f"resolving Apache Kafka MirrorMaker {version} jars with Maven into {libs} (first time only, ~40 MB)")
    started = time.monotonic()
    log_path = base / "mvn.log"
    with open(log_path, "w") as log, _progress(started):
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=base).returncode
    jars = sorted(staging.glob("connect-mirror-[0-9]*.jar")) if staging.is_dir() else []
    if rc != 0 or not jars:
        tail = _maven_errors(log_path)
        raise KafkaStartError(
            f"Maven could not resolve org.apache.kafka:connect-mirror:{version} (mvn exit {rc}); check access "
            f"to Maven Central or a mirror in ~/.m2/settings.xml, then run "
            f"`python -m tokenpools.infra.mirror_local jars`; full log {log_path}: {one_line(tail)}"
        )
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    count = len(list(libs.glob("*.jar")))
    say(f"resolved {count} jars ({_dir_mb(libs):.0f} MB) in {time.monotonic() - started:.0f}s")
