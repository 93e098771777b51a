"""Admitter overhead and throughput on loopback: direct to the emulator vs through admitters.

Starts, in subprocesses: emulated vLLM replicas (``sim.server``, high speedup) and one admitter
per replica client (``tokenpools admitter --upstream-client httpx|aiohttp``) in front of them.
Then, from this process:

1. streaming at a fixed rate per target, direct and through each admitter side by side (the
   request trains interleaved in one run, so all see the same replica load): time to first
   token p50/p99 each, the difference to direct and the ratio;
2. the same for non-streaming requests (time to the whole response);
3. the most non-streaming requests/s each admitter passes (closed loop from client processes),
   with the admitter's CPU time per request: what one core sustains, however busy the rest of
   the machine is (the benchmark shares it with the emulator and the load generator).

Also prints each admitter's own ``added_latency_seconds`` histogram (its overhead to the first
byte, replica time and queueing excluded). Prints figures only; asserts nothing. Run:
``python -m bench.bench_admitter [--quick] [--client raw|httpx] [--upstream-clients httpx,aiohttp]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

KEY = "tp-bench-key-0123456789"
ADMIN = "tp-bench-admin-0123456789"
MODEL = "bench"
PATH = "/v1/chat/completions"


@dataclass
class Options:
    rate: float = 200.0  # streaming requests/s per target
    json_rate: float = 200.0  # non-streaming requests/s per target
    seconds: float = 10.0
    tokens: int = 16
    emulators: int = 1
    speedup: float = 1000.0
    clients: int = 2
    concurrency: int = 64
    client: str = "raw"
    upstream_clients: list[str] = field(default_factory=lambda: ["httpx"])


# ----------------------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_emulator(port: int, speedup: float) -> None:
    """Child process: one emulated replica until terminated."""
    from sim.server import EmulatorServer, build_cost_model

    async def run() -> None:
        cost = build_cost_model(max_num_seqs=1024)
        async with EmulatorServer(1, port=port, speedup=speedup, model=MODEL, cost_model=cost):
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


def _config(folder: Path) -> Path:
    """One pool and one elastic entitlement far above what the benchmark sends: nothing is throttled."""
    sha = hashlib.sha256(KEY.encode()).hexdigest()
    (folder / "bench.yaml").write_text(f"""\
apiVersion: tokenpools.dev/v1alpha1
kind: TokenPool
metadata: {{name: {MODEL}}}
spec:
  model: {MODEL}
  contextLength: 8192
  perReplica: {{throughput: 1.0e9, kv: 1.0e9, concurrency: 1.0e6}}
  replicas: {{min: 1, max: 1}}
---
apiVersion: tokenpools.dev/v1alpha1
kind: Entitlement
metadata: {{name: bench}}
spec:
  pool: {MODEL}
  tenant: bench
  tier: elastic
  burst: {{throughput: 1.0e9, kv: 1.0e9, concurrency: 1.0e6}}
  apiKeys: [{{sha256: {sha}}}]
