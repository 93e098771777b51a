"""One emulated vLLM replica: an engine on the wall clock, its metrics, faults and HTTP app."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import ClientDisconnect

from schemas.echo import echo, echo_str
from schemas.openai import INVALID_REQUEST, SERVER, SSE_DONE, OpenAIError
from sim import openai_wire as wire
from sim.engine import Engine
from sim.engine import Request as EngineRequest
from sim.realtime import ModelClock, RealtimeDriver, TokenChunk
from sim.server.asgi import (
    CLIENT_CLOSED,
    EventStream,
    error_response,
    json_response,
    read_body,
    request_id_base,
    unless_disconnected,
)
from sim.server.config import EmulatorConfig
from sim.server.faults import Faults
from sim.server.metrics import ReplicaMetrics

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Job:
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
        self.metrics = ReplicaMetrics(config.model, self.engine)
        self.faults = Faults(config.fail_rate, config.fail_status, seed=f"{config.seed}/{index}/faults")
        self.created = int(time.time())
        self._rng = np.random.default_rng([config.seed, index])
        self._ids = itertools.count()
        self._active: dict[str, int] = {}
        self._closing = asyncio.Event()
        self._requests = 0
        self._aborted = 0
        self.server: uvicorn.Server | None = None
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

    def _job(self, p: wire.WireRequest, request: Request) -> Job:
        cfg = self.config
        if p.model is not None and p.model != cfg.model:
            raise wire.refuse(404, f"The model `{echo_str(p.model)}` does not exist.", param="model",
                                 code="model_not_found")
        if p.priority != 0 and cfg.cost_model.scheduling_policy != "priority":
            raise wire.refuse(400, f"Got priority {echo(p.priority)} but Priority scheduling is not enabled.",
                                 param="priority")
        ctx = cfg.context_length
        room = ctx - p.prompt_tokens
        if room < 1:
            raise wire.refuse(
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
        base = request_id_base(request.headers.get("x-request-id"))
        return Job(p.kind, wire.response_id(p.kind, base), int(time.time()), cfg.model, p.prompt_tokens,
                    max_tokens, eos_at, p.priority, p.include_usage, p.continuous_usage)

    async def _tokens(self, job: Job) -> AsyncGenerator[TokenChunk, None]:
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

    async def _complete(self, job: Job) -> dict[str, Any]:
        tokens = 0
        reason: str | None = None
        async with contextlib.aclosing(self._tokens(job)) as chunks:
            async for c in chunks:
                tokens += c.n
                if c.finished:
                    reason = c.result.finish_reason if c.result is not None else "abort"
        return wire.full_response(job.kind, job.id, job.created, job.model, wire.filler_text(tokens), reason,
                                  job.prompt_tokens, tokens)

    async def _events(self, job: Job) -> AsyncGenerator[bytes, None]:
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
        yield SSE_DONE

    async def _serve_inference(self, request: Request, kind: wire.Kind) -> Response:
        try:
            raw = await read_body(request, self.config.max_body_bytes)
        except ClientDisconnect:
            return Response(status_code=CLIENT_CLOSED)
        except OpenAIError as exc:
            return error_response(exc)
        try:
            if self._closing.is_set():
                raise wire.refuse(503, "the replica is shutting down", type=SERVER)
            status, delay = self.faults.take()
            if status is not None:
                raise wire.refuse(status, f"injected fault: HTTP {status}",
                                     type=SERVER if status >= 500 else INVALID_REQUEST)
            if delay > 0:
                waited, _ = await unless_disconnected(request, self._hang(delay))
                if not waited:
                    return Response(status_code=CLIENT_CLOSED)
                if self._closing.is_set():
                    raise wire.refuse(503, "the replica is shutting down", type=SERVER)
            parsed = wire.parse_request(kind, wire.parse_body(raw), request.headers.get("x-emulator-output-tokens"))
            job = self._job(parsed, request)
        except OpenAIError as exc:
            return error_response(exc)
        if parsed.stream:
            return EventStream(self._events(job))
        finished, body = await unless_disconnected(request, self._complete(job))
        if not finished:
            return Response(status_code=CLIENT_CLOSED)
        return json_response(body)

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
            return json_response(wire.models_list(cfg.model, self.created, cfg.context_length))

        async def health(request: Request) -> Response:
            st = self.faults.health_status
            return Response(status_code=st if st is not None else 200)

        async def version(request: Request) -> Response:
            return json_response({"version": "0.0.0+tokenpools.emulator"})

        async def metrics(request: Request) -> Response:
            return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

        async def stats(request: Request) -> Response:
            return json_response(self.stats())

        async def faults(request: Request) -> Response:
            if request.method == "DELETE":
                self.faults.clear()
            elif request.method == "POST":
                try:
                    body = wire.parse_body(await read_body(request, cfg.max_body_bytes))
                    allowed = {"status", "count", "delay_seconds", "fail_rate", "fail_status", "health_status",
                               "clear"}
                    unknown = sorted(set(body) - allowed)
                    if unknown:
                        names = ", ".join(echo_str(u) for u in unknown[:5])
                        raise wire.refuse(400, f"unknown fault field(s): {names}", param=echo_str(unknown[0]))
                    if body.pop("clear", False):
                        self.faults.clear()
                    self.faults.arm(**body)
                except OpenAIError as exc:
                    return error_response(exc)
                except (TypeError, ValueError) as exc:
                    return error_response(wire.refuse(400, echo_str(str(exc), 200)))
            return json_response(self.faults.to_dict())

        async def abort(request: Request) -> Response:
            try:
                body = wire.parse_body(await read_body(request, cfg.max_body_bytes))
                rid = body.get("id")
                if not isinstance(rid, str):
                    raise wire.refuse(400, "'id' (a response id) is required", param="id")
            except OpenAIError as exc:
                return error_response(exc)
            return json_response({"id": rid, "aborted": self.abort(rid)})

        async def internal_error(request: Request, exc: Exception) -> Response:
            log.exception("emulator replica %d: unhandled error", self.index, exc_info=exc)
            return error_response(wire.refuse(500, "internal error in the emulator", type=SERVER))

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
