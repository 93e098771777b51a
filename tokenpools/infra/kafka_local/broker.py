"""The broker: a plain `java` subprocess that keeps its data, ports and cluster id in one directory."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tokenpools.infra.kafka_local.cds import cds_archive, cds_flags, finish_cds_dump
from tokenpools.infra.kafka_local.config import (
    JVM_FLAGS,
    LOG4J2_PROPERTIES,
    TOOL_JVM_FLAGS,
    default_server_config,
    render_server_properties,
)
from tokenpools.infra.kafka_local.errors import KafkaStartError, one_line, say
from tokenpools.infra.kafka_local.jars import KAFKA_VERSION, LOG4J_VERSION, ensure_jars
from tokenpools.infra.kafka_local.java import find_java
from tokenpools.infra.kafka_local.ports import HOST, free_port, other_free_port, port_accepts, port_in_use
from tokenpools.infra.kafka_local.probe import probe
from tokenpools.infra.kafka_local.process import (
    RUN_HEADER,
    die_with_parent_hook,
    is_our_broker,
    log_tail,
    pid_alive,
    rotate,
)

STATE_FILE = "kafka-local.json"
PID_FILE = "kafka.pid"
LOG_FILE = "kafka.log"


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
        return cls(new_cluster_id())

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2) + "\n")
        tmp.replace(path)


def new_cluster_id() -> str:
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
        self.controller_port = controller_port or self._state.controller_port or other_free_port(self.port)
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
        say(f"Kafka {self.version} ready at {self.bootstrap_servers} in {time.monotonic() - started:.1f}s")
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
            say(f"broker pid {pid} ignored SIGTERM for {timeout:.0f}s; sending SIGKILL")
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
        return pid if is_our_broker(pid, self.server_properties) else None

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
                f"kafka.tools.StorageTool format failed (exit {proc.returncode}) for {self.log_dirs}: {one_line(tail)}"
            )

    def _launch(self, java: str, libs: Path, detach: bool) -> None:
        rotate(self.log_path)
        flags, self._state.cds_dump = cds_flags(cds_archive(java, libs))
        self._state.save(self.data_dir / STATE_FILE)
        cmd = [
            java, *JVM_FLAGS, *flags, f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
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
                preexec_fn=None if detach or not in_main else die_with_parent_hook(),
            )
        self.pid_path.write_text(f"{self._proc.pid}\n")

    def _wait_ready(self, deadline: float) -> None:
        while True:
            self._raise_if_exited()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KafkaStartError(
                    f"broker did not become ready at {self.bootstrap_servers} in time; "
                    f"log {self.log_path}: {one_line(log_tail(self.log_path))}"
                )
            if port_accepts(self.port) and probe(self.bootstrap_servers, timeout=min(5.0, remaining)):
                return
            time.sleep(0.2)

    def _raise_if_exited(self) -> None:
        if self._proc is None or self._proc.poll() is None:
            return
        rc, tail = self._proc.returncode, log_tail(self.log_path)
        self._forget()
        if any("Address already in use" in line for line in tail):
            raise KafkaStartError(
                f"port {self.port} or {self.controller_port} on {HOST} is already in use; "
                f"choose other ports (log {self.log_path})"
            )
        raise KafkaStartError(f"Kafka broker exited early (exit {rc}); log {self.log_path}: {one_line(tail)}")

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
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
            finish_cds_dump(Path(self._state.cds_dump), keep=clean_exit)
            self._state.cds_dump = None
            self._state.save(self.data_dir / STATE_FILE)
