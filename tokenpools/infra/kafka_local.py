"""A real single-node Apache Kafka (KRaft) started from jars that Maven resolves.

There is no Docker engine and no Kafka download site on our machines, but Maven Central is reachable,
so the broker's classpath is `org.apache.kafka:kafka_2.13` plus a log4j 2 SLF4J binding, resolved
once into a cache outside the repo. The broker is a plain `java` subprocess that keeps its data in
one directory, so tests can stop it mid-run and start it again on the same port with the data intact.

Command line (also wrapped by deploy/kafka/kafka-local):

    python -m tokenpools.infra.kafka_local start [--data-dir DIR] [--port P] [--detach]
    python -m tokenpools.infra.kafka_local stop|status [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.25.3"
HOST = "127.0.0.1"
MIN_JAVA = 17

# Kept byte-identical to deploy/kafka/pom.xml (a unit test checks it): deploy/ is not a Python
# package, so the module carries its own copy and writes it into the jar cache. Versions are
# properties so `-Dkafka.version=...` picks another release without editing the file.
POM_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<!--
  Classpath of the local Apache Kafka broker used for development and tests.
  tokenpools.infra.kafka_local copies this file into ~/.cache/tokenpools/kafka/<version>/ and runs
    mvn -q -B dependency:copy-dependencies -DoutputDirectory=libs -Dkafka.version=<version>
  then starts `java -cp 'libs/*' kafka.Kafka server.properties`.
  This file must stay identical to POM_XML in tokenpools/infra/kafka_local.py.
-->
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 http://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.tokenpools</groupId>
  <artifactId>tokenpools-kafka-local</artifactId>
  <version>1</version>
  <packaging>pom</packaging>

  <properties>
    <kafka.version>4.1.1</kafka.version>
    <log4j.version>2.25.3</log4j.version>
    <slf4j.version>2.0.17</slf4j.version>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
  </properties>

  <dependencies>
    <!-- The broker (kafka.Kafka) and the KRaft storage tool (kafka.tools.StorageTool). -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>${kafka.version}</version>
    </dependency>
    <!-- Kafka's pom brings no SLF4J binding (the broker would log nothing) and slf4j-api 1.7,
         which the SLF4J 2 binding below cannot serve: pin the 2.x API, which 1.7 callers accept. -->
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

# Kept byte-identical to deploy/kafka/log4j2.properties. Everything goes to stdout, which is
# redirected to <data-dir>/kafka.log, so JVM crashes and log lines end up in one file.
LOG4J2_PROPERTIES = """\
# Log4j 2 configuration of the local Kafka broker (tokenpools.infra.kafka_local).
# The broker's stdout and stderr are redirected to <data-dir>/kafka.log.
# This file must stay identical to LOG4J2_PROPERTIES in tokenpools/infra/kafka_local.py.
status = warn
name = tokenpools-kafka-local
# Kafka logs its own shutdown from a JVM shutdown hook; log4j must not stop before it.
shutdownHook = disable

appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.target = SYSTEM_OUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n

rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT

