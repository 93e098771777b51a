"""HTTP clients for talking to replicas, behind one small interface the relay uses.

``HttpxClient`` (the default) keeps keep-alive HTTP/1.1 connections per replica, each one an httpx
transport (``httpx.AsyncHTTPTransport``) holding a single connection, on a per-replica free list.
Why not one ``httpx.AsyncClient``: httpcore 1.0.x's pool walks every pooled connection on every
request and release (``is_idle``/``has_expired``, the latter a ``poll()`` per idle socket;
encode/httpcore#1035 is unmerged), so per-request CPU grows with the number of open connections,
and a gateway holds hundreds of long streams open: at 64 concurrent requests that bookkeeping was
most of the admitter's CPU. A free list is O(1). The client layer (URL merging, cookies, auth,
redirects, hooks) is skipped too: a proxy needs none of it, and it cost ~30% of an upstream call.

``AiohttpClient`` does the same over aiohttp's connector, at about a quarter of httpx's CPU per
request (measured: ~0.3 ms against ~1.2 ms on the 2-vCPU test machine). aiohttp is installed
today only as a dependency of faust-streaming and kubernetes; selecting it
(``upstream_client="aiohttp"``) should come with declaring it.

Errors are mapped to three exceptions so the relay decides retries and statuses once:
``UpstreamConnectError`` (nothing was sent: safe to retry elsewhere), ``UpstreamTimeout`` and
``UpstreamBroken`` (the request may have reached the replica: not retried). They are transport
errors, private to the relay, which turns them into the domain's ``UpstreamError`` family.
"""

from __future__ import annotations

import importlib.util
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

import anyio
import httpx

from schemas.errors import TokenPoolsError

if TYPE_CHECKING:
    from admitter.upstream.replicas import Replica

# httpcore runs ``import sniffio`` several times per request and falls back to asyncio when it is
# missing (newer anyio no longer installs it). A failed import is not cached, so each one scans
# sys.path again: measured at ~0.1 ms apiece on the test machine. Recording the absence makes the
# same import fail at once; if sniffio is installed this does nothing.
if importlib.util.find_spec("sniffio") is None:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

Headers = list[tuple[bytes, bytes]]


class UpstreamConnectError(TokenPoolsError):
    """No connection (refused, unreachable, connect timeout): the request was never sent."""

    def __init__(self, timeout: bool) -> None:
        super().__init__("connect timeout" if timeout else "connection failed")
        self.timeout = timeout


class UpstreamTimeout(TokenPoolsError):
    """The replica went silent longer than the read timeout (it may still be working)."""


class UpstreamBroken(TokenPoolsError):
    """The connection failed after the request was sent."""


