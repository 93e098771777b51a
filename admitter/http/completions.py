"""``POST /v1/chat/completions`` and ``/v1/completions``: the hot path, as a plain ASGI endpoint.

A raw ASGI callable (not a FastAPI route function) because the admitter must own the response:
it decides between a JSON error, a relayed body and a relayed stream only after admission and the
replica's answer, and must notice a client that goes away while it waits (queue, replica, stream).

Per request: authenticate -> read and check the body -> route model to pool -> estimate the cost
-> decide (maybe wait) -> relay -> release with the replica's usage -> events and metrics.
Everything from the decision on runs inside the request's cancel scope (see ``admitter.admission.gate.Flight``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

import orjson
from starlette.types import Receive, Scope, Send

from admitter.admission.gate import Flight, PoolGate
from admitter.http.auth import request_token
from admitter.http.body import CHAT, ClientGone, ParsedRequest, check_content_type, parse_body, read_body
from admitter.http.errors import openai_error, send_error, send_stream_error
from admitter.state import AdmitterState
from admitter.upstream.proxy import Exchange
from capacity.admission import Decision, Verdict
from capacity.cost import RequestCost
from capacity.live import EntitlementLive
from schemas.echo import echo_str
from schemas.errors import AdmissionRefused, Preempted, TokenPoolsError
from schemas.openai import OpenAIError
from schemas.records import SCHEMA_VERSION, Amounts, Outcome, Phase, RequestEvent
from schemas.specs import TokenPool

log = logging.getLogger("tokenpools.admitter")
_NOTHING = Amounts.model_construct(throughput=0.0, kv=0.0, concurrency=0.0)
_MAX_REPLICA = 2048  # RequestEvent.replica's bound (the event is built without validation)
# Extension headers (x-*) go to the replica, except any that may carry a credential.
_SECRETISH = re.compile(
    rb"(^|[-_])(key|api[-_]?key|auth|authorization|token|access[-_]token|secret|cookie|password|passwd|session|"
    rb"signature|credentials?)([-_]|$)")


class Call:
    """What one request's events are made of, gathered along the way."""

    __slots__ = (
        "_reserved", "admitted", "arrival", "cost", "decision_outcome", "ent", "ex", "flight", "gate", "max_tokens",
        "pool", "prompt_est", "queue_wait", "queued", "refusal",
    )

    def __init__(self, pool: TokenPool, gate: PoolGate, ent: EntitlementLive, flight: Flight, ex: Exchange,
                 cost: RequestCost, prompt_est: int, max_tokens: int, arrival: float) -> None:
        self.pool = pool
        self.gate = gate
        self.ent = ent
        self.flight = flight
        self.ex = ex
        self.cost = cost
        self.prompt_est = prompt_est
        self.max_tokens = max_tokens
        self.arrival = arrival
        self.queue_wait = 0.0
        self.queued = False
        self.admitted = False
        self.decision_outcome = Outcome.ADMITTED
        self.refusal: Decision | None = None
        self._reserved: Amounts | None = None

    def reserved(self) -> Amounts:
        if self._reserved is None:
            cost = self.cost
            self._reserved = Amounts.model_construct(throughput=cost.throughput, kv=cost.kv, concurrency=1.0)
        return self._reserved


