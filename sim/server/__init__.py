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

Modules: ``config`` (:class:`EmulatorConfig`, :func:`build_cost_model`), ``faults``, ``metrics``
(vLLM's Prometheus names), ``asgi`` (body limits, disconnects, SSE), ``replica``
(:class:`EmulatorReplica` and its app) and ``fleet`` (:class:`EmulatorServer`, :func:`start_emulators`).
"""

from sim.server.config import EmulatorConfig, OutputTokensMode, build_cost_model
from sim.server.faults import Faults
from sim.server.fleet import EmulatorServer, start_emulators
from sim.server.replica import EmulatorReplica

__all__ = [
    "EmulatorConfig",
    "EmulatorReplica",
    "EmulatorServer",
    "Faults",
    "OutputTokensMode",
    "build_cost_model",
    "start_emulators",
]
