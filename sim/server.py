"""The vLLM emulator as HTTP servers: vLLM's OpenAI-compatible API, one port per replica.

Why a server at all: the admitter, the load generator and the scaler must be tested against
something that looks like vLLM on the wire (status codes, SSE framing, ``usage``, Prometheus
metric names) and behaves like it under load (continuous batching, KV-cache pressure, queueing),
without a GPU. Each replica is its own :class:`~sim.engine.Engine` driven on the wall clock by a
:class:`~sim.realtime.RealtimeDriver`, served by its own ``uvicorn.Server`` on its own port; all
replicas of one :class:`EmulatorServer` share one event loop and one model clock, so one process
(or one pytest test) can stand in for a fleet.

Routing is deliberately absent: a real fleet is N addresses and choosing among them is the
admitter's job.

Endpoints of every replica (besides vLLM's ``/v1/chat/completions``, ``/v1/completions``,
``/v1/models``, ``/health``, ``/metrics``, ``/version``):

* ``GET /emulator/stats``: running, waiting, outstanding, KV usage and totals, as JSON;
* ``POST /emulator/faults``: arm failures for the admitter's tests, e.g. ``{"status": 500,
  "count": 3}`` (next 3 inference requests fail), ``{"delay_seconds": 30}`` (every request hangs
  30 wall seconds before it is served, until cleared), ``{"fail_rate": 0.1}``,
  ``{"health_status": 503}``; ``GET`` shows them, ``DELETE`` clears them;
* ``POST /emulator/abort {"id": "<response id>"}``: abort a request in the engine (its stream
  ends with ``finish_reason: "abort"``), as vLLM's engine abort would.

How many tokens a request generates: a real model stops at EOS or ``max_tokens``; the emulator
needs the EOS position up front. ``output_tokens_mode="auto"`` takes it from the request
(``"emulator": {"output_tokens": N}`` in the body or the ``x-emulator-output-tokens`` header, set
by the load generator from its workload) and otherwise draws it from a seeded lognormal (mean
``mean_output_tokens``); ``"lognormal"`` always draws; ``"max-tokens"`` never stops early (like
vLLM's ``ignore_eos``, also honoured per request). ``max_tokens`` defaults to
``default_max_tokens`` and is capped by the context length left after the prompt (vLLM refuses an
oversized ``max_tokens`` with 400 instead; capping keeps load generators simple). Prompt tokens
are counted as described in :mod:`sim.openai_wire`.

vLLM's ``priority`` request field is honoured when the cost model's ``scheduling_policy`` is
``"priority"`` (``--scheduling-policy priority``) and refused with 400 otherwise, as vLLM does.

Metrics and latencies are in model seconds (the model clock runs ``speedup`` times faster than
the wall clock), i.e. what a real replica would have reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import random
import socket
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self, TypeVar, get_args

import numpy as np
import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from schemas.echo import echo, echo_str
from sim import openai_wire as wire
from sim.costmodel import ReplicaCostModel
from sim.engine import Engine
from sim.engine import Request as EngineRequest
from sim.realtime import ModelClock, RealtimeDriver, TokenChunk
from tokenpools.infra.slow_clients import ConnectionGuard, guarded_protocol

__all__ = [
    "EmulatorConfig",
    "EmulatorReplica",
    "EmulatorServer",
    "Faults",
    "OutputTokensMode",
    "build_cost_model",
    "start_emulators",
]

log = logging.getLogger(__name__)

OutputTokensMode = Literal["auto", "lognormal", "max-tokens"]
OUTPUT_TOKENS_MODES: tuple[str, ...] = get_args(OutputTokensMode)
#: vLLM's default context length for Llama-3-8B.
DEFAULT_MAX_MODEL_LEN = 8192
#: Request body limit. vLLM has none (100 MB took the emulator from 82 to 409 MB); 4 MiB is far above any
#: prompt that fits a context and above the admitter's 1 MiB, which forwards bodies slightly rewritten,
#: so clients behind an admitter meet the admitter's limit, not this one.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
#: Status sent to a client that disconnected: nobody reads it, but access logs show what happened.
_CLIENT_CLOSED = 499
_T = TypeVar("_T")

# vLLM's histogram buckets (vllm/engine/metrics.py), so dashboards built on real replicas work here.
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                240.0, 480.0, 960.0, 1920.0, 7680.0)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000)


# -------------------------------------------------------------------------------- configuration
@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """Everything a replica needs besides its address; shared by all replicas of a server.

    ``max_model_len`` defaults to 8192 or the KV cache, whichever is smaller (vLLM refuses to
    start when one sequence cannot fit, and so does this). ``seed`` makes output lengths and
    ``fail_rate`` draws reproducible per replica.
    """

    model: str = "llama-3-8b"
    cost_model: ReplicaCostModel = field(default_factory=ReplicaCostModel)
    speedup: float = 1.0
    max_model_len: int | None = None
    default_max_tokens: int = 256
    output_tokens_mode: OutputTokensMode = "auto"
    mean_output_tokens: float = 200.0
    output_tokens_sigma: float = 1.0
    seed: int = 0
    fail_rate: float = 0.0
    fail_status: int = 500
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must be a non-empty name")
        if not self.speedup > 0:
            raise ValueError("speedup must be positive")
        if self.default_max_tokens < 1:
            raise ValueError("default_max_tokens must be >= 1")
        if self.output_tokens_mode not in OUTPUT_TOKENS_MODES:
            raise ValueError(f"output_tokens_mode must be one of {', '.join(OUTPUT_TOKENS_MODES)}")
        if not self.mean_output_tokens >= 1 or self.output_tokens_sigma < 0:
            raise ValueError("mean_output_tokens must be >= 1 and output_tokens_sigma >= 0")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail_rate must be within [0, 1]")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if not 400 <= self.fail_status <= 599:
            raise ValueError("fail_status must be an HTTP error status (400-599)")
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be >= 1")
        kv = self.cost_model.total_blocks * self.cost_model.block_size
        if self.max_model_len is not None and not 2 <= self.max_model_len <= kv:
            raise ValueError(f"max_model_len must be within [2, {kv}] (the KV cache of one replica)")

    @property
    def context_length(self) -> int:
        """Prompt + output tokens one sequence may hold."""
        if self.max_model_len is not None:
            return self.max_model_len
        return min(DEFAULT_MAX_MODEL_LEN, self.cost_model.total_blocks * self.cost_model.block_size)


def build_cost_model(path: str | Path | None = None, *, kv_tokens: int | None = None,
                     max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None,
                     scheduling_policy: str | None = None) -> ReplicaCostModel:
    """A replica's cost model from the CLI's options.

    ``path`` is either a GPU calibration file (``decode``/``prefill`` grids, fitted with
    :meth:`ReplicaCostModel.from_calibration`) or a JSON object of :class:`ReplicaCostModel`
    fields; without it, the published H200 fit. ``max_num_batched_tokens`` rises to
    ``max_num_seqs`` when only the latter is given, since the engine needs room for one decode
    per sequence.
    """
    if path is None:
        cost = ReplicaCostModel()
    else:
        p = Path(path)
        data = json.loads(p.read_text())
        if isinstance(data, dict) and "decode" in data and "prefill" in data:
            cost = ReplicaCostModel.from_calibration(p)
        elif isinstance(data, dict):
            cost = ReplicaCostModel(**data)
        else:
            raise ValueError(f"{p}: expected a calibration file or a JSON object of cost-model fields")
    changes: dict[str, Any] = {}
    if kv_tokens is not None:
        changes["kv_capacity_tokens"] = kv_tokens
    if max_num_seqs is not None:
        changes["max_num_seqs"] = max_num_seqs
        if max_num_batched_tokens is None and cost.max_num_batched_tokens < max_num_seqs:
            changes["max_num_batched_tokens"] = max_num_seqs
    if max_num_batched_tokens is not None:
        changes["max_num_batched_tokens"] = max_num_batched_tokens
    if scheduling_policy is not None:
        changes["scheduling_policy"] = scheduling_policy
    return cost.with_(**changes) if changes else cost


# -------------------------------------------------------------------------------------- faults
class Faults:
    """Failures a test arms on one replica: error statuses, hangs, random failures, bad health.

    A ``count`` limits a status or delay fault to that many inference requests; without it the
    fault stays until cleared. Only ``/v1/*`` inference requests are affected (and ``/health`` by
    ``health_status``), so a test can still read stats and metrics of a failing replica.
    """

    def __init__(self, fail_rate: float = 0.0, fail_status: int = 500, seed: int | str = 0) -> None:
        self._rng = random.Random(seed)
        self.default_fail_rate = fail_rate
        self.default_fail_status = fail_status
        self.clear()

    def clear(self) -> None:
        """Back to the configured ``fail_rate`` and nothing else."""
        self.status: int | None = None
        self.status_count: int | None = None
        self.delay_seconds: float = 0.0
        self.delay_count: int | None = None
        self.fail_rate = self.default_fail_rate
        self.fail_status = self.default_fail_status
        self.health_status: int | None = None

    def arm(self, *, status: int | None = None, count: int | None = None, delay_seconds: float | None = None,
            fail_rate: float | None = None, fail_status: int | None = None,
            health_status: int | None = None) -> None:
        """Add faults; ``count`` applies to the ``status`` and ``delay_seconds`` given with it."""
        for name, st in (("status", status), ("fail_status", fail_status), ("health_status", health_status)):
            if st is not None and not 400 <= st <= 599:
                raise ValueError(f"{name} must be an HTTP error status (400-599)")
        if count is not None and count < 1:
            raise ValueError("count must be >= 1")
        if delay_seconds is not None and not delay_seconds >= 0:
            raise ValueError("delay_seconds must be >= 0")
        if fail_rate is not None and not 0.0 <= fail_rate <= 1.0:
            raise ValueError("fail_rate must be within [0, 1]")
        if status is not None:
            self.status, self.status_count = status, count
        if delay_seconds is not None:
            self.delay_seconds, self.delay_count = delay_seconds, count
        if fail_rate is not None:
            self.fail_rate = fail_rate
        if fail_status is not None:
            self.fail_status = fail_status
        if health_status is not None:
            self.health_status = health_status

    def take(self) -> tuple[int | None, float]:
        """For one inference request: the error status to answer with, or the delay before serving."""
        if self.status is not None:
            st = self.status
            if self.status_count is not None:
                self.status_count -= 1
                if self.status_count <= 0:
                    self.status = self.status_count = None
            return st, 0.0
        if self.fail_rate > 0 and self._rng.random() < self.fail_rate:
            return self.fail_status, 0.0
        delay = self.delay_seconds
        if delay > 0 and self.delay_count is not None:
            self.delay_count -= 1
            if self.delay_count <= 0:
                self.delay_seconds, self.delay_count = 0.0, None
        return None, delay

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "status_count": self.status_count, "delay_seconds": self.delay_seconds,
                "delay_count": self.delay_count, "fail_rate": self.fail_rate, "fail_status": self.fail_status,
                "health_status": self.health_status}


# ------------------------------------------------------------------------------------- metrics
class _EngineCounters(Collector):
    """Counters the engine already keeps, read at scrape time instead of mirrored."""

    def __init__(self, model: str, engine: Engine) -> None:
        self.model = model
        self.engine = engine

    def collect(self) -> Iterable[CounterMetricFamily]:
        fam = CounterMetricFamily("vllm:num_preemptions", "Cumulative number of preemptions from the engine.",
                                  labels=["model_name"])
        fam.add_metric([self.model], self.engine.preemptions_total)
        yield fam


class _Metrics:
    """vLLM's Prometheus metrics of one replica, in its own registry (replicas share a process)."""

    def __init__(self, model: str, engine: Engine) -> None:
        self.registry = r = CollectorRegistry()
        lab = ["model_name"]
        Gauge("vllm:num_requests_running", "Number of requests currently running on GPU.", lab,
              registry=r).labels(model).set_function(lambda: engine.num_running)
        Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", lab,
              registry=r).labels(model).set_function(lambda: engine.num_waiting)
        Gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", lab,
              registry=r).labels(model).set_function(lambda: engine.kv_usage)
        # the name vLLM >= 0.10 uses for the same gauge
        Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", lab,
              registry=r).labels(model).set_function(lambda: engine.kv_usage)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", lab,
                                     registry=r).labels(model)
        self.generation_tokens = Counter("vllm:generation_tokens", "Number of generation tokens processed.", lab,
                                         registry=r).labels(model)
        success = Counter("vllm:request_success", "Count of successfully processed requests.",
                          [*lab, "finished_reason"], registry=r)
        self.success = {reason: success.labels(model, reason) for reason in ("stop", "length")}
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              lab, buckets=_TTFT_BUCKETS, registry=r).labels(model)
        self.tpot = Histogram("vllm:time_per_output_token_seconds",
                              "Histogram of time per output token in seconds.", lab, buckets=_TPOT_BUCKETS,
                              registry=r).labels(model)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
                             lab, buckets=_E2E_BUCKETS, registry=r).labels(model)
        self.req_prompt = Histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", lab,
                                    buckets=_TOKEN_BUCKETS, registry=r).labels(model)
        self.req_generation = Histogram("vllm:request_generation_tokens", "Number of generation tokens processed.",
                                        lab, buckets=_TOKEN_BUCKETS, registry=r).labels(model)
        r.register(_EngineCounters(model, engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)


# ------------------------------------------------------------------------------------ plumbing
@dataclass(slots=True)
class _Job:
    """One admitted inference request, with every limit already applied."""

    kind: wire.Kind
    id: str
    created: int
    model: str
    prompt_tokens: int
    max_tokens: int
    eos_at: int  # where the emulated model would stop on its own; > max_tokens means "length"
    priority: int  # vLLM's extension; only honoured under scheduling_policy="priority"
    include_usage: bool
    continuous_usage: bool


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


_REQUEST_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def _request_id(header: str | None) -> str:
    """The caller's ``x-request-id`` as the base of response ids, if it is short and plain: it is
    echoed into every chunk of the response, so an unbounded one would be repeated unbounded."""
    if header and len(header) <= 128 and _REQUEST_ID_OK.issuperset(header):
        return header
    return uuid.uuid4().hex


def _error(exc: wire.WireError) -> Response:
    return _json(exc.body(), exc.status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 as soon as it (declared or so far received) exceeds ``limit`` bytes.

    A running cap rather than ``request.body()`` and a length check, so a chunked or lying client
    cannot make the replica buffer more than ``limit`` before it is refused.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> wire.WireError:
    return wire.WireError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")


async def _wait_disconnect(receive: Receive) -> None:
    """Return when the client has gone (uvicorn answers ``receive`` with ``http.disconnect``)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _unless_disconnected(request: Request, work: Awaitable[_T]) -> tuple[bool, _T | None]:
    """Run ``work`` unless the client leaves first, in which case it is cancelled.

    Cancelling is what aborts the request in the engine and frees its KV blocks: vLLM's
    ``with_cancellation`` does the same for non-streaming requests.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, watcher):
            t.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        return False, None
    return True, task.result()


class _EventStream(StreamingResponse):
    """An SSE response that stops as soon as the client leaves, which aborts the request.

    Starlette's ``StreamingResponse`` watches for disconnects only under ASGI spec < 2.4; otherwise
    it notices a vanished client at the next write, which for a request queued behind a full batch
    can be minutes away while the engine keeps its KV blocks. This one always watches.
    """

    def __init__(self, body: AsyncGenerator[bytes, None]) -> None:
        super().__init__(body, media_type="text/event-stream")
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = asyncio.ensure_future(self.stream_response(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait((sender, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (sender, watcher):
                t.cancel()
            outcome = await asyncio.gather(sender, watcher, return_exceptions=True)
            await self._body.aclose()
        exc = outcome[0]
        if isinstance(exc, Exception) and not isinstance(exc, OSError | ClientDisconnect):
            raise exc


class _Uvicorn(uvicorn.Server):
    """A uvicorn server that leaves signals alone: they belong to whoever owns the process
    (pytest, the CLI), and N servers in one loop must not each install handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    """Bind before starting uvicorn, so a busy port fails here and port 0 is known at once."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


# ------------------------------------------------------------------------------------- replica
class EmulatorReplica:
    """One emulated vLLM replica: an engine on the wall clock, its metrics, faults and HTTP app.

    Built and started by :class:`EmulatorServer`; tests may reach in for ``engine``, ``driver``,
    ``faults`` and :meth:`stats` (the same data ``/emulator/stats`` serves).
    """

    def __init__(self, index: int, config: EmulatorConfig, clock: ModelClock, host: str, port: int) -> None:
        self.index = index
        self.config = config
        self.clock = clock
        self.host = host
        self.port = port
        self.engine = Engine(config.cost_model, replica_id=index, stream_tokens=True)
        self.driver = RealtimeDriver(self.engine, clock)
        self.metrics = _Metrics(config.model, self.engine)
        self.faults = Faults(config.fail_rate, config.fail_status, seed=f"{config.seed}/{index}/faults")
        self.created = int(time.time())
        self._rng = np.random.default_rng([config.seed, index])
        self._ids = itertools.count()
        self._active: dict[str, int] = {}
        self._closing = asyncio.Event()
        self._requests = 0
        self._aborted = 0
        self.server: _Uvicorn | None = None
        self.task: asyncio.Task[None] | None = None
        self.app = self._build_app()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        """What a test or a local scaler wants to know about the replica right now."""
        eng = self.engine
        return {
            "model": self.config.model, "replica": self.index, "url": self.url,
            "running": eng.num_running, "waiting": eng.num_waiting, "outstanding": self.driver.outstanding,
            "kv_usage": eng.kv_usage, "used_blocks": eng.used_blocks, "total_blocks": eng.total_blocks,
            "kv_tokens": eng.total_blocks * eng.cost.block_size, "max_num_seqs": eng.cost.max_num_seqs,
            "max_model_len": self.config.context_length, "requests": self._requests, "finished": eng.finished_total,
            "aborted": self._aborted, "preemptions": eng.preemptions_total, "steps": eng.num_steps,
            "prompt_tokens_computed": eng.prompt_tokens_total, "generation_tokens": eng.generation_tokens_total,
            "model_time": self.clock.now(), "speedup": self.clock.speedup, "faults": self.faults.to_dict(),
        }

    def abort(self, response_id: str) -> bool:
        """Abort the request answered under ``response_id``; False if it is not in flight."""
        rid = self._active.get(response_id)
        return rid is not None and self.driver.abort(rid) is not None

    # ---------------------------------------------------------------- request handling
    def _draw_output_tokens(self) -> int:
        cfg = self.config
        sigma = cfg.output_tokens_sigma
        mu = math.log(cfg.mean_output_tokens) - sigma * sigma / 2
        return max(1, round(float(self._rng.lognormal(mu, sigma))))

    def _job(self, p: wire.ParsedRequest, request: Request) -> _Job:
        cfg = self.config
        if p.model is not None and p.model != cfg.model:
            raise wire.WireError(404, f"The model `{echo_str(p.model)}` does not exist.", param="model",
                                 code="model_not_found")
        if p.priority != 0 and cfg.cost_model.scheduling_policy != "priority":
            raise wire.WireError(400, f"Got priority {echo(p.priority)} but Priority scheduling is not enabled.",
                                 param="priority")
        ctx = cfg.context_length
        room = ctx - p.prompt_tokens
        if room < 1:
            raise wire.WireError(
                400, f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{p.prompt_tokens} tokens in the prompt. Please reduce the length of the input.",
                param="messages" if p.kind == "chat" else "prompt")
        max_tokens = min(p.max_tokens if p.max_tokens is not None else cfg.default_max_tokens, room)
        if p.ignore_eos or cfg.output_tokens_mode == "max-tokens":
            eos_at = max_tokens + 1
        elif cfg.output_tokens_mode == "auto" and p.output_tokens is not None:
            eos_at = p.output_tokens
        else:
            eos_at = self._draw_output_tokens()
        eos_at = max(eos_at, p.min_tokens, 1)
        base = _request_id(request.headers.get("x-request-id"))
        return _Job(p.kind, wire.response_id(p.kind, base), int(time.time()), cfg.model, p.prompt_tokens,
                    max_tokens, eos_at, p.priority, p.include_usage, p.continuous_usage)

    async def _tokens(self, job: _Job) -> AsyncGenerator[TokenChunk, None]:
        """Submit ``job`` to the engine and yield its chunks; leaving early aborts it.

        Metrics are recorded here, as chunks are delivered, because this is the one place every
        request passes through (streaming or not).
        """
        rid = next(self._ids)
        arrival = self.clock.now()
        stream = self.driver.submit(EngineRequest(rid, job.prompt_tokens, job.eos_at, job.max_tokens, job.id,
                                                  priority=job.priority))
        self._active[job.id] = rid
        self._requests += 1
        m = self.metrics
        last: float | None = None
        done = False
        try:
            async for chunk in stream:
                if chunk.n:
                    if chunk.first:
                        m.prompt_tokens.inc(job.prompt_tokens)
                        m.ttft.observe(chunk.time - arrival)
                    elif last is not None:
                        per_token = (chunk.time - last) / chunk.n
                        for _ in range(chunk.n):
                            m.tpot.observe(per_token)
                    m.generation_tokens.inc(chunk.n)
                    last = chunk.time
                if chunk.finished:
                    done = True
                    res = chunk.result
                    if res is not None and not res.aborted:
                        m.success[res.finish_reason].inc()
                        m.e2e.observe(res.e2e)
                        m.req_prompt.observe(job.prompt_tokens)
                        m.req_generation.observe(res.output_tokens)
                    else:
                        self._aborted += 1
                yield chunk
        finally:
            if self._active.get(job.id) == rid:
                del self._active[job.id]
            if not done:
                self._aborted += 1
                self.driver.abort(rid)

    async def _complete(self, job: _Job) -> dict[str, Any]:
        tokens = 0
        reason: str | None = None
        async with contextlib.aclosing(self._tokens(job)) as chunks:
            async for c in chunks:
                tokens += c.n
                if c.finished:
                    reason = c.result.finish_reason if c.result is not None else "abort"
        return wire.full_response(job.kind, job.id, job.created, job.model, wire.filler_text(tokens), reason,
                                  job.prompt_tokens, tokens)

    async def _events(self, job: _Job) -> AsyncGenerator[bytes, None]:
        kind, jid, created, model, prompt = job.kind, job.id, job.created, job.model, job.prompt_tokens
        sent = 0
        opened = kind != "chat"
        async with contextlib.aclosing(self._tokens(job)) as chunks:
            async for c in chunks:
                reason = (c.result.finish_reason if c.result is not None else "abort") if c.finished else None
                if not c.n and reason is None:
                    continue
                if not opened and c.n:
                    yield wire.sse(wire.stream_chunk(
                        kind, jid, created, model, text=None, finish_reason=None, role=True,
                        usage_=wire.usage(prompt, 0) if job.continuous_usage else None))
                    opened = True
                sent += c.n
                yield wire.sse(wire.stream_chunk(
                    kind, jid, created, model, text=wire.filler_text(c.n), finish_reason=reason,
                    usage_=wire.usage(prompt, sent) if job.continuous_usage else None))
        if job.include_usage:
            yield wire.sse(wire.usage_chunk(kind, jid, created, model, prompt, sent))
        yield wire.SSE_DONE

    async def _serve_inference(self, request: Request, kind: wire.Kind) -> Response:
        try:
            raw = await _read_body(request, self.config.max_body_bytes)
        except ClientDisconnect:
            return Response(status_code=_CLIENT_CLOSED)
        except wire.WireError as exc:
            return _error(exc)
        try:
            if self._closing.is_set():
                raise wire.WireError(503, "the replica is shutting down", type_="server_error")
            status, delay = self.faults.take()
            if status is not None:
                raise wire.WireError(status, f"injected fault: HTTP {status}",
                                     type_="server_error" if status >= 500 else "invalid_request_error")
            if delay > 0:
                waited, _ = await _unless_disconnected(request, self._hang(delay))
                if not waited:
                    return Response(status_code=_CLIENT_CLOSED)
                if self._closing.is_set():
                    raise wire.WireError(503, "the replica is shutting down", type_="server_error")
            parsed = wire.parse_request(kind, wire.parse_body(raw), request.headers.get("x-emulator-output-tokens"))
            job = self._job(parsed, request)
        except wire.WireError as exc:
            return _error(exc)
        if parsed.stream:
            return _EventStream(self._events(job))
        finished, body = await _unless_disconnected(request, self._complete(job))
        if not finished:
            return Response(status_code=_CLIENT_CLOSED)
        return _json(body)

    async def _hang(self, seconds: float) -> None:
        """An injected delay that shutdown cuts short, so stopping never waits for a fault."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    # ------------------------------------------------------------------------- the app
    def _build_app(self) -> FastAPI:
        app = FastAPI(title=f"vLLM emulator ({self.config.model})", docs_url=None, redoc_url=None,
                      openapi_url=None)
        cfg = self.config

        async def chat(request: Request) -> Response:
            return await self._serve_inference(request, "chat")

        async def completions(request: Request) -> Response:
            return await self._serve_inference(request, "completion")

        async def models(request: Request) -> Response:
            return _json(wire.models_list(cfg.model, self.created, cfg.context_length))

        async def health(request: Request) -> Response:
            st = self.faults.health_status
            return Response(status_code=st if st is not None else 200)

        async def version(request: Request) -> Response:
            return _json({"version": "0.0.0+tokenpools.emulator"})

        async def metrics(request: Request) -> Response:
            return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

        async def stats(request: Request) -> Response:
            return _json(self.stats())

        async def faults(request: Request) -> Response:
            if request.method == "DELETE":
                self.faults.clear()
            elif request.method == "POST":
                try:
                    body = wire.parse_body(await _read_body(request, cfg.max_body_bytes))
                    allowed = {"status", "count", "delay_seconds", "fail_rate", "fail_status", "health_status",
                               "clear"}
                    unknown = sorted(set(body) - allowed)
                    if unknown:
                        names = ", ".join(echo_str(u) for u in unknown[:5])
                        raise wire.WireError(400, f"unknown fault field(s): {names}", param=echo_str(unknown[0]))
                    if body.pop("clear", False):
                        self.faults.clear()
                    self.faults.arm(**body)
                except wire.WireError as exc:
                    return _error(exc)
                except (TypeError, ValueError) as exc:
                    return _error(wire.WireError(400, echo_str(str(exc), 200)))
            return _json(self.faults.to_dict())

        async def abort(request: Request) -> Response:
            try:
                body = wire.parse_body(await _read_body(request, cfg.max_body_bytes))
                rid = body.get("id")
                if not isinstance(rid, str):
                    raise wire.WireError(400, "'id' (a response id) is required", param="id")
            except wire.WireError as exc:
                return _error(exc)
            return _json({"id": rid, "aborted": self.abort(rid)})

        async def internal_error(request: Request, exc: Exception) -> Response:
            log.exception("emulator replica %d: unhandled error", self.index, exc_info=exc)
            return _json(wire.error_body("internal error in the emulator", type_="server_error"), 500)

        app.add_route("/v1/chat/completions", chat, methods=["POST"])
        app.add_route("/v1/completions", completions, methods=["POST"])
        app.add_route("/v1/models", models, methods=["GET"])
        app.add_route("/health", health, methods=["GET"])
        app.add_route("/version", version, methods=["GET"])
        app.add_route("/metrics", metrics, methods=["GET"])
        app.add_route("/emulator/stats", stats, methods=["GET"])
        app.add_route("/emulator/faults", faults, methods=["GET", "POST", "DELETE"])
        app.add_route("/emulator/abort", abort, methods=["POST"])
        app.add_exception_handler(Exception, internal_error)
        return app


# -------------------------------------------------------------------------------------- server
class EmulatorServer:
    """N emulated replicas on ``port, port+1, ...`` (or free ports with ``port=0``) in this loop.

    ``async with EmulatorServer(3, speedup=50) as em: em.urls`` in a test, or :meth:`start` /
    :meth:`stop` by hand; :meth:`add_replica` / :meth:`remove_replica` let a local scaler change
    the fleet while it runs. Keyword arguments other than the address are
    :class:`EmulatorConfig` fields (overriding ``config``).
    """

    def __init__(self, replicas: int = 1, *, host: str = "127.0.0.1", port: int = 0,
                 config: EmulatorConfig | None = None, log_level: str | None = None, access_log: bool = False,
                 **overrides: Any) -> None:
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        if not 0 <= port <= 65535 or (port and port + replicas - 1 > 65535):
            raise ValueError("ports must be within [0, 65535]")
        cfg = config if config is not None else EmulatorConfig()
        self.config = dataclasses.replace(cfg, **overrides) if overrides else cfg
        self.host = host
        self.base_port = port
        self.initial_replicas = replicas
        self.log_level = log_level
        self.access_log = access_log
        self.clock = ModelClock(self.config.speedup)
        self.replicas: list[EmulatorReplica] = []
        self._next_index = 0

    @property
    def urls(self) -> list[str]:
        """Base URLs of the live replicas (append ``/v1`` for an OpenAI client)."""
        return [r.url for r in self.replicas]

    async def start(self) -> list[str]:
        """Bind and serve the initial replicas; their URLs. All or nothing: a busy port stops all."""
        if self.replicas:
            raise RuntimeError("already started")
        try:
            for _ in range(self.initial_replicas):
                await self.add_replica()
        except BaseException:
            await self.stop()
            raise
        return self.urls

    async def add_replica(self, port: int | None = None) -> EmulatorReplica:
        """Start one more replica (on ``port``, default the next in line or a free one); it serves on return."""
        index = self._next_index
        if port is None:
            port = self.base_port + index if self.base_port else 0
        sock = _bind(self.host, port)
        self._next_index += 1
        rep = EmulatorReplica(index, self.config, self.clock, self.host, sock.getsockname()[1])
        # The admitter's slow-client protections (head/body read timeouts, a cap on connections still
        # sending their request, default limits): uvicorn has none of its own.
        config = uvicorn.Config(rep.app, lifespan="off", log_config=None, log_level=self.log_level,
                                access_log=self.access_log, ws="none", timeout_graceful_shutdown=None,
                                http=guarded_protocol(ConnectionGuard()))
        rep.server = server = _Uvicorn(config)
        rep.driver.start()
        rep.task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]),
                                                          name=f"vllm-emulator-{rep.port}")
        self.replicas.append(rep)
        while not server.started:
            if rep.task.done():
                self.replicas.remove(rep)
                await rep.driver.stop()
                sock.close()
                exc = None if rep.task.cancelled() else rep.task.exception()
                raise RuntimeError(f"emulator replica on port {rep.port} failed to start") from exc
            await asyncio.sleep(0.002)
        return rep

    async def remove_replica(self, replica: EmulatorReplica | int | str | None = None, *,
                             drain: bool = True) -> EmulatorReplica | None:
        """Stop one replica (default: the newest): by object, index or URL.

        ``drain=True`` refuses new requests (503) and lets running ones finish, as a pod would on
        SIGTERM; ``drain=False`` aborts them (streams end with ``finish_reason: "abort"``).
        """
        if not self.replicas:
            return None
        if replica is None:
            rep = self.replicas[-1]
        elif isinstance(replica, EmulatorReplica):
            rep = replica
        else:
            found = [r for r in self.replicas if replica in (r.index, r.url)]
            if not found:
                raise KeyError(replica)
            rep = found[0]
        self.replicas.remove(rep)
        await self._stop_replica(rep, drain)
        return rep

    async def _stop_replica(self, rep: EmulatorReplica, drain: bool) -> None:
        rep._closing.set()
        if rep.server is not None:
            rep.server.config.timeout_graceful_shutdown = None if drain else 5
            rep.server.should_exit = True
        if not drain:
            await rep.driver.stop()  # ends every stream, so uvicorn's connections close
        if rep.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await rep.task
        await rep.driver.stop()

    async def stop(self, *, drain: bool = False) -> None:
        """Stop every replica (aborting what runs unless ``drain``); the server can be started again."""
        reps, self.replicas = self.replicas, []
        await asyncio.gather(*(self._stop_replica(r, drain) for r in reps))
        self._next_index = 0

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@contextlib.asynccontextmanager
async def start_emulators(replicas: int = 1, *, port: int = 0, host: str = "127.0.0.1",
                          config: EmulatorConfig | None = None, **overrides: Any) -> AsyncIterator[list[str]]:
    """``async with start_emulators(3, speedup=50) as urls:`` N replicas in this event loop.

    The shortest way for other components' tests to get a fleet of vLLM look-alikes on free
    loopback ports; use :class:`EmulatorServer` to also reach the replicas themselves.
    """
    async with EmulatorServer(replicas, host=host, port=port, config=config, **overrides) as server:
        yield server.urls
