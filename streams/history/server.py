"""The history process's read-only HTTP endpoint: named questions, ad-hoc SQL, /metrics and /healthz.

Routes (JSON unless said otherwise; every error is ``{"error": message, "code": code}``):

* ``GET /healthz`` (no auth): ``{"status": "ok"}``.
* ``GET /metrics`` (no auth): the Prometheus text of the process's registry.
* ``GET /questions``: ``{"questions": [{"name", "title", "params": [{"name", "type", "help"}]}]}``.
* ``POST /questions/{name}`` with ``{"params": {...}}``: the question's answer as
  ``{"columns": [...], "types": [...], "rows": [[...]]}``; ``?format=csv`` answers ``text/csv``.
* ``POST /query`` with ``{"sql": "..."}``: ad-hoc SQL under ``readonly``, same answer, same ``?format``.

Authentication: ``Authorization: Bearer <token>``, compared as SHA-256 digests with
``hmac.compare_digest``. No token configured: 503 saying how to set one; a wrong or missing token: 401.

Why ad-hoc SQL is wrapped and parsed before it runs. The reader runs under ``readonly = 1``, which
stops writes, DDL, ``SET`` and table functions that touch files or the network, but not everything:
in chDB ``SELECT ... INTO OUTFILE '/path'`` writes the file even under ``readonly``, and chDB runs
``SELECT 1; SELECT 2`` as two statements. So the user's text (one trailing ``;`` dropped) runs as
``SELECT * FROM (\\n<sql>\\n)``: inside a subquery ``INTO OUTFILE``, ``FORMAT`` and a second
statement are syntax errors, and a ``SETTINGS readonly = 0`` changes nothing. The newlines keep a
trailing ``-- comment`` from swallowing the closing parenthesis. That alone is not enough: text that
closes the parenthesis itself and starts a second statement (``SELECT 1) INTO OUTFILE 'f'; SELECT (1``)
wrote the file in chDB. So the wrapped text is first given to ClickHouse's own parser as a bound
parameter, ``formatQuerySingleLine({q:String})``, which refuses more than one statement, and its
canonical form must still end with the wrapper's ``)``: a clause after the subquery (``INTO OUTFILE``,
``FORMAT``, ``SETTINGS``) would end it otherwise. Only then does the wrapped text run.

Named questions are the repo's own SQL files (``streams.history.catalog``); their parameters are bound
as ClickHouse server-side parameters (``{name:Type}``), never formatted into the SQL. Times for
``DateTime`` parameters may be ISO 8601 (``2024-05-01T00:00:00Z``; no offset means UTC) or Unix seconds.

Store calls run in a worker thread (``asyncio.to_thread``): chDB has no async client. The shared
helpers (``adhoc``, ``ask``, ``jsonable``, ``csv_text``, ``Problem``) are what ``tokenpools history``
uses when it opens the store itself, so both paths refuse and answer the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import hashlib
import hmac
import io
import ipaddress
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

import orjson
import uvicorn
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.echo import echo_str
from streams.history import catalog
from streams.history.catalog import Question
from streams.history.reconcile import reconcile
from streams.history.settings import ServerSettings
from streams.history.store import HistoryStore, QueryResult
from tokenpools.infra.slow_clients import ConnectionGuard, guarded_protocol

log = logging.getLogger("tokenpools.history.server")

MAX_MESSAGE = 300  # characters of a ClickHouse message passed on
MAX_NAMES = 5  # parameter names listed in one message
READONLY_CODE = 164  # ClickHouse's READONLY
TOKEN_HELP = ("set TOKENPOOLS_HISTORY_SERVER__TOKEN, or TOKENPOOLS_HISTORY_SERVER__TOKEN_FILE to a file holding "
              "it (settings server.token / server.token_file), and restart the history process")
_CODE = re.compile(r"Code: (\d+)\. DB::Exception: ")
_USED = re.compile(r"\{([a-z_][a-z0-9_]*):[^}]+\}")
FORMATS = ("json", "csv")


class Problem(Exception):
    """A request the endpoint refuses: an HTTP status and a short message safe to show (bounded)."""

    def __init__(self, status: int, message: str, code: str = "bad_request",
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})

    def response(self) -> Response:
        body = orjson.dumps({"error": self.message, "code": self.code})
        return Response(body, status_code=self.status, headers=self.headers, media_type="application/json")


# -- ClickHouse errors


def clickhouse_problem(exc: Exception) -> Problem:
    """The answer to a failed query: 403 for a ``readonly`` refusal, 503 when the store is unreachable,
    else 400; the message is ClickHouse's first line (``Code: N. DB::Exception: ...``), bounded."""
    text = str(exc)
    match = _CODE.search(text)
    if match is not None:
        first = text[match.start():].splitlines()[0]
    else:
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    message = echo_str(first.strip(), limit=MAX_MESSAGE)
    if isinstance(exc, OperationalError) and match is None:
        return Problem(503, f"the history store is unavailable: {message}", "store_unavailable")
    if match is not None and int(match.group(1)) == READONLY_CODE:
        return Problem(403, f"read-only: {message}", "readonly")
    return Problem(400, message, "query_failed")


