"""The project's errors: one root, and domain errors that say what went wrong, never how to answer it.

Every exception the project defines derives from :class:`TokenPoolsError`. The domain errors here
carry what the caller needs to explain the problem (a message, the problems found, the figures of a
refusal) and **no HTTP status**: choosing the status, the OpenAI ``code`` and the headers is the
HTTP edge's job, done in one table (``admitter.http.errors.openai_error``). The one error type that
does carry a status is the edge's own, :class:`schemas.openai.OpenAIError`, raised only by code that
is already answering an HTTP request (a bad body, a missing key).

The tree::

    TokenPoolsError
    ├── ConfigError, YAMLInputError           (schemas.loader, schemas.yaml_load; also ValueError)
    ├── ConfigUnavailable                     the config topic cannot take or confirm a write
    ├── EntitlementRejected                   an entitlement change that cannot be applied
    │   ├── EntitlementInvalid                  it names something that does not exist
    │   └── EntitlementConflict                 it clashes with what is there
    ├── AdmissionRefused                      the capacity model turned a request away
    ├── Preempted                             a running spot request made room for guaranteed work
    ├── UpstreamError                         no model replica gave an answer
    │   ├── NoReplica                           none is configured for the pool
    │   ├── ReplicaUnavailable                  none could be connected to
    │   ├── ReplicaTimeout                      one did not answer (or connect) in time
    │   └── ReplicaFailed                       one failed: a 5xx, a broken connection or stream
    │       └── UpstreamProtocolError             its answer broke the protocol (a stream without [DONE])
    └── OpenAIError                           an HTTP answer, status included (schemas.openai)

Transport errors of the replica clients (``admitter.upstream.clients``) and key-ring conflicts
(``admitter.http.auth.KeyConflict``) derive from the root too; they are translated into the errors
above where they are caught.
"""

from __future__ import annotations

from collections.abc import Sequence


class TokenPoolsError(Exception):
    """The root of every error this project defines."""


class ConfigUnavailable(TokenPoolsError):
    """The config topic did not acknowledge a write (or has not been read yet): nothing changed."""


class EntitlementRejected(TokenPoolsError):
    """An entitlement create or update that cannot be applied; ``problems`` says why, one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


class EntitlementInvalid(EntitlementRejected):
    """The entitlement names something that does not exist (an unknown pool)."""


class EntitlementConflict(EntitlementRejected):
    """The entitlement clashes with the current state: a guarantee the pool cannot provision, an API key
    another tenant holds, or a move between pools with requests in flight."""


Triple = tuple[float, float, float]  # throughput, kv, concurrency


class AdmissionRefused(TokenPoolsError):
    """The capacity model refused a request: which entitlement, which dimension ran out, when to retry,
    and the entitlement's limits and what remained of them (throughput, kv, concurrency) at that moment."""

    def __init__(self, entitlement: str, tier: str, dimension: str, retry_after: float, limits: Triple,
                 remaining: Triple) -> None:
        super().__init__(f"entitlement '{entitlement}' ({tier}): {dimension} exhausted")
        self.entitlement = entitlement
        self.tier = tier
        self.dimension = dimension
        self.retry_after = retry_after
        self.limits = limits
        self.remaining = remaining


class Preempted(TokenPoolsError):
    """A spot request was stopped to make room for guaranteed work; worth retrying after ``retry_after`` s."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("preempted to make room for guaranteed work")
        self.retry_after = retry_after


class UpstreamError(TokenPoolsError):
    """No model replica gave this request an answer; the message says what happened, for the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NoReplica(UpstreamError):
    """No replica is configured for the request's pool."""


class ReplicaUnavailable(UpstreamError):
    """No replica could be connected to (nothing was sent)."""


class ReplicaTimeout(UpstreamError):
    """A replica did not connect, answer or go on streaming in time."""


class ReplicaFailed(UpstreamError):
    """A replica failed the request: it answered 5xx, or the connection or its stream broke."""


class UpstreamProtocolError(ReplicaFailed):
    """A replica's answer broke the protocol (a stream that ended without ``[DONE]``)."""