""")
    return folder


async def _wait_up(url: str, path: str, seconds: float = 30.0) -> None:
    async with httpx.AsyncClient() as c:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if (await c.get(url + path)).status_code < 500:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


@dataclass
class Admitter:
    name: str
    url: str
    proc: subprocess.Popen[bytes]


@contextlib.contextmanager
def _stack(opts: Options) -> Iterator[tuple[list[str], list[Admitter]]]:
    ctx = mp.get_context("spawn")
    emulators = []
    urls = []
    admitters: list[Admitter] = []
    tmp = tempfile.TemporaryDirectory()
    try:
        for _ in range(opts.emulators):
            port = _free_port()
            proc = ctx.Process(target=_serve_emulator, args=(port, opts.speedup), daemon=True)
            proc.start()
            emulators.append(proc)
            urls.append(f"http://127.0.0.1:{port}")
        config = _config(Path(tmp.name))
        for kind in opts.upstream_clients:
            port = _free_port()
            admitters.append(Admitter(f"admitter/{kind}", f"http://127.0.0.1:{port}", subprocess.Popen(
                [sys.executable, "-m", "tokenpools.cli", "admitter", "--config", str(config), "--port", str(port),
                 "--backend", f"{MODEL}={','.join(urls)}", "--upstream-client", kind,
                 "--admin-key-sha256", hashlib.sha256(ADMIN.encode()).hexdigest()],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        yield urls, admitters
    finally:
        for a in admitters:
            a.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                a.proc.wait(10)
        for proc in emulators:
            proc.terminate()
            proc.join(10)
        tmp.cleanup()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- load
def _body(tokens: int, stream: bool) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "benchmark " * 20}],
            "max_tokens": tokens, "stream": stream}


@functools.lru_cache(maxsize=16)
def _encoded(tokens: int, stream: bool) -> bytes:
    return orjson.dumps(_body(tokens, stream))


HEADERS = {"Authorization": f"Bearer {KEY}"}


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams, for load generation only.

    httpx costs 1-3 ms of CPU per request on a small shared VM, so an httpx load generator can use
    more CPU than the system it measures (and starve it, inflating both sides). This one writes one
    request and parses the status line, headers, and a Content-Length or chunked body, which is
    all the emulator and the admitter send. ``--client httpx`` uses httpx instead.
    """

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for _, w in conns:
                w.close()
        self._idle.clear()

    async def post(self, url: str, body: bytes, headers: dict[str, str], first_marker: bytes | None
                   ) -> tuple[int, float | None]:
        """POST; returns (status, perf_counter time the first body chunk holding ``first_marker`` arrived)."""
        hostport, _, path = url.split("://", 1)[1].partition("/")
        host, _, port = hostport.partition(":")
        idle = self._idle.setdefault((host, int(port)), [])
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (f"POST /{path} HTTP/1.1\r\nhost: {hostport}\r\ncontent-type: application/json\r\n"
                   f"content-length: {len(body)}\r\n{head}\r\n").encode() + body
        while True:
            reused = bool(idle)
            reader, writer = idle.pop() if reused else await asyncio.open_connection(host, int(port))
            writer.write(request)
            try:
                status_line = await reader.readuntil(b"\r\n")
                break
            except (OSError, asyncio.IncompleteReadError):
                writer.close()
                if not reused:  # a kept-alive connection the server closed meanwhile: retry on a new one
                    raise
        try:
            status = int(status_line.split(b" ", 2)[1])
            length, chunked = 0, False
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            first = None
            if chunked:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    data = await reader.readexactly(size + 2)
                    if first is None and first_marker is not None and first_marker in data:
                        first = time.perf_counter()
                    if size == 0:
                        break
            else:
                await reader.readexactly(length)
                first = time.perf_counter()
        except BaseException:
            writer.close()
            raise
        idle.append((reader, writer))
        return status, first


Client = httpx.AsyncClient | RawClient


def _client(kind: str, connections: int) -> Client:
    if kind == "raw":
        return RawClient()
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(limits=limits, timeout=60)


async def _one(client: Client, url: str, tokens: int, stream: bool, headers: dict[str, str],
               out: list[float], errors: list[int]) -> None:
    """One request; appends its latency (first content byte if streaming, else whole response)."""
    t0 = time.perf_counter()
    first: float | None = None
    status = -1
    try:
        if isinstance(client, RawClient):
            status, first = await client.post(url, _encoded(tokens, stream), headers,
                                              b'"content"' if stream else None)
        elif stream:
            async with client.stream("POST", url, content=_encoded(tokens, True), headers=headers) as resp:
                status = resp.status_code
                async for chunk in resp.aiter_raw():
                    if first is None and b'"content"' in chunk:
                        first = time.perf_counter()
        else:
            resp = await client.post(url, content=_encoded(tokens, False), headers=headers)
            status, first = resp.status_code, time.perf_counter()
    except (OSError, asyncio.IncompleteReadError, ValueError, httpx.HTTPError):
        errors.append(-1)
        return
    if status != 200 or first is None:
        errors.append(status)
    else:
        out.append(first - t0)


@dataclass
class Train:
    name: str
    urls: list[str]
    latencies: list[float] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)


