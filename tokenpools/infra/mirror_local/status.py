"""Readiness: each flow's connectors report RUNNING in its Connect status topic, after this run configured them.

In dedicated mode every flow source->target is a Connect worker whose topics live on the target cluster:
`mm2-status.<source>.internal` holds records keyed `status-connector-<name>` and `status-task-<name>-<n>`
whose JSON value has a `state` (RUNNING, FAILED, UNASSIGNED, ...) and a `trace`; `mm2-configs.<source>.internal`
holds the connector configs (`connector-<name>`) and task-config commits (`commit-<name>`).

Both topics keep what earlier runs wrote, and a restarted MirrorMaker first resumes its connectors with the
stored configs; then each flow's leader compares them with what mm2.properties asks for and, if they
differ, writes new ones and the connectors restart. Only its log says which it decided (MirrorHerder:
"configuration for X is already up to date" or "X connector configured for a->b."). So a connector is
ready once that decision is in this run's log and it reported RUNNING in this run, after its new config
record if one was written; the heartbeat task, once RUNNING after its connector's latest task-config
commit of this run (an unchanged task config is not rewritten and its task not restarted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenpools.infra.mirror_local.errors import MirrorMakerError

SOURCE = "MirrorSourceConnector"
CHECKPOINT = "MirrorCheckpointConnector"
HEARTBEAT = "MirrorHeartbeatConnector"
CONNECTORS = (SOURCE, CHECKPOINT, HEARTBEAT)
# The heartbeat task always exists; the source connector has tasks only once a source topic matches,
# the checkpoint connector only once there are consumer groups.
TASKS = (f"{HEARTBEAT}-0",)

_FLOW = r"([a-z0-9-]+->[a-z0-9-]+)"
_UP_TO_DATE = re.compile(rf"is a leader for {_FLOW} and configuration for (\w+) is already up to date")
_CONFIGURED = re.compile(rf"\b(\w+) connector configured for {_FLOW}\.")
_LOST = re.compile(rf"lost leadership for (\w+) while trying to update the connector configuration for {_FLOW}")
_FAILED = re.compile(rf"Failed to configure (\w+) connector for {_FLOW}")


def status_topic(source: str) -> str:
    return f"mm2-status.{source}.internal"


def config_topic(source: str) -> str:
    return f"mm2-configs.{source}.internal"


@dataclass
class FlowStatus:
    """What this run's worker for one flow has reported so far (timestamps in ms since the epoch)."""

    source: str
    target: str
    bootstrap_servers: str  # the target cluster's
    since_ms: int
    connectors: dict[str, tuple[str, str | None, int]] = field(default_factory=dict)  # name -> (state, trace, ts)
    tasks: dict[str, tuple[str, str | None, int]] = field(default_factory=dict)  # "name-n" -> (state, trace, ts)
    configured: dict[str, int] = field(default_factory=dict)  # connector -> ts of its config record
    committed: dict[str, int] = field(default_factory=dict)  # connector -> ts of its task-config commit
    decided: dict[str, bool] = field(default_factory=dict)  # connector -> whether this run rewrote its config
    errors: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.source}->{self.target}"

    def apply_status(self, key: str, value: bytes | None, ts: int) -> None:
        if ts < self.since_ms or value is None:
            return
        try:
            status = json.loads(value)
        except ValueError:
            return
        entry = (str(status.get("state")), status.get("trace"), ts)
        if key.startswith("status-connector-"):
            self.connectors[key.removeprefix("status-connector-")] = entry
        elif key.startswith("status-task-"):
            self.tasks[key.removeprefix("status-task-")] = entry

    def apply_config(self, key: str, ts: int) -> None:
        if ts < self.since_ms:
            return
        if key.startswith("connector-"):
            self.configured[key.removeprefix("connector-")] = ts
        elif key.startswith("commit-"):
            self.committed[key.removeprefix("commit-")] = ts

    def apply_log(self, line: str) -> None:
        if match := _UP_TO_DATE.search(line):
            flow, connector, rewritten = match[1], match[2], False
        elif match := _CONFIGURED.search(line):
            connector, flow, rewritten = match[1], match[2], True
        elif match := _LOST.search(line):
            connector, flow, rewritten = match[1], match[2], False
        elif match := _FAILED.search(line):
            if match[2] == self.name:
                self.errors.append(f"MirrorMaker could not write the config of {match[1]}")
            return
        else:
            return
        if flow == self.name:
            self.decided[connector] = rewritten

    def _connector_ok(self, name: str) -> bool:
        state, _trace, ts = self.connectors.get(name, ("", None, 0))
        if name not in self.decided or state != "RUNNING":
            return False
        if self.decided[name]:  # restarted on the config this run wrote: only a later RUNNING counts
            return name in self.configured and ts >= self.configured[name]
        return True

    def _task_ok(self, task: str) -> bool:
        connector = task.rsplit("-", 1)[0]
        state, _trace, ts = self.tasks.get(task, ("", None, 0))
        return state == "RUNNING" and ts >= self.committed.get(connector, 0)

    def ready(self) -> bool:
        return all(self._connector_ok(c) for c in CONNECTORS) and all(self._task_ok(t) for t in TASKS)

    def failed(self) -> list[str]:
        """FAILED statuses of this run that no later RUNNING replaced."""
        entries = [*self.connectors.items(), *self.tasks.items()]
        failed = [f"{what} FAILED: {_first_line(trace)}" for what, (state, trace, _ts) in entries if state == "FAILED"]
        return self.errors + failed

    def missing(self) -> str:
        waiting = [
            f"connector {c}" + ("" if c in self.decided else " (not configured yet)")
            for c in CONNECTORS
            if not self._connector_ok(c)
        ]
        waiting += [f"task {t}" for t in TASKS if not self._task_ok(t)]
        return f"{self.name} waiting for {', '.join(waiting)}"