# Per-request and per-partition state chatter drowns the lines that explain a failure.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
"""

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

STATE_FILE = "kafka-local.json"
PID_FILE = "kafka.pid"
LOG_FILE = "kafka.log"
RUN_HEADER = "=== kafka_local: broker start"
MAX_LOG_BYTES = 50 * 1024 * 1024


class KafkaStartError(RuntimeError):
    """One-line, actionable reason why the local broker could not start."""


def _say(msg: str) -> None:
    print(f"kafka_local: {msg}", file=sys.stderr, flush=True)


def _one_line(lines: list[str], limit: int = 900) -> str:
    text = " | ".join(line.strip() for line in lines if line.strip())
    return text if len(text) <= limit else "..." + text[-limit:]


# ---------------------------------------------------------------------------------------------
# Tools: java and mvn
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Jar cache
# ---------------------------------------------------------------------------------------------


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
    _say(f"resolving Apache Kafka {version} jars with Maven into {libs} (first time only, ~70 MB download)")
    started = time.monotonic()
    log_path = base / "mvn.log"
    with open(log_path, "w") as log, _progress(started):
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=base).returncode
    jars = sorted(staging.glob("kafka_2.13-*.jar")) if staging.is_dir() else []
    if rc != 0 or not jars:
        tail = log_path.read_text(errors="replace").splitlines()[-6:]
        raise KafkaStartError(
            f"Maven could not resolve org.apache.kafka:kafka_2.13:{version} (mvn exit {rc}); check access "
            f"to Maven Central or a mirror in ~/.m2/settings.xml; full log {log_path}: {_one_line(tail)}"
        )
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    count = len(list(libs.glob("*.jar")))
    _say(f"resolved {count} jars ({_dir_mb(libs):.0f} MB) in {time.monotonic() - started:.0f}s")


@contextlib.contextmanager
def _progress(started: float, every: float = 10.0) -> Iterator[None]:
    """`mvn -q` is silent for minutes on a cold cache; say that it is still working."""
    done = threading.Event()
    repo = Path.home() / ".m2" / "repository"
    before = _dir_mb(repo)

    def tick() -> None:
        while not done.wait(every):
            grown = _dir_mb(repo) - before
            _say(f"  still resolving: {time.monotonic() - started:.0f}s, ~{grown:.0f} MB downloaded")

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


# ---------------------------------------------------------------------------------------------
# Ports, pids, logs
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    """SO_REUSEADDR like the JVM's server sockets, so our own TIME_WAIT after a restart is not 'in use'."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
        return False


def port_accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _is_our_broker(pid: int, server_properties: Path) -> bool:
    """A stale pid file may name a recycled pid: only trust a java running our config file."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in argv and str(server_properties).encode() in argv and _pid_alive(pid)


def _log_tail(path: Path, lines: int = 8) -> list[str]:
    """Error lines of the latest run only (the log is appended across restarts), else its last lines."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return [f"(no log at {path})"]
    run = text.rsplit(RUN_HEADER, 1)[-1].splitlines()[1:]
    errors = [ln for ln in run if re.search(r"\b(ERROR|FATAL)\b|Exception\b|Error:|^Caused by", ln)]
    if not errors:
        return run[-lines:]
    # The first errors name the cause; the last ones say how it ended.
    return list(dict.fromkeys(errors[: lines - 2] + errors[-2:]))