async def side_by_side(trains: list[Train], rate: float, seconds: float, tokens: int, stream: bool,
                       client_kind: str) -> None:
    """Open-loop request trains at ``rate`` each, their starts spread evenly over each period."""
    headers = {**HEADERS, "Content-Type": "application/json", "x-emulator-output-tokens": str(tokens)}
    client = _client(client_kind, 4000)
    try:
        for train in trains:  # warm up connections and the admitters' prompt estimators
            await asyncio.gather(*(_one(client, train.urls[0] + PATH, tokens, stream, headers, [], [])
                                   for _ in range(20)))
        tasks = []
        period = 1.0 / rate
        offset = period / len(trains)
        start = time.perf_counter() + 0.1
        for i in range(int(rate * seconds)):
            for k, train in enumerate(trains):
                at = start + i * period + k * offset
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                url = train.urls[i % len(train.urls)] + PATH
                tasks.append(asyncio.create_task(
                    _one(client, url, tokens, stream, headers, train.latencies, train.errors)))
        await asyncio.gather(*tasks)
    finally:
        await client.aclose()


def _closed_loop_worker(url: str, concurrency: int, seconds: float, tokens: int, client_kind: str,
                        queue: mp.Queue) -> None:
    async def run() -> tuple[int, int]:
        ok: list[float] = []
        errors: list[int] = []
        headers = {**HEADERS, "Content-Type": "application/json", "x-emulator-output-tokens": str(tokens)}
        client = _client(client_kind, concurrency)
        await asyncio.gather(*(_one(client, url, tokens, False, headers, [], []) for _ in range(concurrency)))
        stop = time.perf_counter() + seconds

        async def loop() -> None:
            while time.perf_counter() < stop:
                await _one(client, url, tokens, False, headers, ok, errors)

        try:
            await asyncio.gather(*(loop() for _ in range(concurrency)))
        finally:
            await client.aclose()
        return len(ok), len(errors)

    queue.put(asyncio.run(run()))


def closed_loop(url: str, clients: int, concurrency: int, seconds: float, tokens: int,
                client_kind: str) -> tuple[float, int]:
    """Requests/s completed by ``clients`` processes keeping ``concurrency`` requests in flight each."""
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_closed_loop_worker, args=(url, concurrency, seconds, tokens, client_kind, queue))
             for _ in range(clients)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(r[0] for r in results) / seconds, sum(r[1] for r in results)


# ----------------------------------------------------------------------------- report
def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _codes(errors: list[int]) -> str:
    if not errors:
        return ""
    counts: dict[int, int] = {}
    for e in errors:
        counts[e] = counts.get(e, 0) + 1
    return " (" + ", ".join(f"{'conn' if k < 0 else k}: {v}" for k, v in sorted(counts.items())) + ")"


def _report(title: str, trains: list[Train]) -> None:
    direct = trains[0]
    print(f"{title}: completed/failed per target: " + ", ".join(
        f"{t.name} {len(t.latencies)}/{len(t.errors)}{_codes(t.errors)}" for t in trains), flush=True)
    for label, q in (("p50", 0.5), ("p99", 0.99)):
        base = _pct(direct.latencies, q) * 1000
        parts = [f"direct {base:7.2f} ms"]
        for t in trains[1:]:
            v = _pct(t.latencies, q) * 1000
            parts.append(f"{t.name} {v:7.2f} ms (added {v - base:+6.2f} ms, ratio {v / base if base else 0:4.2f})")
        print(f"  {label}: " + "   ".join(parts), flush=True)


