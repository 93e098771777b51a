"""The jar cache: `org.apache.kafka:kafka_2.13` and a log4j 2 binding, resolved by Maven once per version.

The cache lives outside the repo (CI caches it): `$TOKENPOOLS_CACHE` or ~/.cache/tokenpools, then
kafka/<version>/libs, with a `.resolved` marker whose content is the cache key.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from tokenpools.infra.kafka_local.errors import KafkaStartError, one_line, say
from tokenpools.infra.kafka_local.java import find_maven

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.25.3"

# pom.xml beside this module, shipped as package data; deploy/kafka/pom.xml is a copy (a test
# checks they are identical). Versions are properties so `-Dkafka.version=...` picks another
# release without editing the file. Its exact text is part of the cache key: editing it re-resolves.
POM_XML = resources.files(__package__).joinpath("pom.xml").read_text(encoding="utf-8")


def cache_root() -> Path:
    return Path(os.environ.get("TOKENPOOLS_CACHE") or Path.home() / ".cache" / "tokenpools")


def _cache_key(version: str, log4j_version: str) -> str:
    """The marker records what was resolved, so a changed pom or log4j pin re-resolves."""
    digest = hashlib.sha256(f"{POM_XML}\0{version}\0{log4j_version}".encode()).hexdigest()[:16]
    return f"kafka {version} log4j {log4j_version} pom {digest}\n"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_jars(version: str = KAFKA_VERSION, log4j_version: str = LOG4J_VERSION) -> Path:
    """Resolve once per version; the lock makes concurrent test sessions wait instead of racing."""
    base = cache_root() / "kafka" / version
    libs, marker = base / "libs", base / ".resolved"
    key = _cache_key(version, log4j_version)
    if marker.is_file() and marker.read_text() == key and libs.is_dir():
        return libs
    with _file_lock(base / ".lock"):
        if marker.is_file() and marker.read_text() == key and libs.is_dir():
            return libs
        _resolve(base, version, log4j_version)
        marker.write_text(key)
    return libs


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
    say(f"resolving Apache Kafka {version} jars with Maven into {libs} (first time only, ~70 MB download)")
    started = time.monotonic()
    log_path = base / "mvn.log"
    with open(log_path, "w") as log, _progress(started):
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=base).returncode
    jars = sorted(staging.glob("kafka_2.13-*.jar")) if staging.is_dir() else []
    if rc != 0 or not jars:
        tail = log_path.read_text(errors="replace").splitlines()[-6:]
        raise KafkaStartError(
            f"Maven could not resolve org.apache.kafka:kafka_2.13:{version} (mvn exit {rc}); check access "
            f"to Maven Central or a mirror in ~/.m2/settings.xml; full log {log_path}: {one_line(tail)}"
        )
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    count = len(list(libs.glob("*.jar")))
    say(f"resolved {count} jars ({_dir_mb(libs):.0f} MB) in {time.monotonic() - started:.0f}s")


@contextlib.contextmanager
def _progress(started: float, every: float = 10.0) -> Iterator[None]:
    """`mvn -q` is silent for minutes on a cold cache; say that it is still working."""
    done = threading.Event()
    repo = Path.home() / ".m2" / "repository"
    before = _dir_mb(repo)

    def tick() -> None:
        while not done.wait(every):
            grown = _dir_mb(repo) - before
            say(f"  still resolving: {time.monotonic() - started:.0f}s, ~{grown:.0f} MB downloaded")

    thread = threading.Thread(target=tick, name="kafka-local-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=1)


def _dir_mb(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total / 1e6
