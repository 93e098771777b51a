"""A tenant's usage history on ``/v1/usage?granularity=hour|day&start=&end=``, asked of the history process.

The history lives in the history process (``streams.history``: the sink and the store's read-only
HTTP endpoint); the admitter does not import it (services talk over the wire, ``lint-imports``). It
asks the endpoint's named question ``tenant_usage`` over HTTP::

    POST {history_url}/questions/tenant_usage
    Authorization: Bearer <history_token>
    {"params": {"tenant": "...", "bucket_s": 3600, "start": "2024-05-01 00:00:00.000", "end": "..."}}

and gets ``{"columns": [...], "types": [...], "rows": [[...], ...]}`` back, which becomes a list of
objects keyed by column. The tenant is always the caller's key's (``admin.require_tenant``), never a
query parameter, so a tenant cannot name another one; rows of another tenant, should the answer ever
hold any, are dropped here too.

Refusals: a granularity other than ``hour``/``day``, a time that is not ISO 8601, ``end <= start`` or
a range over ``MAX_SPAN`` are 400. No ``history_url``: 503 saying which variable to set. The history
endpoint unreachable, slow (``history_timeout_seconds``, connecting included), refusing the admitter
(401, 503) or answering something that is not an answer: 503 "history is unavailable", with the
reason logged for the operator and never a stack trace for the tenant.

One ``httpx.AsyncClient`` per history request: this is a reporting call, not the hot path, and a
client per request needs no lifecycle of its own. ``trust_env=False``: the history endpoint is an
internal service, reached directly (no proxy or ``.netrc`` from the environment).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from admitter.settings import HISTORY_ENV, AdmitterSettings
from schemas.echo import echo_str
from schemas.openai import OpenAIError

log = logging.getLogger("tokenpools.admitter.history")

QUESTION = "tenant_usage"
BUCKETS: Mapping[str, int] = {"hour": 3600, "day": 86400}
DEFAULT_SPAN: Mapping[str, dt.timedelta] = {"hour": dt.timedelta(hours=24), "day": dt.timedelta(days=30)}
MAX_SPAN = dt.timedelta(days=400)
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(2262, 1, 1, tzinfo=dt.UTC)  # ClickHouse's DateTime64(3) ends in 2299; a margin
MAX_ANSWER_BYTES = 32 * 1024 * 1024  # 400 days of hours for a few dozen entitlements fits
HISTORY_PARAMS = ("granularity", "start", "end")
UNAVAILABLE = "history is unavailable"


@dataclass(frozen=True, slots=True)
class HistoryRange:
    granularity: str
    start: dt.datetime  # aware, UTC
    end: dt.datetime

    @property
    def bucket_s(self) -> int:
        return BUCKETS[self.granularity]

    def view(self) -> dict[str, Any]:
        return {"granularity": self.granularity, "bucket_seconds": self.bucket_s,
                "start": iso(self.start), "end": iso(self.end)}


def iso(t: dt.datetime) -> str:
    """``2024-05-01T00:00:00.000Z``: what the answer says the range was."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def clickhouse_time(t: dt.datetime) -> str:
    """``2024-05-01 00:00:00.000`` in UTC: a ``DateTime64(3)`` parameter as the history endpoint takes it."""
    t = t.astimezone(dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def _one(query: Sequence[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in query if k == name]
    if len(values) > 1:
        raise OpenAIError(400, f"{name} is given {len(values)} times; give it once", "invalid_parameter", param=name)
    return values[0] if values else None


def _time(value: str, name: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise OpenAIError(400, f"{name} must be an ISO 8601 time such as 2024-05-01T00:00:00Z, got "
                               f"{echo_str(value, limit=40)!r}", "invalid_time", param=name) from None
    try:
        t = t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)  # no offset: UTC
    except OverflowError:  # year 1 or 9999 moved by its offset
        t = EARLIEST - dt.timedelta(days=1)
    if not EARLIEST <= t < LATEST:
        raise OpenAIError(400, f"{name} must be between 1970 and 2261", "invalid_time", param=name)
    return t


def wants_history(query: Sequence[tuple[str, str]]) -> bool:
    return any(k in HISTORY_PARAMS for k, _ in query)


def parse_range(query: Sequence[tuple[str, str]], now: dt.datetime) -> HistoryRange:
    """The history range a ``/v1/usage`` query asks for; 400 (``OpenAIError``) when it cannot be answered.

    ``granularity`` is required once ``start`` or ``end`` is given. Without ``end`` the range ends with
    the bucket now in progress; without ``start`` it is the ``DEFAULT_SPAN`` before ``end`` (24 hours,
    30 days). Both are then widened to whole buckets (UTC), which is what the answer counts.
    """
    granularity = _one(query, "granularity")
    start_text, end_text = _one(query, "start"), _one(query, "end")
    if granularity is None:
        raise OpenAIError(400, "start and end need granularity=hour or granularity=day", "invalid_granularity",
                          param="granularity")
    if granularity not in BUCKETS:
        raise OpenAIError(400, f"granularity must be hour or day, got {echo_str(granularity, limit=20)!r}",
                          "invalid_granularity", param="granularity")
    bucket = BUCKETS[granularity]
    given_start = _time(start_text, "start") if start_text is not None else None
    end = _time(end_text, "end") if end_text is not None else _align(now.astimezone(dt.UTC), bucket, up=True)
    start = given_start if given_start is not None else max(EARLIEST, end - DEFAULT_SPAN[granularity])
    if end <= start:
        raise OpenAIError(400, "end must be after start", "invalid_time_range", param="end")
    if end - start > MAX_SPAN:
        raise OpenAIError(400, f"the range from start to end is at most {MAX_SPAN.days} days; ask for a shorter one",
                          "invalid_time_range", param="start")
    return HistoryRange(granularity, _align(start, bucket, up=False), _align(end, bucket, up=True))


def _align(t: dt.datetime, bucket: int, *, up: bool) -> dt.datetime:
    """``t`` rounded down (or up) to a whole bucket in UTC: the history counts whole hours, so a range
    that starts or ends inside one would not say what it counted."""
    seconds = t.timestamp()
    whole = (-(-seconds // bucket) if up else seconds // bucket) * bucket
    return dt.datetime.fromtimestamp(whole, dt.UTC)


def _unavailable(reason: str, *args: Any) -> OpenAIError:
    log.warning("usage history: " + reason, *args)
    return OpenAIError(503, UNAVAILABLE, "history_unavailable", headers={"retry-after": "5"})


def _rows(answer: Any, tenant: str) -> list[dict[str, Any]]:
    """The answer's rows as objects keyed by column (503 if it is not an answer at all)."""
    if not isinstance(answer, dict):
        raise _unavailable("the answer is not a JSON object")
    columns, rows = answer.get("columns"), answer.get("rows")
    if not (isinstance(columns, list) and all(isinstance(c, str) for c in columns) and isinstance(rows, list)):
        raise _unavailable("the answer has no columns and rows")
    width = len(columns)
    out: list[dict[str, Any]] = []
    dropped = 0
    for row in rows:
        if not isinstance(row, list) or len(row) != width:
            raise _unavailable("a row of the answer does not match its %d columns", width)
        item = dict(zip(columns, row, strict=True))
        if "tenant" in item and item["tenant"] != tenant:
            dropped += 1  # never another tenant's rows, whatever the question returned
            continue
        out.append(item)
    if dropped:
        log.error("usage history: the answer for tenant %r held %d row(s) of other tenants; dropped", tenant, dropped)
    return out


async def tenant_history(settings: AdmitterSettings, tenant: str, span: HistoryRange) -> list[dict[str, Any]]:
    """The tenant's usage rows over ``span`` from the history endpoint; ``OpenAIError(503)`` if it cannot say."""
    if settings.history_url is None:
        raise OpenAIError(503, f"usage history is not configured on this admitter: {HISTORY_ENV['history_url']} "
                               "is not set", "history_not_configured")
    url = f"{settings.history_url}/questions/{QUESTION}"
    headers = {"content-type": "application/json", "accept": "application/json"}
    if settings.history_token is not None:
        headers["authorization"] = f"Bearer {settings.history_token.get_secret_value()}"
    body = orjson.dumps({"params": {"tenant": tenant, "bucket_s": span.bucket_s,
                                    "start": clickhouse_time(span.start), "end": clickhouse_time(span.end)}})
    timeout = settings.history_timeout_seconds
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), trust_env=False,
                                     follow_redirects=False) as client, \
                client.stream("POST", url, content=body, headers=headers) as response:
            raw = await _read_capped(response)
            status = response.status_code
    except httpx.TimeoutException:
        raise _unavailable("%s did not answer within %g s", url, timeout) from None
    except httpx.HTTPError as exc:
        raise _unavailable("%s: %s", url, echo_str(str(exc) or type(exc).__name__, limit=200)) from None
    if status != 200:
        raise _unavailable("%s answered %d: %s", url, status, echo_str(raw[:300].decode("utf-8", "replace"),
                                                                      limit=300))
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _unavailable("%s answered 200 with a body that is not JSON", url) from None
    return _rows(answer, tenant)


async def _read_capped(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise _unavailable("the answer exceeds %d bytes", MAX_ANSWER_BYTES)
        chunks.append(chunk)
    return b"".join(chunks)
