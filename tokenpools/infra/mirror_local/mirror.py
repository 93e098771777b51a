"""MirrorMaker 2 in dedicated mode: a plain `java` subprocess replicating topics between Kafka clusters."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from tokenpools.infra.kafka_local.errors import KafkaStartError, one_line
from tokenpools.infra.kafka_local.java import find_java
from tokenpools.infra.kafka_local.process import die_with_parent_hook, pid_alive, rotate
from tokenpools.infra.mirror_local.config import JVM_FLAGS, LOG4J2_PROPERTIES, flows, mm2_config, render_properties
from tokenpools.infra.mirror_local.errors import MirrorMakerError, say
from tokenpools.infra.mirror_local.jars import MAIN_CLASS, MIRROR_VERSION, ensure_mirror_jars
from tokenpools.infra.mirror_local.status import FlowStatus, LogFollower, wait_running

PID_FILE = "mirror.pid"
LOG_FILE = "mirror.log"
PROPERTIES_FILE = "mm2.properties"
RUN_HEADER = "=== mirror_local: MirrorMaker start"

# Cluster aliases become topic-name prefixes (a.T), config-key prefixes (a->b.enabled) and group ids:
# RFC 1123 labels keep them valid in all three.
ALIAS_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def check_alias(alias: str) -> str:
    if not ALIAS_RE.match(alias):
        raise ValueError(
            f"cluster alias {alias!r} is not an RFC 1123 label (lower-case letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)"
        )
    return alias


class MirrorMaker:
    """Apache Kafka's own MirrorMaker 2 (`org.apache.kafka.connect.mirror.MirrorMaker`) between `clusters`.

    Every ordered pair of clusters is a flow replicating the topics that match `topics` (a Java regex,
    matched against the whole name) with the default replication policy: topic T of cluster a appears
    on b as `a.T`, and a remote topic is never replicated back to the cluster it came from. `targets`
    restricts this process to the flows *into* those clusters (MirrorMaker's `--clusters`). Source
    offsets live in the target clusters (Connect's mm2-offsets topics), so a new process on another
    data dir resumes where the last one committed.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        clusters: Mapping[str, str],
        topics: str,
        targets: Sequence[str] | None = None,
        *,
        refresh_seconds: float = 2,
        sync_group_offsets: bool = False,
        version: str = MIRROR_VERSION,
    ) -> None:
        if len(clusters) < 2:
            raise ValueError(f"MirrorMaker needs at least two clusters, got {sorted(clusters)}")
        for alias in clusters:
            check_alias(alias)
        unknown = sorted(set(targets or ()) - set(clusters))
        if unknown:
            raise ValueError(f"target(s) {unknown} are not among the clusters {sorted(clusters)}")
        if targets is not None and not targets:
            raise ValueError("targets is empty: pass None for every flow, or at least one cluster alias")
        self.data_dir = Path(data_dir).resolve()
        self.clusters = dict(clusters)
        self.topics = topics
        self.targets = list(targets) if targets is not None else None
        self.refresh_seconds = refresh_seconds
        self.sync_group_offsets = sync_group_offsets
        self.version = version
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[bytes] | None = None

    # -- paths -------------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE

    @property
    def pid_path(self) -> Path:
        return self.data_dir / PID_FILE

    @property
    def properties_path(self) -> Path:
        return self.data_dir / PROPERTIES_FILE

    @property
    def flows(self) -> list[tuple[str, str]]:
        """The (source, target) flows this process runs."""
        return flows(list(self.clusters), self.targets)

    def config(self) -> dict[str, str]:
        return mm2_config(
            self.clusters, self.topics, refresh_seconds=self.refresh_seconds, sync_group_offsets=self.sync_group_offsets
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 120) -> MirrorMaker:
        """Returns once every flow's source, checkpoint and heartbeat connectors (and the heartbeat
        task) report RUNNING in the flow's status topic; raises with the log's errors if the process exits."""
        if self.is_running():
            return self
        started = time.monotonic()
        java = find_java()
        libs = ensure_mirror_jars(self.version)
        self._write_config()
        since_ms = int(time.time() * 1000) - 1000  # status records of earlier runs do not count
        log = LogFollower(self.log_path, self._launch(java, libs))
        statuses = [FlowStatus(src, dst, self.clusters[dst], since_ms) for src, dst in self.flows]
        try:
            wait_running(statuses, log, started + timeout, self._raise_if_exited)
        except _Exited:
            raise
        except KafkaStartError as exc:
            self._kill_now()
            raise MirrorMakerError(f"{exc}; log {self.log_path}: {one_line(log_tail(self.log_path))}") from None
        except BaseException:
            self._kill_now()
            raise
        names = ", ".join(f"{s}->{t}" for s, t in self.flows)
        say(f"MirrorMaker {self.version} running {names} in {time.monotonic() - started:.1f}s (pid {self.pid()})")
        return self

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM: the tasks commit their source offsets and leave their groups; SIGKILL if it hangs."""
        pid = self.pid()
        if pid is None:
            self._forget()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_exit(pid, timeout):
            say(f"MirrorMaker pid {pid} ignored SIGTERM for {timeout:.0f}s; sending SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_exit(pid, 10)
        self._forget()

    def kill(self) -> None:
        """SIGKILL now: offsets not yet flushed are lost, so the next start replays those records."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_exit(pid, 10)
        self._forget()

    def pid(self) -> int | None:
        """Our child, or a MirrorMaker that another process left running on this data dir."""
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if is_our_mirror(pid, self.properties_path) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def wait(self) -> int:
        """Foreground mode: returns MirrorMaker's exit code."""
        if self._proc is None:
            raise RuntimeError("wait() needs a MirrorMaker started by this object")
        return self._proc.wait()

    def __enter__(self) -> MirrorMaker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- steps -------------------------------------------------------------------------------

    def _write_config(self) -> None:
        self.properties_path.write_text(render_properties(self.config()))
        (self.data_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)

    def _command(self, java: str, libs: Path) -> list[str]:
        cmd = [
            java, *JVM_FLAGS, f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp", f"{libs}/*", MAIN_CLASS, str(self.properties_path),
        ]  # fmt: skip
        if self.targets is not None:
            cmd += ["--clusters", *self.targets]  # after the file: --clusters takes one or more values
        return cmd

    def _launch(self, java: str, libs: Path) -> int:
        """Returns where this run's part of the log starts."""
        rotate(self.log_path)
        with open(self.log_path, "ab") as log:
            log.write(f"{RUN_HEADER} {time.strftime('%Y-%m-%dT%H:%M:%S')} ===\n".encode())
            log.flush()
            offset = log.tell()
            in_main = threading.current_thread() is threading.main_thread()
            self._proc = subprocess.Popen(
                self._command(java, libs),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,  # Ctrl-C in the terminal reaches us, and we stop it cleanly
                # The signal fires when the launching *thread* exits: only tie it to the main thread.
                preexec_fn=die_with_parent_hook() if in_main else None,
            )
        self.pid_path.write_text(f"{self._proc.pid}\n")
        return offset

    def _raise_if_exited(self) -> None:
        if self._proc is None or self._proc.poll() is None:
            return
        rc = self._proc.returncode
        self._forget()
        raise _Exited(
            f"MirrorMaker exited during start (exit {rc}); log {self.log_path}: {one_line(log_tail(self.log_path))}"
        )

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

    def _forget(self) -> None:
        self._proc = None
        with contextlib.suppress(OSError):
            self.pid_path.unlink()


class _Exited(MirrorMakerError):
    """The process exited during start; the message has its log's errors already."""


def is_our_mirror(pid: int, properties: Path) -> bool:
    """A stale pid file may name a recycled pid: only trust a java running MirrorMaker on our config."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return MAIN_CLASS.encode() in argv and str(properties).encode() in argv and pid_alive(pid)


def log_tail(path: Path, lines: int = 8) -> list[str]:
    """Error lines of the latest run only (the log is appended across restarts), else its last lines."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return [f"(no log at {path})"]
    run = text.rsplit(RUN_HEADER, 1)[-1].splitlines()[1:]
    errors = [ln for ln in run if re.search(r"\b(ERROR|FATAL)\b|Exception\b|Error:|^Caused by", ln)]
    if not errors:
        return run[-lines:]
    return list(dict.fromkeys(errors[: lines - 2] + errors[-2:]))