class CompletionEndpoint:
    """One OpenAI completion route; ``kind`` selects chat (``messages``) or text (``prompt``)."""

    def __init__(self, state: AdmitterState, kind: str, path: str) -> None:
        self.state = state
        self.kind = kind
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrival = time.perf_counter()
        try:
            await self._handle(scope, receive, send, arrival)
        except TokenPoolsError as exc:  # raised only before anything was sent
            await send_error(send, openai_error(exc))
        except ClientGone:
            return

    async def _handle(self, scope: Scope, receive: Receive, send: Send, arrival: float) -> None:
        state = self.state
        headers = scope["headers"]
        token = request_token(headers)  # the credential rule every route shares (400 for two of them)
        content_type = content_length = None
        forward: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                content_length = value
            elif name.startswith(b"x-") and name != b"x-request-id" and not _SECRETISH.search(name):
                forward.append((name, value))
        owner = state.keyring.lookup(token)
        if owner is None:
            raise OpenAIError(401, "missing or invalid API key; send it as 'Authorization: Bearer <key>'",
                              "invalid_api_key")
        if forward and token:
            secret = token.encode("latin-1", "replace")
            forward = [(k, v) for k, v in forward if secret not in v]
        check_content_type(content_type.decode("latin-1") if content_type else None)
        length = int(content_length) if content_length and content_length.isdigit() else None
        raw = await read_body(receive, length, state.settings.max_body_bytes)
        parsed = parse_body(raw, self.kind)
        pool = state.models.get(parsed.model)
        if pool is None:
            raise OpenAIError(404, f"the model '{echo_str(parsed.model)}' does not exist", "model_not_found",
                              param="model")
        ent_name = owner.by_pool.get(pool.name)
        if ent_name is None:
            raise OpenAIError(403, f"this API key has no entitlement on model '{parsed.model}'", "no_entitlement",
                              param="model")
        gate = state.gates.get(pool.name)
        ent = gate.live.entitlements.get(ent_name) if gate is not None else None
        if gate is None or ent is None:  # deleted (config topic, admin API) while the body was read
            raise OpenAIError(403, f"this API key has no entitlement on model '{parsed.model}'", "no_entitlement",
                              param="model")
        context = pool.spec.context_length
        if parsed.max_tokens is not None and parsed.max_tokens > context:
            raise OpenAIError(400, f"max_tokens ({parsed.max_tokens}) exceeds the model's context length of "
                              f"{context} tokens", "context_length_exceeded", param="max_tokens")
        prompt_tokens = parsed.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = gate.estimator.estimate(parsed.prompt_bytes)
        if prompt_tokens > context:
            raise OpenAIError(400, f"the prompt is about {prompt_tokens} tokens, more than the model's context "
                              f"length of {context}", "context_length_exceeded",
                              param="messages" if self.kind == CHAT else "prompt")
        # Without max_tokens a replica may generate up to the context: that is what KV must hold.
        max_tokens = parsed.max_tokens if parsed.max_tokens is not None else max(1, context - prompt_tokens)
        body = _upstream_body(raw, parsed, pool, ent.rank)

        request_id = state.ids.next()
        rid = request_id.encode()
        flight = Flight(request_id, ent)
        ex = Exchange(request_id, self.path, parsed, send, flight)
        call = Call(pool, gate, ent, flight, ex, gate.live.cost(prompt_tokens, max_tokens, ent), prompt_tokens,
                    max_tokens, arrival)
        upstream_headers = [(b"content-type", b"application/json"), (b"x-request-id", rid), *forward]
        reply_headers = [(b"x-request-id", rid)]
        watcher = asyncio.create_task(_watch_disconnect(receive, flight))
        error: OpenAIError | None = None
        try:
            try:
                with flight.scope:
                    await self._admit_and_relay(call, body, upstream_headers, reply_headers)
            except TokenPoolsError as exc:  # domain errors get their status here, once
                error = openai_error(exc)
            finally:
                flight.closing = True
                watcher.cancel()
            if flight.preempted_by is not None:
                await _tell_preempted(call, reply_headers)
            elif error is not None and not flight.cancelled and not ex.started:
                await send_error(send, error, dict(reply_headers_str(reply_headers)))
        finally:
            await self._finish(call, error)

    async def _admit_and_relay(self, call: Call, body: bytes, upstream_headers: list[tuple[bytes, bytes]],
                               reply_headers: list[tuple[bytes, bytes]]) -> None:
        state = self.state
        ent, gate, flight = call.ent, call.gate, call.flight
        metrics = state.metrics
        if state.settings.passthrough:
            call.admitted = True
        else:
            now = time.monotonic()
            deadline = gate.deadline(ent, now)
            decision = gate.decide(flight, call.cost, now, deadline)
            if decision.verdict is Verdict.QUEUE:
                call.queued = True
                metrics.child(metrics.queued, call.pool.name, ent.name, ent.tier.value).inc()
                decision = await gate.wait(flight, call.cost, deadline, decision)
                call.queue_wait = time.monotonic() - now
            if not decision.admitted:
                call.refusal = decision
                call.decision_outcome = Outcome.REFUSED
                dim = decision.dimension.value if decision.dimension else "capacity"
                metrics.child(metrics.refused, call.pool.name, ent.name, ent.tier.value, dim).inc()
                state.usage.decision(ent.name, Outcome.REFUSED)
                await state.sink.emit(self._event(call, Phase.DECISION, Outcome.REFUSED, status=429))
                raise AdmissionRefused(ent.name, ent.tier.value, dim, decision.retry_after, ent.limits(),
                                       ent.remaining())
            call.admitted = True
            if call.queued:
                call.decision_outcome = Outcome.QUEUED_ADMITTED
                metrics.child(metrics.queue_wait, call.pool.name, ent.tier.value).observe(call.queue_wait)
        metrics.child(metrics.admitted, call.pool.name, ent.name, ent.tier.value).inc()
        state.usage.decision(ent.name, call.decision_outcome)
        await state.sink.emit(self._event(call, Phase.DECISION, call.decision_outcome))
        await state.upstream.relay(call.ex, call.pool.name, body, upstream_headers, reply_headers)

    async def _finish(self, call: Call, error: OpenAIError | None) -> None:
        """Release the reservation with what is known, then count and emit the finish event."""
        state, ex, flight, gate, ent = self.state, call.ex, call.flight, call.gate, call.ent
        if ex.usage_known:
            prompt, output = ex.prompt_tokens, ex.output_tokens
        elif ex.status is not None and 400 <= ex.status < 500:
            prompt, output = 0, 0  # the replica rejected it without doing any work
        elif ex.chunks:
            prompt, output = None, ex.chunks  # streamed this much before it stopped
        else:
            prompt, output = None, None  # unknown: keep the reserved charge
        released = False if state.settings.passthrough else gate.end(flight, prompt, output)
        if not (call.admitted or released):
            return  # refused (its decision event is out) or failed before admission
        charged = self._charged(call, released, prompt, output)
        if flight.preempted_by is not None:
            outcome, status = Outcome.PREEMPTED, 503
        elif flight.cancelled:
            outcome, status = Outcome.CANCELLED, 499
        elif error is not None:
            outcome, status = Outcome.FAILED, error.status
        else:
            outcome, status = ex.failure or Outcome.COMPLETED, ex.status
        if ex.prompt_tokens is not None and call.ex.parsed.prompt_bytes and call.ex.parsed.prompt_tokens is None:
            gate.estimator.observe(call.ex.parsed.prompt_bytes, ex.prompt_tokens)
        metrics = state.metrics
        labels = (call.pool.name, ent.name, ent.tier.value)
        metrics.child(metrics.finished, *labels, outcome.value).inc()
        if outcome is Outcome.PREEMPTED:
            metrics.child(metrics.preempted, *labels).inc()
        elif outcome is Outcome.FAILED and error is not None:
            metrics.child(metrics.upstream_errors, call.pool.name, error.code or "error").inc()
        if ex.t_client_first and outcome is Outcome.COMPLETED:
            overhead = ex.t_client_first - call.arrival - call.queue_wait - ex.upstream_time
            metrics.child(metrics.added_latency, call.pool.name, "true" if ex.parsed.stream else "false").observe(
                max(0.0, overhead))
        prompt_used = ex.prompt_tokens if ex.prompt_tokens is not None else (0 if prompt == 0 else call.prompt_est)
        output_used = ex.output_tokens if ex.output_tokens is not None else ex.chunks
        if ex.prompt_tokens is not None:
            metrics.child(metrics.tokens, *labels, "input").inc(ex.prompt_tokens)
        if ex.output_tokens is not None:
            metrics.child(metrics.tokens, *labels, "output").inc(ex.output_tokens)
        state.usage.finish(ent.name, outcome, prompt_used, output_used)
        replica = ex.replica
        event = self._event(call, Phase.FINISH, outcome, status=status, prompt_tokens=prompt_used,
                            output_tokens=output_used, finished=True,
                            replica=replica.url[:_MAX_REPLICA] if replica is not None else "", charged=charged)
        try:
            await state.sink.emit(event)
        except Exception:
            log.exception("event sink failed for request %s", call.ex.request_id)

    def _charged(self, call: Call, released: bool, prompt: int | None, output: int | None) -> Amounts:
        """What the entitlement was charged in the end: what ``PoolLive.release`` settled, recomputed.

        ``gate.end`` says only whether it released, so this repeats ``release``'s rule on the same
        inputs, right after it and with the same weights (nothing runs in between on the loop): usage
        known in part or whole -> the pool's weights times the tokens (the reserved prompt estimate
        for a prompt not reported, no output for an output not reported); unknown -> the reserved
        charge stays. A request preempted was released by ``decide`` without usage, so its reserved
        charge stays too. KV and concurrency are what it held. Pass-through holds and charges nothing.
        """
        if self.state.settings.passthrough:
            return _NOTHING
        cost = call.cost
        if released and (prompt is not None or output is not None):
            live = call.gate.live
            p = cost.prompt_tokens if prompt is None else prompt
            throughput = live.w_in * p + live.w_out * (output or 0)
            return Amounts.model_construct(throughput=throughput, kv=cost.kv, concurrency=cost.concurrency)
        return call.reserved()

    def _event(self, call: Call, phase: Phase, outcome: Outcome, *, status: int | None = None,
               prompt_tokens: int | None = None, output_tokens: int = 0, finished: bool = False,
               replica: str = "", charged: Amounts | None = None) -> RequestEvent:
        ex, ent, refusal = call.ex, call.ent, call.refusal
        now = time.perf_counter()
        ttft = ex.t_client_first - call.arrival if finished and ex.t_client_first else None
        # Built without validation (every field is typed here and tests validate emitted events);
        # the id is derived from the request and phase, so a re-sent event keeps its id and
        # idempotent consumers drop the duplicate.
        return RequestEvent.model_construct(
            id=f"{ex.request_id}-{phase.value}",
            schema_version=SCHEMA_VERSION,
            request_id=ex.request_id,
            phase=phase,
            outcome=outcome,
            ts=time.time(),
            admitter_id=self.state.settings.admitter_id,
            region=call.pool.spec.region,
            tenant=ent.tenant,
            entitlement=ent.name,
            pool=call.pool.name,
            tier=ent.tier,
            model=ex.parsed.model,
            prompt_tokens=call.prompt_est if prompt_tokens is None else prompt_tokens,
            max_tokens=call.max_tokens,
            output_tokens=output_tokens,
            reserved=call.reserved(),
            queue_wait_s=call.queue_wait,
            ttft_s=ttft,
            latency_s=now - call.arrival if finished else None,
            refused_dimension=refusal.dimension if refusal is not None else None,
            retry_after_s=_finite(refusal.retry_after) if refusal is not None else None,
            status_code=status,
            preempted_by=call.flight.preempted_by,
            replica=replica,
            charged=charged,
        )


