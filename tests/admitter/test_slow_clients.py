"""Slow clients and big bodies against a real admitter process (issue 10, defects 4 and 5).

Each admitter runs as ``tokenpools admitter`` in a subprocess, so its memory is its own: RSS and
its peak (``VmRSS``, ``VmHWM`` in ``/proc/<pid>/status``) are read there. Nothing here asserts on
wall time: the tests wait (with generous upper bounds) for the server to do something observable
(a counter on /metrics, a socket reaching EOF) and then check memory and answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.admitter.conftest import sha
from tests.raw import send_chunked

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/<pid>/status")

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
DEMO_KEY = "tp-demo-acme"  # listed in deploy/examples/entitlements.yaml
ADMIN_KEY = "tp-admin-slow-clients"
MIB = 1024 * 1024
SLOW = 1000  # slow clients per test, as in the issue
CAP = 100  # --max-unauthenticated-connections of the test admitter
# With 1,000 slow clients held, unguarded, the admitter grew ~10 MB (16 MB in the issue); capped at 100
# it grows ~1 MB. 5 MB separates the two with room for allocator noise.
SLOW_RSS_BOUND_MB = 5.0
# A 300 MiB chunked PUT read in full took the admitter from 113 to 712 MB; read with a 1 MiB cap it
# needs a few MB for the chunks in flight.
BIG_BODY_BOUND_MB = 40.0


@dataclass
class Proc:
    pid: int
    url: str
    port: int

    def status_mb(self, field: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"{field} not in /proc/{self.pid}/status")

    def rss_mb(self) -> float:
        return self.status_mb("VmRSS")

    def peak_mb(self) -> float:
        return self.status_mb("VmHWM")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def enough_file_descriptors() -> None:
    """1,000 client sockets plus pytest's own: raise the soft limit if it is low (never above the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if min(want, hard) < SLOW + 200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low for {SLOW} sockets")


async def _wait_healthy(client: httpx.AsyncClient, proc: asyncio.subprocess.Process) -> None:
    for _ in range(600):  # up to ~30 s for the interpreter to import and bind
        if proc.returncode is not None:
            raise AssertionError(f"admitter exited with {proc.returncode}")
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("admitter did not become healthy")


@pytest.fixture
async def admitter(replicas: Callable[..., Any]) -> AsyncIterator[Proc]:
    """A real admitter process with short read timeouts and a small cap, in front of a fake replica."""
    replica = await replicas()
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tokenpools.cli", "admitter", "--config", str(EXAMPLES / "pool.yaml"),
        "--config", str(EXAMPLES / "entitlements.yaml"), "--port", str(port),
        "--backend", f"llama-3-8b={replica.url}", "--admin-key-sha256", sha(ADMIN_KEY), "--public-metrics",
        "--header-timeout", "1", "--body-idle-timeout", "2", "--body-timeout", "3",
        "--max-unauthenticated-connections", str(CAP),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            await _wait_healthy(c, proc)
        yield Proc(proc.pid, url, port)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _good_request(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {DEMO_KEY}"},
                             json={"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}],
                                   "max_tokens": 8})


async def _metric(client: httpx.AsyncClient, name: str, labels: str = "") -> float:
    text = (await client.get("/metrics")).text
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+]+)"
    found = re.search(pattern, text)
    assert found, f"{name}{labels} not on /metrics"
    return float(found.group(1))