async def _own_overhead(admitter: Admitter) -> list[str]:
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient() as c:
        text = (await c.get(admitter.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"})).text
    out = []
    for fam in text_string_to_metric_families(text):
        if fam.name != "tokenpools_admitter_added_latency_seconds":
            continue
        for stream in ("true", "false"):
            samples = [s for s in fam.samples if s.labels.get("stream") == stream]
            buckets = sorted((float(s.labels["le"]), s.value) for s in samples if s.name.endswith("_bucket"))
            count = next((s.value for s in samples if s.name.endswith("_count")), 0.0)
            total = next((s.value for s in samples if s.name.endswith("_sum")), 0.0)
            if count:
                p50 = next(le for le, c in buckets if c >= 0.5 * count)
                p99 = next(le for le, c in buckets if c >= 0.99 * count)
                out.append(f"  {admitter.name} own overhead (stream={stream}): mean {1000 * total / count:.3f} ms, "
                           f"p50 <= {1000 * p50:g} ms, p99 <= {1000 * p99:g} ms (n={count:.0f})")
    return out


def run(opts: Options) -> None:
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPU(s), load average {load[0]:.2f} before start; emulator replicas "
          f"{opts.emulators} (speedup {opts.speedup:g}); {opts.tokens} output tokens per request; load generator "
          f"{opts.client}", flush=True)
    with _stack(opts) as (urls, admitters):
        for a in admitters:
            asyncio.run(_wait_up(a.url, "/healthz"))
        for u in urls:
            asyncio.run(_wait_up(u, "/health"))
        for stream, rate in ((True, opts.rate), (False, opts.json_rate)):
            trains = [Train("direct", urls)] + [Train(a.name, [a.url]) for a in admitters]
            asyncio.run(side_by_side(trains, rate, opts.seconds, opts.tokens, stream, opts.client))
            _report(f"{'streaming (time to first token)' if stream else 'non-streaming (whole response)'} at "
                    f"{rate:g} req/s per target", trains)
        print("admitters' own overhead histograms (to first byte, replica time excluded):", flush=True)
        for a in admitters:
            for line in asyncio.run(_own_overhead(a)):
                print(line, flush=True)
        print(f"max non-streaming throughput ({opts.clients} client processes x {opts.concurrency} in flight, "
              f"{opts.seconds:g} s):", flush=True)
        for a in admitters:
            cpu0 = _cpu_seconds(a.proc.pid)
            rps, errors = closed_loop(a.url + PATH, opts.clients, opts.concurrency, opts.seconds, opts.tokens,
                                      opts.client)
            cpu = _cpu_seconds(a.proc.pid) - cpu0
            per_request_us = 1e6 * cpu / (rps * opts.seconds) if rps else float("nan")
            print(f"  {a.name}: {rps:,.0f} req/s (errors {errors}); admitter CPU {per_request_us:,.0f} µs/request "
                  f"=> ~{1e6 / per_request_us:,.0f} req/s per core of its own", flush=True)
        rps, errors = closed_loop(urls[0] + PATH, opts.clients, opts.concurrency, opts.seconds, opts.tokens,
                                  opts.client)
        print(f"  direct to one emulator replica: {rps:,.0f} req/s (errors {errors})", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s phases instead of --seconds")
    parser.add_argument("--seconds", type=float, default=Options.seconds)
    parser.add_argument("--rate", type=float, default=Options.rate, help="streaming requests/s per target")
    parser.add_argument("--json-rate", type=float, default=Options.json_rate,
                        help="non-streaming requests/s per target")
    parser.add_argument("--tokens", type=int, default=Options.tokens)
    parser.add_argument("--emulators", type=int, default=Options.emulators)
    parser.add_argument("--speedup", type=float, default=Options.speedup)
    parser.add_argument("--clients", type=int, default=Options.clients)
    parser.add_argument("--concurrency", type=int, default=Options.concurrency)
    parser.add_argument("--client", choices=("raw", "httpx"), default=Options.client,
                        help="load generator: a minimal HTTP/1.1 client (default, cheap) or httpx")
    parser.add_argument("--upstream-clients", default="httpx",
                        help="one admitter per replica client, comma-separated: httpx (default), aiohttp")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    opts = Options(rate=args.rate, json_rate=args.json_rate, seconds=3.0 if args.quick else args.seconds,
                   tokens=args.tokens, emulators=args.emulators, speedup=args.speedup, clients=args.clients,
                   concurrency=args.concurrency, client=args.client,
                   upstream_clients=[c for c in args.upstream_clients.split(",") if c])
    run(opts)


if __name__ == "__main__":
    main()
