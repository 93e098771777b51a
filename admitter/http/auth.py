"""API keys to tenants and entitlements, and the admin credential; only SHA-256 digests are held.

Lookup is a dict keyed by the presented key's digest, confirmed with ``hmac.compare_digest``.
Why that is constant-time enough: the dict compares digests, never the secret itself, and the
digest of a guess reveals nothing useful about a stored key's digest (finding a key whose digest
shares a prefix with a stored one is a preimage search). The final ``compare_digest`` keeps the
one byte-by-byte comparison of equal-hash candidates from short-circuiting. Keys are random, so a
fast unsalted hash is enough (the config stores it that way too, see ``ApiKeyRef``).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field

from schemas.errors import TokenPoolsError
from schemas.openai import OpenAIError
from schemas.specs import Entitlement, key_digest


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def request_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The one credential rule, for every route: the bearer token of the request's Authorization header.

    Takes the raw ASGI header list because that is the only view that shows duplicates (Starlette's
    ``request.headers.get`` returns the first, a loop that overwrites keeps the last: the two rules
    that once let tenant-a's key followed by tenant-b's be billed to tenant-b). None when there is
    no usable bearer token (the caller answers 401).

    More than one Authorization header is refused with 400, not 401: HTTP allows repeating a field
    only when its value is a comma-separated list, which Authorization is not (RFC 9110 5.3), and
    RFC 6750 3.1 names "uses more than one method for including an access token" an
    ``invalid_request`` answered with 400. A 401 would read as "wrong key" and invite a retry with
    the same two headers; neither credential is tried, so a request cannot pick whichever tenant
    the route happens to prefer.
    """
    found: bytes | None = None
    for name, value in headers:
        if name == b"authorization":
            if found is not None:
                raise OpenAIError(400, "more than one Authorization header; send exactly one "
                                  "'Authorization: Bearer <key>'", "multiple_credentials")
            found = value
    return bearer_token(found.decode("latin-1")) if found is not None else None


@dataclass
class KeyOwner:
    """Who a key belongs to: one tenant, and at most one entitlement per pool."""

    digest: str
    tenant: str
    by_pool: dict[str, str] = field(default_factory=dict)  # pool name -> entitlement name


class KeyConflict(TokenPoolsError, ValueError):
    """A key claimed by two tenants, or by two entitlements on one pool (which would be ambiguous)."""


class KeyRing:
    """Tenant API keys by digest; rebuilt whole when entitlements change (rare, admin API only)."""

    def __init__(self, entitlements: Iterable[Entitlement] = ()) -> None:
        self._owners: dict[str, KeyOwner] = {}
        self.rebuild(entitlements)

    @staticmethod
    def build(entitlements: Iterable[Entitlement], incoming: str | None = None) -> dict[str, KeyOwner]:
        """The key table, or ``KeyConflict`` naming the entitlement that lists a key already held.

        ``incoming`` is the entitlement being created or updated: it is taken last, whatever its
        name, so a conflict is always reported as the newcomer's (the others were consistent before
        it came). Sorting by name alone named the sides reversed whenever the newcomer sorted first.
        """
        owners: dict[str, KeyOwner] = {}
        for ent in sorted(entitlements, key=lambda e: (e.name == incoming, e.name)):
            for ref in ent.spec.api_keys:
                owner = owners.get(ref.sha256)
                if owner is None:
                    owner = owners[ref.sha256] = KeyOwner(ref.sha256, ent.spec.tenant)
                if owner.tenant != ent.spec.tenant:
                    raise KeyConflict(
                        f"entitlement '{ent.name}' (tenant '{ent.spec.tenant}') lists an API key that already "
                        f"belongs to tenant '{owner.tenant}'; a key must identify one tenant"
                    )
                other = owner.by_pool.get(ent.spec.pool)
                if other is not None and other != ent.name:
                    raise KeyConflict(
                        f"entitlement '{ent.name}' lists an API key also used by entitlement '{other}' on the "
                        f"same pool '{ent.spec.pool}'; a key must map to one entitlement per pool"
                    )
                owner.by_pool[ent.spec.pool] = ent.name
        return owners

    def rebuild(self, entitlements: Iterable[Entitlement]) -> None:
        self.install(self.build(entitlements))

    def install(self, owners: dict[str, KeyOwner]) -> None:
        """Swap in a table made by ``build`` (validated first, so a conflict changes nothing)."""
        self._owners = owners

    def lookup(self, token: str | None) -> KeyOwner | None:
        if not token:
            return None
        digest = key_digest(token)
        owner = self._owners.get(digest)
        if owner is None or not hmac.compare_digest(owner.digest, digest):
            return None
        return owner


class AdminKey:
    """The admin bearer token, held as SHA-256 and compared in constant time; None disables admin access."""

    def __init__(self, sha256: str | None) -> None:
        self._digest = sha256.lower() if sha256 else None

    @property
    def configured(self) -> bool:
        return self._digest is not None

    def check(self, token: str | None) -> bool:
        if self._digest is None or not token:
            return False
        return hmac.compare_digest(key_digest(token), self._digest)