def _run(store: HistoryStore, sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
    """The query's answer, or the ``Problem`` that answers it (the store drains its reader after a failure)."""
    try:
        return store.query(sql, parameters)
    except ClickHouseError as exc:
        raise clickhouse_problem(exc) from None


def _answer(store: HistoryStore, sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
    """``_run``, with the columns of an empty answer: chDB's Native output of no rows has no header
    block, so the driver reports no columns; ``DESCRIBE`` of the same query names them."""
    result = _run(store, sql, parameters)
    if result.columns or result.rows:
        return result
    described = _run(store, f"DESCRIBE TABLE (\n{sql}\n)", parameters).rows
    return QueryResult([str(r[0]) for r in described], [str(r[1]) for r in described], [])


# -- ad-hoc SQL


def wrap(sql: str) -> str:
    """``SELECT * FROM (\\n<sql>\\n)`` with one trailing ``;`` dropped (see the module doc)."""
    text = sql.strip()
    if text.endswith(";"):
        text = text[:-1].rstrip()
    if not text:
        raise Problem(400, "'sql' is empty; send one SELECT query", "empty_sql")
    return f"SELECT * FROM (\n{text}\n)"


# Statements that write or change something: refused by name with 403 (inside the wrapper they would
# only be a syntax error, which says less). Safety does not rest on this list: the wrapper, the parse
# check and ``readonly`` refuse them anyway.
WRITES = frozenset({
    "ALTER", "ATTACH", "BACKUP", "CREATE", "DELETE", "DETACH", "DROP", "EXCHANGE", "GRANT", "INSERT", "KILL",
    "MOVE", "OPTIMIZE", "RENAME", "REPLACE", "RESTORE", "REVOKE", "SET", "SYSTEM", "TRUNCATE", "UNDROP",
    "UPDATE", "USE",
})
_LEADING = re.compile(r"\s+|--[^\n]*|#[^\n]*|/\*.*?\*/", re.DOTALL)


def first_keyword(sql: str) -> str:
    """The statement's first word after whitespace and comments, upper-cased ('' if none)."""
    pos = 0
    while (m := _LEADING.match(sql, pos)) is not None and m.end() > pos:
        pos = m.end()
    word = re.match(r"[A-Za-z_]+", sql[pos:])
    return word.group(0).upper() if word else ""


def adhoc(store: HistoryStore, sql: str) -> QueryResult:
    """Run one user query under ``readonly``: wrapped, parsed by ClickHouse as one statement, then run."""
    wrapped = wrap(sql)
    keyword = first_keyword(sql)
    if keyword in WRITES:
        raise Problem(403, f"read-only: only a SELECT query runs here, not {keyword}", "readonly")
    rows = _run(store, "SELECT formatQuerySingleLine({q:String})", {"q": wrapped}).rows
    canonical = str(rows[0][0]).rstrip() if rows else ""
    if not canonical.endswith(")"):
        raise Problem(400, "send one SELECT query: nothing may follow it (no INTO OUTFILE, FORMAT or SETTINGS "
                           "outside the query itself)", "not_one_select")
    return _answer(store, wrapped)


# -- named questions


def _bounded_names(names: Sequence[str]) -> str:
    shown = ", ".join(echo_str(n, limit=40) for n in names[:MAX_NAMES])
    return shown + (f" and {len(names) - MAX_NAMES} more" if len(names) > MAX_NAMES else "")


def parse_time(name: str, value: Any) -> dt.datetime:
    """A ``DateTime``/``DateTime64`` parameter as an aware datetime (ISO 8601 or Unix seconds; naive is UTC)."""
    if isinstance(value, bool):
        raise Problem(400, f"parameter {name} must be a time (ISO 8601 or Unix seconds)", "bad_parameter")
    if isinstance(value, int | float):
        try:
            return dt.datetime.fromtimestamp(value, tz=dt.UTC)
        except (OverflowError, OSError, ValueError):
            raise Problem(400, f"parameter {name}: Unix time out of range", "bad_parameter") from None
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            return parse_time(name, float(text))
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise Problem(400, f"parameter {name} must be an ISO 8601 time such as 2024-05-01T00:00:00Z "
                               f"or Unix seconds, got {echo_str(text, limit=40)!r}", "bad_parameter") from None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)
    raise Problem(400, f"parameter {name} must be a time (ISO 8601 or Unix seconds)", "bad_parameter")


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def bind_values(question: Question, given: Mapping[str, Any]) -> dict[str, Any]:
    """The question's parameters from ``given``: every declared one present, nothing else, plain values.

    Raises ``Problem(400)`` naming what is missing or unknown. Strings, numbers, booleans and lists of
    them are passed to the driver as server-side parameters; ClickHouse checks them against the type.
    """
    declared = {p.name: p for p in question.params}
    unknown = sorted(k for k in given if k not in declared)
    missing = [p.name for p in question.params if p.name not in given]
    if unknown or missing:
        parts = []
        if missing:
            parts.append(f"missing parameter{'s' if len(missing) > 1 else ''} {_bounded_names(missing)}")
        if unknown:
            parts.append(f"unknown parameter{'s' if len(unknown) > 1 else ''} {_bounded_names(unknown)}")
        takes = ", ".join(f"{p.name} {p.type}" for p in question.params) or "no parameters"
        raise Problem(400, f"{'; '.join(parts)} (question {question.name} takes {takes})", "bad_parameters")
    out: dict[str, Any] = {}
    for name, param in declared.items():
        value = given[name]
        nullable = param.type.startswith("Nullable(")
        if value is None and not nullable:
            raise Problem(400, f"parameter {name} must not be null ({param.type})", "bad_parameter")
        if isinstance(value, float) and not math.isfinite(value):
            raise Problem(400, f"parameter {name} must be a finite number", "bad_parameter")
        if isinstance(value, list):
            if not all(_scalar(v) for v in value):
                raise Problem(400, f"parameter {name} must be a list of plain values", "bad_parameter")
        elif not _scalar(value):
            raise Problem(400, f"parameter {name} must be a string, a number, a boolean or a list of them "
                               f"({param.type})", "bad_parameter")
        if value is not None and re.match(r"(Nullable\()?DateTime", param.type):
            value = parse_time(name, value)
        out[name] = value
    return out


def question_sql(question: Question) -> str:
    """The question's SQL as run: its file, trailing semicolons dropped (the driver appends a FORMAT)."""
    return question.sql.strip().rstrip(";").rstrip()


def ask(store: HistoryStore, question: Question, given: Mapping[str, Any]) -> QueryResult:
    """Answer a named question with ``given`` bound as server-side parameters (under ``readonly``)."""
    return run_bound(store, question, bind_values(question, given))


def run_bound(store: HistoryStore, question: Question, values: Mapping[str, Any]) -> QueryResult:
    """Run a question with values ``bind_values`` made."""
    sql = question_sql(question)
    used = set(_USED.findall(sql))
    # Only parameters the text uses: the driver formats a dict into SQL when no {name:Type} matches.
    parameters = {k: v for k, v in values.items() if k in used}
    return _answer(store, sql, parameters or None)


def find_question(questions: Mapping[str, Question], name: str) -> Question:
    question = questions.get(name)
    if question is None:
        raise Problem(404, f"no question named {echo_str(name, limit=64)!r}; GET /questions lists them",
                      "unknown_question")
    return question


def describe(questions: Mapping[str, Question]) -> dict[str, Any]:
    return {"questions": [
        {"name": q.name, "title": q.title, "params": [{"name": p.name, "type": p.type, "help": p.help}
                                                      for p in q.params]}
        for q in questions.values()]}


# -- answers


def _utc_iso(value: dt.datetime) -> str:
    """A naive datetime from the driver is UTC (clickhouse-connect's ``naive_utc``); aware ones are moved to UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.isoformat() + "Z"


def jsonable(value: Any) -> Any:
    """A result value as JSON: times as ISO strings, NaN/infinity as null, big integers as strings."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.datetime):
        return _utc_iso(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(jsonable(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, uuid.UUID | ipaddress.IPv4Address | ipaddress.IPv6Address | dt.timedelta):
        return str(value)
    return str(value)


def as_json(result: QueryResult) -> dict[str, Any]:
    return {"columns": list(result.columns), "types": list(result.types),
            "rows": [[jsonable(v) for v in row] for row in result.rows]}


def cell_text(value: Any) -> str:
    """A JSON-able value as a CSV cell: null empty, containers as JSON, booleans as true/false."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    return str(value)


def csv_text(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A header line and one line per row; ``rows`` hold JSON-able values (``as_json``'s rows)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([cell_text(v) for v in row])
    return out.getvalue()


def _render(result: QueryResult, fmt: str) -> Response:
    answer = as_json(result)
    if fmt == "csv":
        return Response(csv_text(answer["columns"], answer["rows"]), media_type="text/csv; charset=utf-8")
    return Response(orjson.dumps(answer), media_type="application/json")


# -- the app


def token_digest(settings: ServerSettings) -> tuple[bytes | None, str]:
    """The configured token's SHA-256, or None and why (what the 503 says)."""
    try:
        token = settings.token_value()
    except OSError as exc:
        return None, (f"the history endpoint cannot read its token file {settings.token_file}: "
                      f"{exc.strerror or exc}; {TOKEN_HELP}")
    if not token:
        return None, f"the history endpoint has no token configured; {TOKEN_HELP}"
    return hashlib.sha256(token.encode()).digest(), ""


def _bearer(scope: Scope) -> str | None:
    """The token of the one ``Authorization: Bearer`` header; two headers are refused (400)."""
    found: bytes | None = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            if found is not None:
                raise Problem(400, "more than one Authorization header; send exactly one 'Authorization: Bearer "
                                   "<token>'", "multiple_credentials")
            found = value
    if found is None:
        return None
    scheme, _, token = found.decode("latin-1").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 as soon as it (declared or received so far) exceeds ``limit`` bytes."""
    too_large = Problem(413, f"request body exceeds the limit of {limit} bytes", "request_too_large")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _json_object(raw: bytes, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, f"request body is not valid JSON: {echo_str(exc.msg, limit=120)}", "invalid_json") from None
    if not isinstance(data, dict):
        raise Problem(400, "request body must be a JSON object", "invalid_json")
    unknown = sorted(k for k in data if k not in allowed)
    if unknown:
        raise Problem(400, f"unknown field{'s' if len(unknown) > 1 else ''} {_bounded_names(unknown)} "
                           f"(this route takes {', '.join(allowed)})", "unknown_field")
    return data


def _format(request: Request) -> str:
    fmt = request.query_params.get("format", "json").lower()
    if fmt not in FORMATS:
        raise Problem(400, f"format must be json or csv, got {echo_str(fmt, limit=20)!r}", "bad_format")
    return fmt


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("tokenpools_history_http_requests", "Requests to the history endpoint, by route "
                                "and status", ["route", "status"], registry=registry)
        self.seconds = Histogram("tokenpools_history_query_seconds", "Time a query of the history endpoint took "
                                 "in the store, by route", ["route"], registry=registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


class _Count:
    """Counts every answer by route template (bounded labels) and status, errors included."""

    def __init__(self, app: ASGIApp, metrics: _Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def tracked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(label, str(status)).inc()


def create_app(store: HistoryStore, settings: ServerSettings, registry: CollectorRegistry, *,
               questions: Mapping[str, Question] | None = None) -> FastAPI:
    """The endpoint over ``store``; ``questions`` defaults to the catalog (tests pass their own).

    The token is read once, here (a changed token file takes effect at the next start). Registers the
    endpoint's metrics in ``registry`` (once per registry).
    """
    catalogue = dict(catalog.questions() if questions is None else questions)
    digest, unconfigured = token_digest(settings)
    metrics = _Metrics(registry)
    app = FastAPI(title="tokenpools history", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Count, metrics=metrics)

    def authenticate(request: Request) -> None:
        if digest is None:
            raise Problem(503, unconfigured, "no_token")
        token = _bearer(request.scope)
        if token is None or not hmac.compare_digest(hashlib.sha256(token.encode()).digest(), digest):
            raise Problem(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                          "unauthorized", headers={"www-authenticate": "Bearer"})

    async def in_store(route: str, work: Callable[[], QueryResult], fmt: str) -> Response:
        started = time.perf_counter()
        try:
            result = await asyncio.to_thread(work)
        finally:
            metrics.seconds.labels(route).observe(time.perf_counter() - started)
        return await asyncio.to_thread(_render, result, fmt)

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> Response:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return Problem(exc.status_code, echo_str(str(exc.detail)), code, headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return Problem(500, "internal error in the history endpoint", "internal_error").response()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/questions")
    async def list_questions(request: Request) -> Response:
        authenticate(request)
        return Response(orjson.dumps(describe(catalogue)), media_type="application/json")

    @app.post("/questions/{name}")
    async def answer_question(name: str, request: Request) -> Response:
        authenticate(request)
        fmt = _format(request)
        question = find_question(catalogue, name)
        body = _json_object(await _read_body(request, settings.max_body_bytes), ("params",))
        given = body.get("params") or {}
        if not isinstance(given, dict):
            raise Problem(400, "'params' must be an object of parameter names to values", "bad_parameters")
        values = bind_values(question, given)  # refused here, before a thread is taken
        return await in_store("/questions/{name}", lambda: run_bound(store, question, values), fmt)

    @app.post("/query")
    async def query(request: Request) -> Response:
        authenticate(request)
        fmt = _format(request)
        body = _json_object(await _read_body(request, settings.max_body_bytes), ("sql",))
        sql = body.get("sql")
        if not isinstance(sql, str):
            raise Problem(400, "the body must be {\"sql\": \"SELECT ...\"}", "missing_sql")
        wrap(sql)  # an empty query is refused before a thread is taken
        return await in_store("/query", lambda: adhoc(store, sql), fmt)

    @app.post("/reconcile")
    async def reconcile_range(request: Request) -> Response:
        """``tokenpools history reconcile --endpoint``: the store's owner reconciles (chDB: nobody else can)."""
        authenticate(request)
        body = _json_object(await _read_body(request, settings.max_body_bytes), ("from", "to"))
        if "from" not in body or "to" not in body:
            raise Problem(400, "the body must be {\"from\": TIME, \"to\": TIME}", "missing_range")
        start, end = parse_time("from", body["from"]), parse_time("to", body["to"])
        if not start < end:
            raise Problem(400, "'from' must be before 'to'", "bad_range")
        started = time.perf_counter()
        try:
            report = await asyncio.to_thread(reconcile, store, start, end)
        except ClickHouseError as exc:
            raise clickhouse_problem(exc) from None
        finally:
            metrics.seconds.labels("/reconcile").observe(time.perf_counter() - started)
        return Response(orjson.dumps({"ok": report.ok, "rows": jsonable(report.rows)}), media_type="application/json")

    return app


# -- serving


class _Server(uvicorn.Server):
    """Leaves SIGINT/SIGTERM to the process (uvicorn would take them and stop only itself)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def make_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8090) -> uvicorn.Server:
    """A uvicorn server for ``app`` (loopback by default), with the repo's slow-client protections."""
    config = uvicorn.Config(app, host=host, port=port, lifespan="off", log_level="warning", access_log=False,
                            http=guarded_protocol(ConnectionGuard()), ws="none")
    return _Server(config)


def bound_port(server: uvicorn.Server) -> int:
    """The port a started server listens on (what port 0 became)."""
    return int(server.servers[0].sockets[0].getsockname()[1])


async def serve(server: uvicorn.Server) -> None:
    """Run ``server`` in the running event loop until it exits or the task is cancelled (then shut down)."""
    try:
        await server.serve()
    except asyncio.CancelledError:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await server.shutdown()
        raise


async def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8090) -> None:
    """Serve ``app`` on ``host:port`` in the running event loop until cancelled."""
    await serve(make_server(app, host, port))
