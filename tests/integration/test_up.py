"""`tokenpools up` as a user runs it: a subprocess on the example config, against the session's broker.

Everything is real: the command starts a pipeline worker subprocess, the scaler with emulator
replicas and two admitters; the test sends chat completions with the demo keys through both
admitters and checks that the events reached the pipeline, that the pipeline's states came back to
both admitters, that the scaler's replica report (with endpoints) is on the topic and that the
pipeline counts the ready replicas it reports, that the history process holds exactly the events the
admitters put on the requests topic (and the pipeline counted) and answers a tenant's
``/v1/usage?granularity=hour`` with that tenant's rows only, then that a signal stops all of it cleanly.
The SIGINT variant stops after the first requests: it checks the other signal's clean stop, not the loop
again. ``--bootstrap`` and ``--topic-prefix`` keep it on the shared test broker; the worker gets short
windows (``--worker-arg``) so the first states come within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from dashboards.promql import exposed_names
from schemas import topics
from schemas.records import ReplicasReport, RequestEvent
from schemas.wire import BadRecords, decode, decode_request_events
from tests.integration.harness import REPO, Kafka, eventually, settled, totals_are
from tests.metric_names import STANDALONE_ONLY, missing

pytestmark = pytest.mark.integration
POOL = "llama-3-8b"
KEYS = {"acme-prod": "tp-demo-acme", "tenant-b-standard": "tp-demo-tenant-b"}  # guaranteed, elastic
TENANTS = {"acme-prod": "acme", "tenant-b-standard": "tenant-b"}
DECISIONS = ("admitted", "queued_admitted", "refused")
WORKER_ARGS = ["--tumbling-seconds=1", "--hop-size-seconds=3", "--hop-step-seconds=1", "--grace-seconds=0.2",
               "--summary-interval=0.25", "--commit-interval=0.5", "--log-level=warn"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _listening(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((parts.hostname or "127.0.0.1", parts.port or 80)) == 0


async def _emitted(io: Kafka) -> list[RequestEvent]:
    """Every event on this run's requests topic (what the admitters' sinks got acknowledged), batches unpacked."""
    bad = BadRecords()
    events = [ev for _, v in await io.read_all(topics.REQUESTS) for ev in decode_request_events(v, "requests", bad)[0]]
    assert not bad.counts, bad.counts
    return events


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_up_serves_through_both_admitters_closes_the_loop_and_stops_on_a_signal(
        kafka: Any, kafka_io: Kafka, prefix: str, tmp_path: Path, stop_signal: signal.Signals) -> None:
    ready = tmp_path / "ready.json"
    log = tmp_path / "up.log"
    args = [sys.executable, "-m", "tokenpools.cli", "up", "--config", str(REPO / "deploy" / "examples"),
            "--bootstrap", kafka.bootstrap_servers, "--topic-prefix", prefix, "--port", "0",
            "--data-dir", str(tmp_path / "up"), "--ready-file", str(ready), "--speedup", "20",
            "--report-every", "1", *[f"--worker-arg={a}" for a in WORKER_ARGS]]
    proc = _start(args, log)
    info: dict[str, Any] = {}
    try:
        async def started() -> bool:
            assert proc.poll() is None, f"up exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            return ready.exists()

        await eventually(started, within=120)
        info = json.loads(ready.read_text())
        admitters = info["admitters"]
        replicas = info["replicas"][POOL]
        assert len(admitters) == 2 and len(replicas) == 4  # the example pool starts 4 replicas
        assert info["topic_prefix"] == prefix and info["bootstrap"] == kafka.bootstrap_servers

        # Requests through both admitters, with the demo keys.
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            async def chat(url: str, key: str) -> None:
                r = await client.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                      json={"model": POOL, "max_tokens": 8,
                                            "messages": [{"role": "user", "content": "hello"}]})
                assert r.status_code == 200, r.text
                assert r.json()["usage"]["completion_tokens"] > 0

            # The guaranteed entitlement is admitted from the start (its guarantee needs no pipeline state).
            for url in admitters:
                for _ in range(3):
                    await chat(url, KEYS["acme-prod"])

            # SIGINT needs only the start, traffic and a clean stop; the closed loop's checks below run once
            # (SIGTERM), since they take most of the test's time.
            if stop_signal is signal.SIGTERM:
                # The events reached the pipeline: 6 decisions and 6 completions.
                await settled(totals_are(kafka_io, {
                    "acme-prod": {"decisions": 6, "admitted": 6, "finished": 6, "duplicates": 0}}))

                # States came back: each admitter enforces its own share of the pipeline's latest limits (the
                # elastic entitlement has none until then: 429). Traffic goes on meanwhile, so both
                # admitters have demand in the window the split uses.
                async def applied() -> bool:
                    for url in admitters:
                        for key in KEYS.values():
                            await chat(url, key)
                    latest = {s.id: s for s in sorted(await kafka_io.states(), key=lambda s: s.seq)}
                    for i, url in enumerate(admitters):
                        admitter_id = f"admitter-{i + 1}"
                        for name, key in KEYS.items():
                            state = latest.get(name)
                            assert state is not None, f"no state for {name} yet"
                            assert set(state.admitter_shares) >= {"admitter-1", "admitter-2"}, state.admitter_shares
                            body = (await client.get(f"{url}/v1/usage", headers={"Authorization": f"Bearer {key}"}))
                            usage = {e["entitlement"]: e for e in body.json()["entitlements"]}[name]
                            share = state.admitter_shares[admitter_id].throughput
                            limit = usage["limits"]["throughput"]
                            if state.tier == "elastic":
                                assert limit == pytest.approx(share, rel=1e-6), (admitter_id, name, limit, share)
                            else:  # a guaranteed entitlement keeps at least its share of the guarantee
                                assert limit >= share * (1 - 1e-6), (admitter_id, name, limit, share)
                            assert usage["requests"].get("completed", 0) >= 1
                    return True

                await eventually(applied)

                # The history process: exactly the events on the requests topic, once each, and as many as the
                # pipeline counted (decisions plus finishes), once no more arrive.
                history = info["history"]
                auth = {"Authorization": f"Bearer {history['token']}"}

                async def history_has_every_event() -> tuple[int, int]:
                    events = await _emitted(kafka_io)
                    sql = "SELECT count() AS n, uniqExact(event_id) AS ids FROM request_events"
                    r = await client.post(f"{history['url']}/query", headers=auth, json={"sql": sql})
                    assert r.status_code == 200, r.text
                    n, ids = r.json()["rows"][0]
                    assert (int(n), int(ids)) == (len(events), len({ev.id for ev in events})), (n, ids, len(events))
                    totals = await kafka_io.totals()
                    counted = sum(t.get("decisions", 0) + t.get("finished", 0) for t in totals.values())
                    assert counted == len(events), (counted, len(events), totals)
                    return int(n), int(ids)

                n, ids = await settled(history_has_every_event)
                assert n == ids > 12  # at least the 6 guaranteed decisions and their 6 finishes

                # A tenant's usage per hour from the history: its own rows only, its decisions all counted.
                events = await _emitted(kafka_io)
                for name, key in KEYS.items():
                    r = await client.get(f"{admitters[0]}/v1/usage", params={"granularity": "hour"},
                                         headers={"Authorization": f"Bearer {key}"})
                    assert r.status_code == 200, r.text
                    rows = r.json()["history"]
                    assert rows and {row["tenant"] for row in rows} == {TENANTS[name]}, rows
                    assert {row["entitlement"] for row in rows} == {name}, rows
                    decisions = sum(1 for ev in events if ev.entitlement == name and ev.outcome in DECISIONS)
                    assert sum(int(row["requests"]) for row in rows) == decisions, (rows, decisions)

                # Every metric a dashboard or an alert rule reads is exported by a part that runs here, except
                # those only a standalone admitter has (checked on one in tests/admitter/test_metrics.py).
                token = {"Authorization": f"Bearer {info['admin_token']}"}
                assert (await client.get(f"{admitters[0]}/metrics")).status_code == 401  # it names tenants
                texts = [(await client.get(f"{url}/metrics", headers=token)) for url in admitters]
                texts += [await client.get(info["pipeline"]["metrics_url"]),
                          await client.get(f"{history['url']}/metrics")]
                assert all(r.status_code == 200 for r in texts), [(r.url, r.status_code) for r in texts]
                exposed = set().union(*(exposed_names(r.text) for r in texts))
                absent = {n: r for n, r in missing(exposed).items() if n not in STANDALONE_ONLY}
                assert not absent, f"metrics read by dashboards or rules but exported by no running part: {absent}"

        # The scaler runs in the loop: its report carries the replicas' URLs, and the pipeline counts them. The
        # SIGINT variant gets here seconds after the start, before the pipeline's first pool state, so it waits.
        async def replicas_counted() -> bool:
            reports = [decode(ReplicasReport, v, "replicas", BadRecords()) for _, v in
                       await kafka_io.read_all(topics.REPLICAS)]
            mine = [r for r in reports if r is not None and r.pool == POOL]
            assert mine and mine[-1].ready_replicas == 4 and mine[-1].endpoints == replicas
            pool_states = [s for s in await kafka_io.pool_states() if s.id == POOL]
            assert pool_states and pool_states[-1].ready_replicas == 4
            return True

        await eventually(replicas_counted)

        proc.send_signal(stop_signal)
        assert await asyncio.to_thread(proc.wait, 60) == 0, log.read_text()[-3000:]
        text = log.read_text()
        assert "stopping" in text and "stopped" in text and "Traceback" not in text, text[-3000:]
        assert not _alive(info["pipeline"]["pid"]) and not _alive(info["history"]["pid"])
        assert not any(_listening(u) for u in [*admitters, *replicas, info["history"]["url"]])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for part in ("pipeline", "history"):
            pid = (info.get(part) or {}).get("pid")
            if pid and _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