def _die_with_parent_hook() -> Callable[[], None] | None:
    """Linux PR_SET_PDEATHSIG: a broker owned by a killed pytest must not outlive it.

    libc is loaded here, in the parent: the hook runs between fork and exec, where loading a
    library could deadlock on a lock that another thread held at fork time.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


# ---------------------------------------------------------------------------------------------
# The broker
# ---------------------------------------------------------------------------------------------


@dataclass
class _State:
    """What must survive a restart of the broker (and of Python): ids and ports."""

    cluster_id: str
    port: int | None = None
    controller_port: int | None = None
    cds_dump: str | None = None  # class archive the running broker writes when it exits

    @classmethod
    def load(cls, path: Path) -> _State:
        with contextlib.suppress(OSError, ValueError, TypeError):
            raw = json.loads(path.read_text())
            return cls(raw["cluster_id"], raw.get("port"), raw.get("controller_port"), raw.get("cds_dump"))
        return cls(_new_cluster_id())

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2) + "\n")
        tmp.replace(path)


def _new_cluster_id() -> str:
    """16 random bytes in URL-safe base64, never starting with '-' (as Kafka's Uuid.randomUuid does):
    the storage tool's argument parser would take such an id for an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class LocalKafka:
    """A single-node KRaft broker+controller whose data, ports and cluster id survive restarts."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        controller_port: int | None = None,
        version: str = KAFKA_VERSION,
        *,
        auto_create_topics: bool = False,
        overrides: Mapping[str, str | int] | None = None,
        log4j_version: str = LOG4J_VERSION,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.version = version
        self.log4j_version = log4j_version
        self.auto_create_topics = auto_create_topics
        self.overrides = dict(overrides or {})
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._state = _State.load(self.data_dir / STATE_FILE)
        self.port = port or self._state.port or free_port()
        self.controller_port = controller_port or self._state.controller_port or _other_free_port(self.port)
        self._proc: subprocess.Popen[bytes] | None = None

    # -- paths -------------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE

    @property
    def server_properties(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "kraft-logs"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / PID_FILE

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 90, *, detach: bool = False) -> LocalKafka:
        """Blocks until a Kafka client gets cluster metadata, not merely until the port opens."""
        if self.is_running():
            return self
        started = time.monotonic()
        java = find_java()
        self._check_ports()
        libs = ensure_jars(self.version, self.log4j_version)
        self._write_config()
        self._format_storage(java, libs)
        self._launch(java, libs, detach)
        try:
            self._wait_ready(started + timeout)
        except BaseException:
            self._kill_now()
            raise
        _say(f"Kafka {self.version} ready at {self.bootstrap_servers} in {time.monotonic() - started:.1f}s")
        return self

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM gives a clean shutdown (fast recovery on the next start); SIGKILL if it hangs."""
        pid = self.pid()
        if pid is None:
            self._forget()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        clean = self._wait_exit(pid, timeout)
        if not clean:
            _say(f"broker pid {pid} ignored SIGTERM for {timeout:.0f}s; sending SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_exit(pid, 10)
        self._forget(clean_exit=clean)

    def restart(self, timeout: float = 90) -> LocalKafka:
        self.stop()
        return self.start(timeout)

    async def astart(self, timeout: float = 90) -> LocalKafka:  # noqa: ASYNC109 - the broker's deadline
        """For outage tests: the caller's event loop (and its Kafka clients) keeps running."""
        return await asyncio.to_thread(self.start, timeout)

    async def astop(self, timeout: float = 30) -> None:  # noqa: ASYNC109 - the broker's deadline
        await asyncio.to_thread(self.stop, timeout)

    def pid(self) -> int | None:
        """Our child, or a broker that another process (`start --detach`) left on this data dir."""
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_our_broker(pid, self.server_properties) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def wait(self) -> int:
        """Foreground mode: returns the broker's exit code."""
        if self._proc is None:
            raise RuntimeError("wait() needs a broker started by this object")
        return self._proc.wait()

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- steps -------------------------------------------------------------------------------

    def _check_ports(self) -> None:
        for name, port in (("broker", self.port), ("controller", self.controller_port)):
            if port_in_use(port):
                raise KafkaStartError(
                    f"{name} port {HOST}:{port} is already in use; stop whatever listens there "
                    f"(`ss -ltnp 'sport = :{port}'`) or choose another port"
                )

    def _write_config(self) -> None:
        self._state.port, self._state.controller_port = self.port, self.controller_port
        self._state.save(self.data_dir / STATE_FILE)
        self.server_properties.write_text(render_server_properties(self._config()))
        (self.data_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)

    def _config(self) -> dict[str, str]:
        config = default_server_config(self.port, self.controller_port, self.log_dirs)
        config["auto.create.topics.enable"] = str(self.auto_create_topics).lower()
        config.update({key: str(value) for key, value in self.overrides.items()})
        return config

    def _format_storage(self, java: str, libs: Path) -> None:
        """Format only once: formatting again would need a wipe, and restarts must keep the data."""
        if (self.log_dirs / "meta.properties").is_file():
            return
        cmd = [
            java, *TOOL_JVM_FLAGS, f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format",
            "-t", self._state.cluster_id, "-c", str(self.server_properties), "--standalone",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).splitlines()[-6:]
            raise KafkaStartError(
                f"kafka.tools.StorageTool format failed (exit {proc.returncode}) for {self.log_dirs}: {_one_line(tail)}"
            )

    def _launch(self, java: str, libs: Path, detach: bool) -> None:
        _rotate(self.log_path)
        cds_flags, self._state.cds_dump = _cds_flags(_cds_archive(java, libs))
        self._state.save(self.data_dir / STATE_FILE)
        cmd = [
            java, *JVM_FLAGS, *cds_flags, f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.data_dir}", "-cp", f"{libs}/*", "kafka.Kafka", str(self.server_properties),
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            log.write(f"{RUN_HEADER} {time.strftime('%Y-%m-%dT%H:%M:%S')} ===\n".encode())
            log.flush()
            in_main = threading.current_thread() is threading.main_thread()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,  # Ctrl-C in the terminal reaches us, and we stop it cleanly
                # The signal fires when the launching *thread* exits: only tie it to the main thread.
                preexec_fn=None if detach or not in_main else _die_with_parent_hook(),
            )
        self.pid_path.write_text(f"{self._proc.pid}\n")

    def _wait_ready(self, deadline: float) -> None:
        while True:
            self._raise_if_exited()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KafkaStartError(
                    f"broker did not become ready at {self.bootstrap_servers} in time; "
                    f"log {self.log_path}: {_one_line(_log_tail(self.log_path))}"
                )
            if port_accepts(self.port) and probe(self.bootstrap_servers, timeout=min(5.0, remaining)):
                return
            time.sleep(0.2)

    def _raise_if_exited(self) -> None:
        if self._proc is None or self._proc.poll() is None:
            return
        rc, tail = self._proc.returncode, _log_tail(self.log_path)
        self._forget()
        if any("Address already in use" in line for line in tail):
            raise KafkaStartError(
                f"port {self.port} or {self.controller_port} on {HOST} is already in use; "
                f"choose other ports (log {self.log_path})"
            )
        raise KafkaStartError(f"Kafka broker exited early (exit {rc}); log {self.log_path}: {_one_line(tail)}")

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _kill_now(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._forget()

    def _forget(self, clean_exit: bool = False) -> None:
        self._proc = None
        with contextlib.suppress(OSError):
            self.pid_path.unlink()
        if self._state.cds_dump:
            _finish_cds_dump(Path(self._state.cds_dump), keep=clean_exit)
            self._state.cds_dump = None
            self._state.save(self.data_dir / STATE_FILE)


def _cds_archive(java: str, libs: Path) -> Path | None:
    """AppCDS halves broker startup (about 5 s to 2.5 s here): the JVM maps Kafka's already parsed
    classes instead of loading thousands from jars. An archive is valid for one JVM build and one
    jar set only, so both are in its name. TOKENPOOLS_KAFKA_CDS=0 turns it off."""
    if os.environ.get("TOKENPOOLS_KAFKA_CDS", "1") == "0":
        return None
    real = Path(os.path.realpath(java))
    try:
        stat, resolved = real.stat(), (libs.parent / ".resolved").read_text()
    except OSError:
        return None
    key = f"{real}\0{stat.st_size}\0{stat.st_mtime_ns}\0{resolved}"
    _drop_stale_cds_dumps(libs.parent)
    return libs.parent / f"cds-{hashlib.sha256(key.encode()).hexdigest()[:12]}.jsa"


def _cds_flags(archive: Path | None) -> tuple[list[str], str | None]:
    """Use the archive if there is one, else have this broker write one when it exits cleanly.

    Each writer gets its own temporary name, so concurrent brokers never share a half-written file.
    """
    if archive is None:
        return [], None
    if archive.is_file():
        return [f"-XX:SharedArchiveFile={archive}"], None
    dump = archive.with_name(f"{archive.name}.{uuid.uuid4().hex[:8]}.tmp")
    # Dumping warns about every class it skips: noise in kafka.log, and nothing to act on.
    return [f"-XX:ArchiveClassesAtExit={dump}", "-Xlog:cds=off", "-Xlog:cds+dynamic=off"], str(dump)


def _finish_cds_dump(dump: Path, keep: bool) -> None:
    """Only a broker that exited on SIGTERM finished its archive; a killed one may have left half."""
    final = dump.with_name(dump.name.rsplit(".", 2)[0])
    with contextlib.suppress(OSError):
        if keep and dump.stat().st_size > 0:
            dump.replace(final)
        else:
            dump.unlink()


def _drop_stale_cds_dumps(directory: Path, max_age_s: float = 3600) -> None:
    """Dumps of brokers whose owner died are never finished; they are 50 MB each."""
    for dump in directory.glob("cds-*.jsa.*.tmp"):
        with contextlib.suppress(OSError):
            if time.time() - dump.stat().st_mtime > max_age_s:
                dump.unlink()


def _other_free_port(taken: int) -> int:
    while (port := free_port()) == taken:
        pass
    return port


def _rotate(log_path: Path) -> None:
    with contextlib.suppress(OSError):
        if log_path.stat().st_size > MAX_LOG_BYTES:
            log_path.replace(log_path.with_suffix(".log.1"))


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


# ---------------------------------------------------------------------------------------------
# Readiness probe
# ---------------------------------------------------------------------------------------------


def probe(bootstrap_servers: str, timeout: float = 5.0) -> bool:
    """Runs in its own thread and loop, so it also works when called from async code."""
    result: list[bool] = [False]

    def run() -> None:
        result[0] = asyncio.run(_probe(bootstrap_servers, seconds=timeout))

    thread = threading.Thread(target=run, name="kafka-local-probe", daemon=True)
    thread.start()
    thread.join(timeout + 5)
    return result[0]


async def _probe(bootstrap_servers: str, *, seconds: float) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id="tokenpools-kafka-local-probe",
        request_timeout_ms=max(1000, int(seconds * 1000)),
    )
    try:
        async with asyncio.timeout(seconds):
            await admin.start()
            cluster = await admin.describe_cluster()
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    return bool(cluster.get("brokers")) and cluster.get("controller_id", -1) not in (-1, None)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def default_data_dir() -> Path:
    return cache_root() / "kafka-data"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tokenpools.infra.kafka_local", description="Local single-node Apache Kafka (KRaft)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("start", "start the broker (foreground until Ctrl-C, or --detach)"),
        ("stop", "stop a detached broker"),
        ("status", "is a broker running on this data dir? (exit 0 yes, 3 no)"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--data-dir", type=Path, default=default_data_dir(), help="default: %(default)s")
        cmd.add_argument("--timeout", type=float, default=90 if name == "start" else 30)
        if name == "start":
            cmd.add_argument("--port", type=int, default=None, help="PLAINTEXT port (default: last or free)")
            cmd.add_argument("--controller-port", type=int, default=None)
            cmd.add_argument("--version", default=KAFKA_VERSION, help="Kafka version (default: %(default)s)")
            cmd.add_argument("--detach", action="store_true", help="leave it running and return")
            cmd.add_argument("--auto-create-topics", action="store_true")
    return parser


def _cmd_start(args: argparse.Namespace) -> int:
    kafka = LocalKafka(
        args.data_dir, args.port, args.controller_port, args.version, auto_create_topics=args.auto_create_topics
    )
    if kafka.is_running():
        print(kafka.bootstrap_servers)
        _say(f"already running (pid {kafka.pid()}) on {kafka.data_dir}")
        return 0
    if args.detach:
        kafka.start(args.timeout, detach=True)
        print(kafka.bootstrap_servers, flush=True)
        _say(f"detached (pid {kafka.pid()}); log {kafka.log_path}; stop with `stop --data-dir {kafka.data_dir}`")
        return 0
    return _run_foreground(kafka, args.timeout)


def _run_foreground(kafka: LocalKafka, timeout: float) -> int:
    """SIGTERM is turned into Ctrl-C, so both stop the broker cleanly at any moment, even mid-start."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        kafka.start(timeout)
        print(kafka.bootstrap_servers, flush=True)
        _say(f"running; log {kafka.log_path}; Ctrl-C stops it")
        rc = kafka.wait()
    except KeyboardInterrupt:
        _say("stopping")
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        kafka.stop()
        return 0
    kafka.stop()  # tidies the pid file and any unfinished class archive
    _say(f"broker exited with code {rc}; log {kafka.log_path}")
    return rc


def _cmd_stop(args: argparse.Namespace) -> int:
    if not (args.data_dir / STATE_FILE).is_file():
        _say(f"no broker state in {args.data_dir}")
        return 0
    kafka = LocalKafka(args.data_dir)
    pid = kafka.pid()
    if pid is None:
        _say(f"no broker running on {kafka.data_dir}")
        return 0
    kafka.stop(args.timeout)
    _say(f"stopped pid {pid}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    if not (args.data_dir / STATE_FILE).is_file():
        print(f"stopped (no broker state in {args.data_dir})")
        return 3
    kafka = LocalKafka(args.data_dir)
    pid = kafka.pid()
    if pid is None:
        print(f"stopped ({kafka.data_dir})")
        return 3
    ready = "ready" if probe(kafka.bootstrap_servers) else "not answering"
    print(f"running pid={pid} bootstrap={kafka.bootstrap_servers} {ready} ({kafka.data_dir})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"start": _cmd_start, "stop": _cmd_stop, "status": _cmd_status}
    try:
        return handlers[args.command](args)
    except KafkaStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