def _first_line(trace: str | None) -> str:
    return (trace or "no trace").strip().splitlines()[0][:300]


class LogFollower:
    """New whole lines of a log file from an offset on (this run's part of an appended log)."""

    def __init__(self, path: Path, offset: int) -> None:
        self.path, self.offset, self._partial = path, offset, b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except OSError:
            return []
        self.offset += len(chunk)
        data = self._partial + chunk
        *whole, self._partial = data.split(b"\n")
        return [line.decode(errors="replace") for line in whole]


def wait_running(
    flows: Sequence[FlowStatus],
    log: LogFollower,
    deadline: float,
    check: Callable[[], None],
    poll_s: float = 0.2,
) -> None:
    """Blocks until every flow is ready; `check` raises if the process died. Own thread and event loop,
    so it also works when called from async code (like kafka_local.probe)."""
    error: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(_wait(flows, log, deadline, check, poll_s))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, name="mirror-local-status", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()) + 15)
    if thread.is_alive():
        raise MirrorMakerError("MirrorMaker's status check did not return in time")
    if error:
        raise error[0]


async def _wait(
    flows: Sequence[FlowStatus], log: LogFollower, deadline: float, check: Callable[[], None], poll_s: float
) -> None:
    readers = [_FlowReader(flow) for flow in flows]
    try:
        while True:
            check()
            for line in log.lines():
                for flow in flows:
                    flow.apply_log(line)
            for reader in readers:
                await reader.poll()
                if problems := reader.flow.failed():
                    raise MirrorMakerError(f"MirrorMaker flow {reader.flow.name}: {'; '.join(problems)}")
            if all(r.flow.ready() for r in readers):
                return
            if time.monotonic() > deadline:
                waiting = "; ".join(r.flow.missing() for r in readers if not r.flow.ready())
                raise MirrorMakerError(f"MirrorMaker's connectors did not all start in time ({waiting})")
            await asyncio.sleep(poll_s)
    finally:
        for reader in readers:
            await reader.close()


class _FlowReader:
    """Reads one flow's status and config topics from the beginning into its FlowStatus."""

    def __init__(self, flow: FlowStatus) -> None:
        self.flow = flow
        self.topics = {status_topic(flow.source), config_topic(flow.source)}
        self._consumer: Any = None
        self._admin: Any = None
        self._assigned: set[str] = set()

    async def poll(self) -> None:
        if not await self._connect():
            return
        if self._assigned != self.topics:
            await self._assign()
        if not self._assigned:
            return
        batches = await self._consumer.getmany(timeout_ms=100, max_records=1000)
        for tp, records in batches.items():
            for record in records:
                key = (record.key or b"").decode(errors="replace")
                if tp.topic == config_topic(self.flow.source):
                    self.flow.apply_config(key, record.timestamp)
                else:
                    self.flow.apply_status(key, record.value, record.timestamp)

    async def _connect(self) -> bool:
        """False while the target cluster does not answer: the caller's deadline decides."""
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        if self._consumer is not None:
            return True
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.flow.bootstrap_servers, client_id="tokenpools-mirror-local-status",
            request_timeout_ms=5000,
        )  # fmt: skip
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.flow.bootstrap_servers, client_id="tokenpools-mirror-local-status",
            enable_auto_commit=False, auto_offset_reset="earliest", request_timeout_ms=10_000,
        )  # fmt: skip
        try:
            await admin.start()
            await consumer.start()
        except Exception:
            await _close(admin, consumer)
            return False
        self._admin, self._consumer = admin, consumer
        return True

    async def _assign(self) -> None:
        """The worker creates its topics as it starts: assign each once all its partitions have a leader."""
        from aiokafka import TopicPartition

        ready: list[Any] = []
        for topic in sorted(self.topics):
            try:
                partitions = _leading_partitions(await self._admin.describe_topics([topic]))
            except Exception:
                partitions = []
            if not partitions:
                return
            ready += [TopicPartition(topic, p) for p in partitions]
        self._consumer.assign(ready)
        await self._consumer.seek_to_beginning(*ready)
        self._assigned = set(self.topics)

    async def close(self) -> None:
        await _close(self._admin, self._consumer)


async def _close(admin: Any, consumer: Any) -> None:
    if consumer is not None:
        with contextlib.suppress(Exception):
            await consumer.stop()
    if admin is not None:
        with contextlib.suppress(Exception):
            await admin.close()


def _leading_partitions(described: list[dict[str, Any]]) -> list[int]:
    for entry in described:
        parts = entry.get("partitions") or []
        if entry.get("error_code", 0) == 0 and parts and all(p.get("leader", -1) >= 0 for p in parts):
            return sorted(int(p["partition"]) for p in parts)
    return []