PARTIAL_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: a"  # never finished
SHORT_BODY = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + DEMO_KEY.encode()
              + b"\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n" + b"x" * 40)  # 9,960 short


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (EOF or reset)."""
    data = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            data += chunk
    return data


def _status_and_error(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, orjson.loads(body)["error"]


async def test_a_thousand_slow_clients_hold_bounded_memory_and_are_closed(admitter: Proc) -> None:
    async with httpx.AsyncClient(base_url=admitter.url, timeout=10) as c:
        assert (await _good_request(c)).status_code == 200  # warm: first-request allocations are not slowloris
        baseline_rss, baseline_peak = admitter.rss_mb(), admitter.peak_mb()

        conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            for i in range(SLOW):
                reader, writer = await asyncio.open_connection("127.0.0.1", admitter.port)
                writer.write(SHORT_BODY if i % 2 else PARTIAL_HEAD)
                conns.append((reader, writer))
            readers = [asyncio.ensure_future(_until_closed(r)) for r, _ in conns]
            # The server has taken them all in once it has dropped all but CAP over the cap.
            for _ in range(1200):  # up to ~60 s
                if await _metric(c, "tokenpools_admitter_slow_connections_closed_total",
                                 'reason="over_cap"') >= SLOW - CAP:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the admitter never dropped connections over its cap")
            held_rss = admitter.rss_mb()
            assert max(held_rss, admitter.peak_mb()) - max(baseline_rss, baseline_peak) < SLOW_RSS_BOUND_MB, \
                (baseline_rss, baseline_peak, held_rss, admitter.peak_mb())

            good = await _good_request(c)  # while slow ones are held: served
            assert good.status_code == 200, good.text

            # Then every slow socket is closed by the server (the test itself never closes one first).
            async with asyncio.timeout(60):
                answers = await asyncio.gather(*readers)
        finally:
            for _, writer in conns:
                writer.close()

        heads, bodies = answers[0::2], answers[1::2]
        assert all(a == b"" for a in heads), "a request head never completed cannot be answered, only closed"
        statuses = []
        for raw in bodies:  # a request whose head came in gets an OpenAI error before the close
            status, error = _status_and_error(raw)
            assert set(error) == {"message", "type", "param", "code"}
            statuses.append((status, error["code"]))
        assert set(statuses) <= {(408, "request_timeout"), (503, "server_busy")}
        assert (408, "request_timeout") in statuses  # the newest ones were held until their body timeout
        assert await _metric(c, "tokenpools_admitter_unauthenticated_connections") == 0
        closed = {r: await _metric(c, "tokenpools_admitter_slow_connections_closed_total", f'reason="{r}"')
                  for r in ("header_timeout", "body_timeout", "over_cap")}
        assert sum(closed.values()) == SLOW, closed


async def test_a_slow_body_gets_408_and_a_slow_head_is_closed(admitter: Proc) -> None:
    """Under the cap: each times out on its own (body: 408 in the OpenAI shape; head: nothing to answer)."""
    body_reader, body_writer = await asyncio.open_connection("127.0.0.1", admitter.port)
    head_reader, head_writer = await asyncio.open_connection("127.0.0.1", admitter.port)
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", admitter.port)
    try:
        body_writer.write(SHORT_BODY)
        head_writer.write(PARTIAL_HEAD)
        async with asyncio.timeout(60):
            body, head, silent = await asyncio.gather(
                _until_closed(body_reader), _until_closed(head_reader), _until_closed(silent_reader))
    finally:
        for w in (body_writer, head_writer, silent_writer):
            w.close()
    status, error = _status_and_error(body)
    assert status == 408 and b"connection: close" in body.lower()
    assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
    assert head == b"" and silent == b""


async def test_the_next_request_on_a_kept_alive_connection_is_timed_too(admitter: Proc) -> None:
    """A good request, then a next head that never completes: uvicorn's keep-alive timer is reset by
    every byte, so only the head timeout closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", admitter.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert first.startswith(b"HTTP/1.1 200")
        length = int(re.search(rb"content-length: (\d+)", first.lower()).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        writer.write(PARTIAL_HEAD)

        async def trickle() -> None:  # a byte every 0.5 s: never idle long enough for keep-alive (5 s)
            for _ in range(120):
                await asyncio.sleep(0.5)
                writer.write(b"a")

        dribble = asyncio.ensure_future(trickle())
        try:
            async with asyncio.timeout(60):
                rest = await _until_closed(reader)
        finally:
            dribble.cancel()
    finally:
        writer.close()
    assert rest == b""


async def test_a_300_mib_chunked_admin_put_is_refused_without_buffering_it(admitter: Proc) -> None:
    baseline = max(admitter.rss_mb(), admitter.peak_mb())
    raw, sent = await send_chunked(
        "127.0.0.1", admitter.port, "PUT /admin/entitlements/big HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\n", 300 * MIB)
    assert admitter.peak_mb() - baseline < BIG_BODY_BOUND_MB, (baseline, admitter.peak_mb(), sent)
    status, error = _status_and_error(raw)
    assert status == 413 and error["code"] == "request_too_large", raw[:300]
    assert sent < 300 * MIB  # the answer came before the body was all sent: it was not read in full


def test_the_guard_drops_the_oldest_unadmitted_connection_not_the_new_one() -> None:
    from tokenpools.infra.slow_clients import ConnectionGuard

    guard = ConnectionGuard(max_unadmitted=2)
    dropped: list[str] = []

    class Conn:
        def __init__(self, name: str) -> None:
            self.name = name

        def drop(self, status: int | None, message: str, code: str) -> None:
            dropped.append(self.name)

    a, b, c = Conn("a"), Conn("b"), Conn("c")
    for conn in (a, b, b, c):  # entering twice (next head, then its body) counts once
        guard.enter(conn)  # type: ignore[arg-type]
    assert dropped == ["a"] and list(guard.unadmitted) == [b, c] and guard.stats.evicted == 1
    guard.leave(b)  # type: ignore[arg-type]
    guard.enter(a)  # type: ignore[arg-type]
    assert dropped == ["a"] and list(guard.unadmitted) == [c, a]
    with pytest.raises(ValueError):
        ConnectionGuard(head_timeout=0)
