"""uvicorn's HTTP/1.1 protocol with the read timeouts and connection cap it lacks (slowloris).

uvicorn 0.54 has no header or body read timeout: ``timeout_keep_alive`` is armed only once a
response has completed, and any byte received cancels it, so a client that opens a connection and
sends nothing, a partial request head, or a ``Content-Length: 10000`` with 40 bytes of body holds
that connection (its h11 state, buffers, and for a body the app's task) for ever. A thousand of
them held ~10 MB of an admitter for as long as they liked.

:func:`guarded_protocol` returns a subclass of uvicorn's ``H11Protocol`` (pass it as
``uvicorn.Config(http=...)``) that adds, per connection:

* a **head timeout**: a request head not complete ``head_timeout`` seconds after the connection
  opened (or after the first byte of the next request on a kept-alive connection) closes it. No
  response can be sent (h11 has no request to answer), so it is a plain close;
* a **body timeout**: no body bytes for ``body_idle_timeout`` seconds, or the body not complete
  ``body_timeout`` seconds after its head, answers 408 in the OpenAI error shape if no response
  has started (else just closes). Time the server itself stopped reading (flow control while the app
  is busy) does not count as the client's silence;
* a **cap on unadmitted connections**: a connection is *unadmitted* from accept (or the first byte of
  a next request) until its request has been received in full. Good clients are unadmitted for
  milliseconds; slow ones for up to the timeouts. When a new connection would make more than
  ``max_unadmitted`` of them, the **oldest** unadmitted connection is dropped (503 if it can still be
  answered), not the new one: refusing new connections would let whoever holds the cap shut every
  good client out until the timeouts, while dropping the oldest costs a good client nothing unless
  the cap is filled within its few milliseconds of being unadmitted.

"Not yet authenticated" is approximated by "request not yet received in full": the protocol cannot
see the app's authentication, and every route here authenticates on the head and then reads the body
before doing anything, so a connection still sending its request has earned nothing yet.

Only the h11 implementation is wrapped: httptools is not a dependency, and :func:`guarded_protocol`
is passed explicitly, so installing httptools later does not silently drop these protections
(``http="auto"`` would switch to it).
"""

from __future__ import annotations

import asyncio
import http
from dataclasses import dataclass, field
from typing import Any, ClassVar

import h11
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

__all__ = ["ConnectionGuard", "ConnectionStats", "GuardedH11Protocol", "guarded_protocol"]

#: Defaults (the admitter's settings and the emulator use them). Clients of an inference API are
#: programs on fast links: 10 s for a head or between body chunks is ample, 60 s lets 1 MiB arrive at
#: 20 KB/s, and 1024 connections still sending their request bound what slow ones hold (each keeps up
#: to h11's 16 KiB of head, or 64 KiB of body before uvicorn stops reading) near 80 MB at worst.
HEAD_TIMEOUT = 10.0
BODY_IDLE_TIMEOUT = 10.0
BODY_TIMEOUT = 60.0
MAX_UNADMITTED = 1024


@dataclass(slots=True)
class ConnectionStats:
    """Counters for /metrics (the admitter exports them; see admitter/metrics.py)."""

    head_timeouts: int = 0
    body_timeouts: int = 0
    evicted: int = 0  # dropped because the cap of unadmitted connections was reached


