"""Replay seeded arrivals over HTTP, open loop, and record what happened to each request.

Open loop means a request is sent at its arrival time whatever happened to earlier ones: a
closed-loop client (N workers each waiting for its answer) slows down exactly when the server
does, and so hides the queueing an overload experiment is about. In-flight requests are bounded
only by a large cap (``max_in_flight``) that protects the client; when the cap delays a send, the
run counts it and every record keeps its scheduled and actual send times, so lag is reported
instead of silently reshaping the workload.

The HTTP client is aiohttp: its connection pool is O(1) per request, whereas httpx's walks every
pooled connection on each request (see ``admitter/clients.py``), which with thousands of requests
queued at an overloaded server would make the client the bottleneck it is meant to measure.

Times in records are seconds since the run's start on the event loop's monotonic clock; latencies
(``ttft``, ``e2e``) are measured from the actual send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import aiohttp
import orjson

from schemas.arrivals import Arrival, prompt_text
from schemas.openai_tokens import CHAT_TOKENS_PER_MESSAGE

Endpoint = Literal["chat", "completions"]
PATHS: dict[str, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}

# Outcomes, one per request.
OK = "ok"
REFUSED = "refused"  # 429
UNAVAILABLE = "unavailable"  # 503 before the response started (including a spot request preempted then)
PREEMPTED = "preempted"  # a started stream ended by an in-band "preempted" error
ERROR = "error"  # any other HTTP error status, in-band error or malformed answer
TRANSPORT = "transport"  # no HTTP answer at all (connection refused, reset)
TIMEOUT = "timeout"  # the per-request timeout expired
CUT = "cut"  # still running when the run ended (drain deadline), cancelled by the client
UNSENT = "unsent"  # never sent (the run was stopped before its arrival time)
OUTCOMES = (OK, REFUSED, UNAVAILABLE, PREEMPTED, ERROR, TRANSPORT, TIMEOUT, CUT, UNSENT)
#: Outcomes whose latencies are lower bounds: the client stopped waiting.
CENSORED = (TIMEOUT, CUT)


@dataclass(frozen=True)
class LoadOptions:
    """How to send: where, as whom, with which body shape, and how long to wait."""

    urls: Sequence[str]
    model: str
    keys: dict[str, str]  # entitlement -> API key
    tiers: dict[str, str] = field(default_factory=dict)  # entitlement -> tier, for records
    endpoint: Endpoint = "chat"
    emulator_hints: bool = True
    timeout: float = 300.0
    drain: float | None = None  # seconds after the last arrival before in-flight requests are cut
    max_in_flight: int = 10_000
    connect_timeout: float = 10.0
    keepalive_seconds: float = 3.0  # below uvicorn's and vLLM's 5 s, so a reused connection never races a close

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("at least one URL is needed")
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"URL must start with http:// or https://, got {url!r}")
        if self.endpoint not in PATHS:
            raise ValueError(f"endpoint must be one of {', '.join(PATHS)}")
        if self.max_in_flight < 1 or not self.timeout > 0:
            raise ValueError("max_in_flight must be >= 1 and timeout > 0")


@dataclass(slots=True)
class Record:
    """What happened to one arrival (times in seconds since the run's start)."""

    request_id: str
    tenant: str
    entitlement: str
    tier: str
    stream: bool
    target: int  # index of the URL it went to
    scheduled: float
    expected_prompt_tokens: int
    expected_output_tokens: int
    max_tokens: int
    sent: float | None = None
    ended: float | None = None
    status: int | None = None
    outcome: str = UNSENT
    error_code: str | None = None
    retry_after: float | None = None
    ttft: float | None = None
    e2e: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    chunks: int = 0
    server_request_id: str | None = None

    @property
    def lag(self) -> float | None:
        """How late it was sent (scheduling and the concurrency cap)."""
        return None if self.sent is None else self.sent - self.scheduled

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def request_body(arrival: Arrival, endpoint: Endpoint, model: str, emulator_hints: bool) -> bytes:
    """The JSON body for one arrival, with a prompt of the arrival's size.

    A chat message costs the chat template's few tokens on top of its text (4 in the emulator's
    count, as in Llama-3's template), so the text is that much shorter and the prompt the server
    counts matches the workload's. The text is seeded by the request id: the same run sends the
    same bytes, and distinct requests never share a prefix a cache could exploit.
    """
    n = arrival.prompt_tokens
    if endpoint == "chat":
        text = prompt_text(max(1, n - CHAT_TOKENS_PER_MESSAGE), arrival.request_id)
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    else:
        body = {"model": model, "prompt": prompt_text(n, arrival.request_id)}
    body["max_tokens"] = arrival.max_tokens
    if arrival.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if emulator_hints:
        body["emulator"] = {"output_tokens": arrival.output_tokens}
    return orjson.dumps(body)


def endpoint_url(base: str, endpoint: Endpoint) -> str:
    """``base`` may be given with or without the trailing ``/v1`` an OpenAI client expects."""
    base = base.rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    return base + PATHS[endpoint]


@dataclass
class Progress:
    """Live counters the runner updates and a progress display reads."""

    total: int
    sent: int = 0
    done: int = 0
    in_flight: int = 0
    capped: int = 0  # sends the in-flight cap delayed
    max_lag: float = 0.0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    started_at: float | None = None  # loop time of t = 0

    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        return max(0.0, asyncio.get_running_loop().time() - self.started_at)


@dataclass
class LoadResult:
    records: list[Record]
    duration: float  # the workload's timeline (seconds)
    wall_seconds: float  # from t = 0 to the last request's end
    capped: int
    client_cpu_seconds: float
    urls: list[str]


class LoadRunner:
    """One run: ``await LoadRunner(arrivals, options, duration).run()``; ``progress`` is live meanwhile."""

    def __init__(self, arrivals: Sequence[Arrival], options: LoadOptions, duration: float) -> None:
        self.arrivals = arrivals
        self.options = options
        self.duration = duration
        self.progress = Progress(total=len(arrivals))
        self.urls = [endpoint_url(u, options.endpoint) for u in options.urls]
        self.records = [
            Record(a.request_id, a.tenant, a.entitlement, options.tiers.get(a.entitlement, "unknown"), a.stream,
                   i % len(self.urls), a.t, a.prompt_tokens, a.output_tokens, a.max_tokens)
            for i, a in enumerate(arrivals)
        ]
        missing = sorted({a.entitlement for a in arrivals} - set(options.keys))
        if missing:
            raise ValueError(f"no API key for entitlement(s) {', '.join(missing)}")
        self._cpu0 = time.process_time()
        self._headers = {name: {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
                         for name, key in options.keys.items()}

    async def run(self, on_start: Callable[[], None] | None = None) -> LoadResult:
        opts = self.options
        loop = asyncio.get_running_loop()
        self._cpu0 = time.process_time()
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=opts.keepalive_seconds,
                                         ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=opts.connect_timeout)
        session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                        skip_auto_headers=("User-Agent",))
        gate = asyncio.Semaphore(opts.max_in_flight)
        tasks: set[asyncio.Task[None]] = set()
        p = self.progress
        try:
            p.started_at = start = loop.time() + 0.05
            if on_start is not None:
                on_start()
            for arrival, record in zip(self.arrivals, self.records, strict=True):
                body = request_body(arrival, opts.endpoint, opts.model, opts.emulator_hints)
                delay = start + arrival.t - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if gate.locked():
                    p.capped += 1
                await gate.acquire()
                record.sent = loop.time() - start
                p.max_lag = max(p.max_lag, record.sent - record.scheduled)
                p.sent += 1
                p.in_flight += 1
                task = asyncio.create_task(self._send(session, record, body, start, gate))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                remaining = None if opts.drain is None else max(0.0, start + self.duration + opts.drain - loop.time())
                await asyncio.wait(set(tasks), timeout=remaining)
        finally:
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            await session.close()
        return self.result()

    def result(self) -> LoadResult:
        """What the run recorded so far (all of it once ``run`` has returned or been interrupted)."""
        ends = [r.ended for r in self.records if r.ended is not None]
        return LoadResult(self.records, self.duration, max(ends, default=0.0), self.progress.capped,
                          time.process_time() - self._cpu0, list(self.urls))

    async def _send(self, session: aiohttp.ClientSession, record: Record, body: bytes, start: float,
                    gate: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            async with asyncio.timeout(self.options.timeout):
                await self._exchange(session, record, body, t0)
        except aiohttp.ServerTimeoutError as exc:  # connect timeout: no answer at all
            record.outcome, record.error_code = TRANSPORT, type(exc).__name__
        except TimeoutError:  # before OSError, of which it is a subclass
            record.outcome = TIMEOUT
        except asyncio.CancelledError:
            record.outcome = CUT
            raise
        except (aiohttp.ClientError, OSError) as exc:
            if record.status is None:
                record.outcome = TRANSPORT
                record.error_code = type(exc).__name__
            else:  # the answer broke off midway
                record.outcome = ERROR
                record.error_code = record.error_code or "broken_response"
        finally:
            now = loop.time()
            record.ended = now - start
            if record.outcome == OK:
                record.e2e = now - t0
            p = self.progress
            p.in_flight -= 1
            p.done += 1
            p.counts[record.outcome] += 1
            gate.release()

    async def _exchange(self, session: aiohttp.ClientSession, record: Record, body: bytes, t0: float) -> None:
        loop = asyncio.get_running_loop()
        url = self.urls[record.target]
        async with session.post(url, data=body, headers=self._headers[record.entitlement]) as resp:
            record.status = resp.status
            record.server_request_id = resp.headers.get("x-request-id")
            if resp.status != 200:
                raw = await resp.read()
                record.outcome = _status_outcome(resp.status)
                record.error_code = _error_code(raw) or str(resp.status)
                record.retry_after = _float(resp.headers.get("retry-after"))
                return
            if not record.stream:
                raw = await resp.read()
                record.ttft = loop.time() - t0  # a whole response: its first content byte is its last
                _read_json_answer(record, raw)
                return
            await _read_stream(record, resp.content, t0, loop)


def _status_outcome(status: int) -> str:
    if status == 429:
        return REFUSED
    if status == 503:
        return UNAVAILABLE
    return ERROR


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _error_code(raw: bytes) -> str | None:
    """``error.code`` (else ``error.type``) of an OpenAI error body, if it is one."""
    try:
        err = orjson.loads(raw).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if not isinstance(err, dict):
        return None
    code = err.get("code") or err.get("type")
    return str(code) if code is not None else None


def _usage(record: Record, usage: Any) -> None:
    if isinstance(usage, dict):
        pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        record.prompt_tokens = pt if isinstance(pt, int) else record.prompt_tokens
        record.output_tokens = ct if isinstance(ct, int) else record.output_tokens


def _read_json_answer(record: Record, raw: bytes) -> None:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        record.outcome, record.error_code = ERROR, "invalid_json"
        return
    if not isinstance(data, dict) or "error" in data:
        record.outcome, record.error_code = ERROR, _error_code(raw) or "error"
        return
    _usage(record, data.get("usage"))
    record.outcome = OK


def _has_content(event: dict[str, Any]) -> bool:
    for choice in event.get("choices") or ():
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if text:
            return True
    return False


async def _read_stream(record: Record, content: aiohttp.StreamReader, t0: float,
                       loop: asyncio.AbstractEventLoop) -> None:
    """Read SSE events: TTFT at the first one carrying content, usage from the last, errors in-band.

    A stream that ends without ``data: [DONE]`` was cut off: it counts as an error even if tokens
    arrived, because the client cannot tell it from a finished answer otherwise.
    """
    done = False
    async for line in content:
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            done = True
            break
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        if "error" in event:
            code = _error_code(payload)
            record.outcome = PREEMPTED if code == "preempted" else ERROR
            record.error_code = code or "stream_error"
            continue
        record.chunks += 1
        if record.ttft is None and _has_content(event):
            record.ttft = loop.time() - t0
        if event.get("usage"):
            _usage(record, event["usage"])
    if record.outcome in (PREEMPTED, ERROR):
        return
    if done:
        record.outcome = OK
    else:
        record.outcome, record.error_code = ERROR, "stream_not_done"