class UpstreamResponse(Protocol):
    status: int
    content_type: str

    def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (raises ``UpstreamTimeout`` / ``UpstreamBroken``)."""
        ...

    async def read(self) -> bytes: ...

    async def close(self) -> None:
        """Release the connection; closing an unread response drops it, which tells the replica to stop."""


class UpstreamClient(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, replica: Replica, path: str, body: bytes, headers: Headers) -> UpstreamResponse: ...


# ------------------------------------------------------------------------------------------ httpx
class _HttpxResponse:
    __slots__ = ("_client", "_lane", "_parked", "_replica", "_response", "content_type", "status")

    def __init__(self, client: HttpxClient, replica: Replica, lane: httpx.AsyncHTTPTransport,
                 response: httpx.Response) -> None:
        self._client = client
        self._replica = replica
        self._lane = lane
        self._response = response
        self._parked = False
        self.status = response.status_code
        self.content_type = response.headers.get("content-type", "application/json")

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.TimeoutException:
            raise UpstreamTimeout from None
        except httpx.HTTPError:
            raise UpstreamBroken from None

    async def read(self) -> bytes:
        try:
            return await self._response.aread()
        except httpx.TimeoutException:
            raise UpstreamTimeout from None
        except httpx.HTTPError:
            raise UpstreamBroken from None

    async def close(self) -> None:
        if not self._response.is_closed:
            with anyio.CancelScope(shield=True):  # runs while the request's scope is being cancelled
                await self._response.aclose()
        if not self._parked:
            self._parked = True
            await self._client.park(self._replica, self._lane)


class HttpxClient:
    """Per-replica free lists of single-connection httpx transports (see the module docstring)."""

    def __init__(self, timeout: httpx.Timeout, max_idle_per_replica: int = 256, keepalive_expiry: float = 4.0
                 ) -> None:
        self._extensions = {"timeout": timeout.as_dict()}
        self.max_idle = max_idle_per_replica
        self._lane_limits = httpx.Limits(max_connections=1, max_keepalive_connections=1,
                                         keepalive_expiry=keepalive_expiry)
        self._ssl: ssl.SSLContext | None = None
        self._lanes: dict[int, tuple[Replica, list[httpx.AsyncHTTPTransport]]] = {}
        self._urls: dict[tuple[str, str], httpx.URL] = {}
        self.lanes_opened = 0
        self.started = False

    async def start(self) -> None:
        self._ssl = httpx.create_ssl_context()  # once: building one costs tens of milliseconds
        self.started = True

    async def stop(self) -> None:
        self.started = False
        lanes, self._lanes = self._lanes, {}
        for _, idle in lanes.values():
            for lane in idle:
                await lane.aclose()

    def _idle(self, replica: Replica) -> list[httpx.AsyncHTTPTransport]:
        entry = self._lanes.get(id(replica))
        if entry is None:
            entry = self._lanes[id(replica)] = (replica, [])
        return entry[1]

    async def park(self, replica: Replica, lane: httpx.AsyncHTTPTransport) -> None:
        idle = self._idle(replica)
        if self.started and len(idle) < self.max_idle:
            idle.append(lane)
        else:
            with anyio.CancelScope(shield=True):
                await lane.aclose()

    def _url(self, base: str, path: str) -> httpx.URL:
        """Parsed once per replica and path: URL parsing is a visible share of httpx's cost."""
        url = self._urls.get((base, path))
        if url is None:
            url = self._urls[(base, path)] = httpx.URL(base + path)
        return url

    async def send(self, replica: Replica, path: str, body: bytes, headers: Headers) -> UpstreamResponse:
        assert self.started, "HttpxClient.start() was not awaited"
        idle = self._idle(replica)
        if idle:
            lane = idle.pop()
        else:
            self.lanes_opened += 1
            lane = httpx.AsyncHTTPTransport(
                verify=self._ssl or True, limits=self._lane_limits, http1=True, http2=False, trust_env=False,
                retries=0, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        request = httpx.Request("POST", self._url(replica.base, path), content=body, headers=headers,
                                extensions=self._extensions)
        try:
            response = await lane.handle_async_request(request)
        except BaseException as exc:
            await self.park(replica, lane)
            if isinstance(exc, httpx.ConnectTimeout):
                raise UpstreamConnectError(timeout=True) from None
            if isinstance(exc, httpx.ConnectError):
                raise UpstreamConnectError(timeout=False) from None
            if isinstance(exc, httpx.TimeoutException):
                raise UpstreamTimeout from None
            if isinstance(exc, httpx.HTTPError):
                raise UpstreamBroken from None
            raise
        return _HttpxResponse(self, replica, lane, response)


# ---------------------------------------------------------------------------------------- aiohttp
class _AiohttpResponse:
    __slots__ = ("_response", "content_type", "status")

    def __init__(self, response: object) -> None:
        self._response = response
        self.status: int = response.status  # type: ignore[attr-defined]
        self.content_type: str = response.headers.get("content-type", "application/json")  # type: ignore[attr-defined]

    async def chunks(self) -> AsyncIterator[bytes]:
        import aiohttp

        try:
            async for chunk in self._response.content.iter_any():  # type: ignore[attr-defined]
                yield chunk
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout from None
        except aiohttp.ClientError:
            raise UpstreamBroken from None

    async def read(self) -> bytes:
        import aiohttp

        try:
            return await self._response.read()  # type: ignore[attr-defined,no-any-return]
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout from None
        except aiohttp.ClientError:
            raise UpstreamBroken from None

    async def close(self) -> None:
        response = self._response
        if response.content.at_eof():  # type: ignore[attr-defined]
            response.release()  # type: ignore[attr-defined]  # back to the pool
        else:
            response.close()  # type: ignore[attr-defined]  # drops the connection: the replica stops


class AiohttpClient:
    """aiohttp's connection pool (O(1) per request), same contract as ``HttpxClient`` (no idle cap: idle
    connections close after the keep-alive expiry)."""

    def __init__(self, timeout: httpx.Timeout, max_idle_per_replica: int = 256, keepalive_expiry: float = 4.0
                 ) -> None:
        self._timeout = timeout
        self._max_idle = max_idle_per_replica
        self._keepalive = keepalive_expiry
        self._session: object | None = None

    async def start(self) -> None:
        import aiohttp

        t = self._timeout
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=self._keepalive,
                                         ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=t.connect, sock_read=t.read))

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()  # type: ignore[attr-defined]
            self._session = None

    async def send(self, replica: Replica, path: str, body: bytes, headers: Headers) -> UpstreamResponse:
        import aiohttp

        session = self._session
        assert session is not None, "AiohttpClient.start() was not awaited"
        hdrs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
        try:
            response = await session.post(replica.base + path, data=body, headers=hdrs)  # type: ignore[attr-defined]
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamConnectError(timeout=True) from None
        except aiohttp.ClientConnectorError:
            raise UpstreamConnectError(timeout=False) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout from None
        except aiohttp.ClientError:
            raise UpstreamBroken from None
        return _AiohttpResponse(response)


def make_client(kind: str, timeout: httpx.Timeout, max_idle_per_replica: int, keepalive_expiry: float = 4.0
                ) -> UpstreamClient:
    if kind == "aiohttp":
        return AiohttpClient(timeout, max_idle_per_replica, keepalive_expiry)
    return HttpxClient(timeout, max_idle_per_replica, keepalive_expiry)