@dataclass(slots=True)
class ConnectionGuard:
    """The limits, and the unadmitted connections of one server, oldest first (a dict keeps order)."""

    head_timeout: float = HEAD_TIMEOUT
    body_idle_timeout: float = BODY_IDLE_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    max_unadmitted: int = MAX_UNADMITTED
    stats: ConnectionStats = field(default_factory=ConnectionStats)
    unadmitted: dict[GuardedH11Protocol, None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if min(self.head_timeout, self.body_idle_timeout, self.body_timeout) <= 0 or self.max_unadmitted < 1:
            raise ValueError("timeouts must be > 0 and max_unadmitted >= 1")

    def enter(self, conn: GuardedH11Protocol) -> None:
        """``conn`` starts (or restarts) sending a request; make room by dropping the oldest if needed."""
        if conn in self.unadmitted:
            return
        while len(self.unadmitted) >= self.max_unadmitted:
            oldest = next(iter(self.unadmitted))
            del self.unadmitted[oldest]
            self.stats.evicted += 1
            oldest.drop(503, "too many connections are still sending their request; retry", "server_busy")
        self.unadmitted[conn] = None

    def leave(self, conn: GuardedH11Protocol) -> None:
        self.unadmitted.pop(conn, None)


class GuardedH11Protocol(H11Protocol):
    """``H11Protocol`` plus head/body read timeouts and the unadmitted-connection cap (see the module)."""

    guard: ClassVar[ConnectionGuard]  # set on the subclass guarded_protocol() makes, one per server

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_idle_timer: asyncio.TimerHandle | None = None
        self._body_deadline: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timers()
        self.guard.leave(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track(got_data=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start the next (pipelined) request
        self._track(got_data=False)

    # -- state machine: which timer applies follows h11's view of the client
    def _track(self, *, got_data: bool) -> None:
        if self.transport.is_closing():
            self._stop_timers()
            self.guard.leave(self)
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            # Between requests. Bytes of the next head are buffered: that head is now on the clock.
            # Nothing buffered is an idle keep-alive connection: uvicorn's keep-alive timeout owns it.
            if self._head_timer is None and self.conn.trailing_data[0]:
                self._start_head()
        elif state is h11.SEND_BODY:
            self._cancel_head()
            self.guard.enter(self)  # a kept-alive connection whose next head came in one piece enters here
            if self._body_deadline is None:
                self._body_deadline = self.loop.call_later(self.guard.body_timeout, self._body_expired, False)
                got_data = True
            if got_data:
                if self._body_idle_timer is not None:
                    self._body_idle_timer.cancel()
                self._body_idle_timer = self.loop.call_later(self.guard.body_idle_timeout, self._body_expired, True)
        else:  # DONE, MUST_CLOSE, CLOSED, ERROR, SWITCHED_PROTOCOL: the request is in, nothing to time
            self._stop_timers()
            self.guard.leave(self)

    def _start_head(self) -> None:
        self._head_timer = self.loop.call_later(self.guard.head_timeout, self._head_expired)
        self.guard.enter(self)

    def _cancel_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _stop_timers(self) -> None:
        self._cancel_head()
        for timer in (self._body_idle_timer, self._body_deadline):
            if timer is not None:
                timer.cancel()
        self._body_idle_timer = self._body_deadline = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.guard.stats.head_timeouts += 1
            self.drop(None, "", "")

    def _body_expired(self, idle: bool) -> None:
        if idle:
            self._body_idle_timer = None
            if self.flow.read_paused:  # we stopped reading (the app is behind), not the client: wait on
                self._body_idle_timer = self.loop.call_later(self.guard.body_idle_timeout, self._body_expired, True)
                return
        else:
            self._body_deadline = None
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self.guard.stats.body_timeouts += 1
            what = f"no request body bytes for {self.guard.body_idle_timeout:g} s" if idle else \
                f"request body not complete within {self.guard.body_timeout:g} s"
            self.drop(408, f"{what}; closing the connection", "request_timeout")

    def drop(self, status: int | None, message: str, code: str) -> None:
        """Close this connection, answering ``status`` first if a request is in and no response has started.

        The app's task (if any) sees the client as gone: its ``receive`` returns ``http.disconnect`` and
        anything it sends later is discarded, so it cannot write after our answer.
        """
        self._stop_timers()
        self.guard.leave(self)
        if self.transport.is_closing():
            return
        cycle = self.cycle
        answer = (status is not None and self.conn.our_state is h11.SEND_RESPONSE
                  and (cycle is None or not cycle.response_started))
        if cycle is not None and not cycle.response_complete:
            cycle.response_started = cycle.response_complete = cycle.disconnected = True
            cycle.message_event.set()
        if answer:
            assert status is not None
            body = orjson.dumps({"error": {"message": message, "type": _error_type(status), "param": None,
                                           "code": code}})
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            try:
                for event in (h11.Response(status_code=status, headers=headers,
                                                   reason=http.HTTPStatus(status).phrase.encode()), h11.Data(data=body),
                              h11.EndOfMessage()):
                    self.transport.write(self.conn.send(event))
            except h11.LocalProtocolError:  # h11 would not have it (a state we did not foresee): just close
                pass
        self.transport.close()


def _error_type(status: int) -> str:
    return "service_unavailable" if status == 503 else "invalid_request_error"


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedH11Protocol]:
    """A protocol class bound to ``guard``: one per server, so each has its own cap and counters."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": guard})
