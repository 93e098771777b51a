"""tokenpools.infra.mirror_local: Apache Kafka's own MirrorMaker 2 (dedicated mode, jars from Maven).

Real parts only. The unit tests need no broker: the mm2.properties that is written, the validation of
aliases and targets, the command line's argument checks, the readiness rule on status records and log
lines, and the log tail. The integration test runs two real clusters (the session's broker as the
source, a ``LocalKafka`` of its own as the target) and a real MirrorMaker process that runs only the
flow into the target. It checks the following:

- a matching topic is copied record for record, in order, as ``<source alias>.<topic>``;
- a clean stop (SIGTERM) and a start on the same data dir resume where it committed, with no duplicates;
- a SIGKILL and a start lose nothing (records the killed process had not committed may be copied
  again, but only as a replay of a contiguous run);
- topics the regex does not match, and the flow it was not asked to run, are not copied.

Nothing is stood in.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.conftest import create_topic, unique_topic_name
from tests.integration.harness import REPO, eventually
from tokenpools.infra.kafka_local import LocalKafka
from tokenpools.infra.mirror_local import MirrorMaker, MirrorMakerError
from tokenpools.infra.mirror_local.cli import cluster_arg
from tokenpools.infra.mirror_local.cli import main as cli_main
from tokenpools.infra.mirror_local.config import flows, mm2_config, render_properties
from tokenpools.infra.mirror_local.mirror import RUN_HEADER, is_our_mirror, log_tail
from tokenpools.infra.mirror_local.status import CHECKPOINT, HEARTBEAT, SOURCE, FlowStatus
from tokenpools.kafka.reader import read_records

if TYPE_CHECKING:
    from tests.integration.conftest import KafkaUnderTest

SRC, DST = "src", "dst"


# --- unit: no broker ---------------------------------------------------------------------------


def test_flows_are_every_ordered_pair_into_the_targets() -> None:
    assert flows(["a", "b", "c"]) == [("a", "b"), ("a", "c"), ("b", "a"), ("b", "c"), ("c", "a"), ("c", "b")]
    assert flows(["a", "b", "c"], ["b"]) == [("a", "b"), ("c", "b")]


def test_properties_name_every_cluster_flow_and_the_escaped_regex() -> None:
    config = mm2_config({"us-east": "127.0.0.1:1", "eu-west": "127.0.0.1:2"}, r"tokenpools\.region-summaries")
    assert config["clusters"] == "us-east, eu-west"
    assert config["us-east.bootstrap.servers"] == "127.0.0.1:1"
    assert config["eu-west.bootstrap.servers"] == "127.0.0.1:2"
    for flow in ("us-east->eu-west", "eu-west->us-east"):
        assert config[f"{flow}.enabled"] == "true"
        assert config[f"{flow}.topics"] == r"tokenpools\.region-summaries"
    assert config["replication.policy.class"] == "org.apache.kafka.connect.mirror.DefaultReplicationPolicy"
    # Connect's worker settings are read per target alias, not at the top level.
    assert config["eu-west.offset.flush.interval.ms"] == "1000"
    assert "offset.flush.interval.ms" not in config
    text = render_properties(config)
    # java.util.Properties reads a backslash as an escape: the regex's one backslash is written as two.
    assert "us-east->eu-west.topics = tokenpools\\\\.region-summaries\n" in text
    assert text.startswith("#")


def test_bad_aliases_and_targets_are_refused(tmp_path: Path) -> None:
    two = {"a": "127.0.0.1:1", "b": "127.0.0.1:2"}
    with pytest.raises(ValueError, match="at least two clusters"):
        MirrorMaker(tmp_path, {"a": "127.0.0.1:1"}, "t")
    with pytest.raises(ValueError, match="RFC 1123"):
        MirrorMaker(tmp_path, {"A_b": "127.0.0.1:1", "b": "127.0.0.1:2"}, "t")
    with pytest.raises(ValueError, match="not among the clusters"):
        MirrorMaker(tmp_path, two, "t", targets=["c"])
    with pytest.raises(ValueError, match="targets is empty"):
        MirrorMaker(tmp_path, two, "t", targets=[])
    assert MirrorMaker(tmp_path, two, "t", targets=["b"]).flows == [("a", "b")]
    assert not MirrorMaker(tmp_path, two, "t").is_running()


def test_cluster_argument_and_start_checks(capsys: pytest.CaptureFixture[str]) -> None:
    assert cluster_arg("us-east=127.0.0.1:9092, 127.0.0.1:9093") == ("us-east", "127.0.0.1:9092,127.0.0.1:9093")
    for bad in ("us-east", "us-east=", "US=127.0.0.1:1", "a=127.0.0.1:0", "a=host"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"expected ALIAS|RFC 1123|not HOST:PORT"):
            cluster_arg(bad)
    base = ["start", "--cluster", "a=127.0.0.1:1"]
    for argv, why in (([*base, "--topics", "t"], "give at least two --cluster"),
                      ([*base, "--cluster", "b=127.0.0.1:2", "--topics", "t", "--target", "c"],
                       "--target c is not one of the --cluster aliases"),
                      ([*base, "--cluster", "a=127.0.0.1:2", "--topics", "t"], "--cluster a given twice"),
                      ([*base, "--cluster", "b=127.0.0.1:2", "--topics", "t("], "is not a valid regex")):
        with pytest.raises(SystemExit) as info:
            cli_main(argv)
        assert info.value.code == 2, argv
        assert why in capsys.readouterr().err, argv


def _flow() -> FlowStatus:
    return FlowStatus(SRC, DST, "127.0.0.1:1", since_ms=1000)


def _status(flow: FlowStatus, what: str, state: str, ts: int) -> None:
    flow.apply_status(what, f'{{"state": "{state}", "trace": null}}'.encode(), ts)


def test_a_flow_is_ready_once_every_connector_of_this_run_runs() -> None:
    flow = _flow()
    for name in (SOURCE, CHECKPOINT, HEARTBEAT):
        _status(flow, f"status-connector-{name}", "RUNNING", 500)  # an earlier run's: ignored
    _status(flow, f"status-task-{HEARTBEAT}-0", "RUNNING", 500)
    assert not flow.ready()
    for name in (SOURCE, CHECKPOINT, HEARTBEAT):
        flow.apply_log(f"INFO [{name}|worker] src->dst is a leader for src->dst and configuration for {name} "
                       "is already up to date")
        _status(flow, f"status-connector-{name}", "RUNNING", 1500)
    assert not flow.ready()  # the heartbeat task has not run in this run yet
    _status(flow, f"status-task-{HEARTBEAT}-0", "RUNNING", 1600)
    assert flow.ready()
    assert "waiting" in _flow().missing()


def test_a_rewritten_connector_counts_only_once_it_runs_on_its_new_config() -> None:
    flow = _flow()
    for name in (CHECKPOINT, HEARTBEAT):
        flow.apply_log(f"is a leader for src->dst and configuration for {name} is already up to date")
        _status(flow, f"status-connector-{name}", "RUNNING", 1500)
    _status(flow, f"status-task-{HEARTBEAT}-0", "RUNNING", 1600)
    flow.apply_log(f"{SOURCE} connector configured for src->dst.")
    _status(flow, f"status-connector-{SOURCE}", "RUNNING", 1500)  # still on the old config
    flow.apply_config(f"connector-{SOURCE}", 1700)
    assert not flow.ready()
    _status(flow, f"status-connector-{SOURCE}", "RUNNING", 1800)
    assert flow.ready()
    flow.apply_log(f"{SOURCE} connector configured for other->dst.")  # another flow's line changes nothing
    assert flow.ready()
    _status(flow, f"status-task-{HEARTBEAT}-0", "FAILED", 1900)
    assert flow.failed() == [f"{HEARTBEAT}-0 FAILED: no trace"]


def test_log_tail_shows_the_latest_run_s_errors(tmp_path: Path) -> None:
    log = tmp_path / "mirror.log"
    log.write_text(f"{RUN_HEADER} 1 ===\nERROR old failure\n{RUN_HEADER} 2 ===\nINFO fine\n"
                   "ERROR new failure\nCaused by: java.net.ConnectException\n")
    assert log_tail(log) == ["ERROR new failure", "Caused by: java.net.ConnectException"]
    log.write_text(f"{RUN_HEADER} 3 ===\n" + "".join(f"INFO line {i}\n" for i in range(20)))
    assert log_tail(log, lines=3) == ["INFO line 17", "INFO line 18", "INFO line 19"]
    assert log_tail(tmp_path / "none.log") == [f"(no log at {tmp_path / 'none.log'})"]


def test_jars_command_prints_the_resolved_libs() -> None:
    out = subprocess.run([sys.executable, "-m", "tokenpools.infra.mirror_local", "jars"], cwd=REPO,
                         capture_output=True, text=True, timeout=600, check=True).stdout.strip()
    libs = Path(out)
    assert libs.is_dir() and any(libs.glob("connect-mirror-[0-9]*.jar"))


# --- integration: two real clusters and MirrorMaker ----------------------------------------------


@pytest.fixture(scope="module")
def target_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    broker = LocalKafka(tmp_path_factory.mktemp("mirror-target"))
    broker.start()
    yield broker
    broker.stop()


async def _produce(bootstrap: str, topic: str, values: list[bytes], every_s: float = 0.0) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"k")
            if every_s:
                await asyncio.sleep(every_s)
    finally:
        await producer.stop()


async def _values(bootstrap: str, topic: str) -> list[bytes]:
    return [v or b"" for _, _, v in await read_records(bootstrap, [topic], wait_s=20)]


async def _topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def _batch(name: str, n: int) -> list[bytes]:
    return [f"{name}-{i}".encode() for i in range(n)]


@pytest.mark.integration
async def test_mirror_copies_resumes_and_survives_a_kill(kafka: KafkaUnderTest, target_kafka: LocalKafka,
                                                         tmp_path: Path) -> None:
    t0 = time.monotonic()
    src, dst = kafka.bootstrap_servers, target_kafka.bootstrap_servers
    topic = unique_topic_name("mirrored")
    other = f"{topic}-unmatched"
    for name in (topic, other):
        await create_topic(src, name)
    await create_topic(dst, topic)  # the same name on the target: the flow into src is not run
    await _produce(dst, topic, [b"stays on dst"])
    await _produce(src, other, [b"never copied"])
    copy = f"{SRC}.{topic}"
    mirror = MirrorMaker(tmp_path / "mm", {SRC: src, DST: dst}, re.escape(topic), targets=[DST])
    assert mirror.flows == [(SRC, DST)]
    try:
        started = time.monotonic()
        await asyncio.to_thread(mirror.start)
        first_start = time.monotonic() - started
        pid = mirror.pid()
        assert pid is not None and is_our_mirror(pid, mirror.properties_path)
        assert not is_our_mirror(os.getpid(), mirror.properties_path)
        # Another handle on the same data dir sees the running process (how up --regions' ready file is used).
        assert MirrorMaker(tmp_path / "mm", {SRC: src, DST: dst}, re.escape(topic), targets=[DST]).pid() == pid

        one = _batch("one", 30)
        await _produce(src, topic, one)

        async def copied(want: int) -> list[bytes]:
            if copy not in await _topics(dst):
                return []
            got = await _values(dst, copy)
            return got if len(got) >= want else []

        assert await eventually(lambda: copied(len(one)), within=90) == one  # exact: in order, once each

        # A clean stop commits the source offsets: the next start resumes there, with no duplicate.
        await asyncio.to_thread(mirror.stop)
        assert not mirror.is_running() and not mirror.pid_path.exists()
        assert not is_our_mirror(pid, mirror.properties_path)
        two = _batch("two", 20)
        await _produce(src, topic, two)  # while it is down
        started = time.monotonic()
        await asyncio.to_thread(mirror.start)
        second_start = time.monotonic() - started
        assert await eventually(lambda: copied(len(one + two)), within=90) == one + two

        # SIGKILL mid-stream: nothing is lost; what was not committed is copied again as one contiguous run.
        three = _batch("three", 60)
        producing = asyncio.create_task(_produce(src, topic, three, every_s=0.02))
        await asyncio.sleep(0.6)
        await asyncio.to_thread(mirror.kill)
        assert not mirror.is_running()
        await producing
        await asyncio.to_thread(mirror.start)
        sent = one + two + three
        got = await eventually(lambda: copied(len(sent)), within=90)
        assert list(dict.fromkeys(got)) == sent  # every record, first copies in the source's order
        replayed = len(got) - len(sent)
        if replayed:  # the new process went back to its last committed offset and went on from there
            first = next(i for i, v in enumerate(got) if v in got[:i])
            assert got[first:] == sent[sent.index(got[first]):], got[first:]
        print(f"\nmirror_local: first start {first_start:.1f} s, restart after a stop {second_start:.1f} s; "
              f"{len(sent)} records sent, {len(got)} copies ({replayed} replayed after the SIGKILL)")

        # Not copied: the unmatched topic, and the flow into src (this process runs only flows into dst).
        await asyncio.sleep(3)  # over one topic refresh (2 s)
        assert f"{SRC}.{other}" not in await _topics(dst)
        assert f"{DST}.{topic}" not in await _topics(src)
        assert await _values(dst, topic) == [b"stays on dst"]
    finally:
        await asyncio.to_thread(mirror.stop)
    assert not mirror.is_running()
    print(f"mirror_local test: {time.monotonic() - t0:.1f} s")


@pytest.mark.integration
def test_a_cluster_that_does_not_answer_fails_the_start_with_a_reason(tmp_path: Path) -> None:
    mirror = MirrorMaker(tmp_path, {SRC: "127.0.0.1:1", DST: "127.0.0.1:2"}, "t", targets=[DST])
    with pytest.raises(MirrorMakerError, match="did not all start in time") as info:
        mirror.start(timeout=8)
    assert "\n" not in str(info.value)
    assert not mirror.is_running()