def _finite(x: float) -> float | None:
    return x if x == x and x != float("inf") else None


def reply_headers_str(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]


async def _tell_preempted(call: Call, reply_headers: list[tuple[bytes, bytes]]) -> None:
    err = Preempted(call.gate.live.tick_seconds)  # worth retrying after one allocator tick
    ex = call.ex
    if not ex.started:
        await send_error(ex.send, openai_error(err), dict(reply_headers_str(reply_headers)))
    elif ex.parsed.stream:
        await send_stream_error(ex.send, err)


async def _watch_disconnect(receive: Receive, flight: Flight) -> None:
    """Cancel the request's work as soon as its client disconnects (the body is already read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            flight.cancel()
            return


def _upstream_body(raw: bytes, parsed: ParsedRequest, pool: TokenPool, tier_rank: int) -> bytes:
    """The body as received, unless the model name, the usage option or the priority must change.

    A client's own ``priority`` is never forwarded: on replicas run with vLLM's priority policy it
    would let spot jump ahead of guaranteed work. When the pool says its replicas use that policy,
    the admitter sends the tier instead (guaranteed 0, elastic 1, spot 2).
    """
    data = parsed.data
    changed = False
    if "priority" in data:
        del data["priority"]
        changed = True
    if pool.spec.replica_scheduling == "priority":
        data["priority"] = tier_rank
        changed = True
    if parsed.model != pool.spec.model:
        data["model"] = pool.spec.model
        changed = True
    if parsed.stream and not parsed.client_wants_usage:
        options = dict(data.get("stream_options") or {})
        options["include_usage"] = True
        data["stream_options"] = options
        changed = True
    return orjson.dumps(data) if changed else raw
