"""TokenPool, Entitlement and GlobalEntitlement custom resources, and the manifests they stand for.

A CR is a Kubernetes object (``apiVersion``, ``kind``, ``metadata`` with namespace, uid, generation,
managedFields, ..., ``spec``, ``status``); the config topic holds the pydantic ``Manifest`` of the same
document: ``metadata.name`` (and labels) and ``spec``, nothing the API server adds. ``to_manifest``
converts one into the other, or says in one bounded line why the model refuses it; the operator puts
that line on the CR's ``Provisionable`` condition and the webhook into its refusal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from schemas.echo import echo_str
from schemas.loader import ConfigError, Source, parse_manifest
from schemas.regions import GlobalEntitlement
from schemas.specs import API_VERSION, Entitlement, Manifest, TokenPool

GROUP: Final = "tokenpools.dev"
VERSION: Final = "v1alpha1"
assert f"{GROUP}/{VERSION}" == API_VERSION


@dataclass(frozen=True)
class Kind:
    """One custom resource type: its kind and plural name."""

    kind: str
    plural: str


TOKEN_POOL: Final = Kind("TokenPool", "tokenpools")
ENTITLEMENT: Final = Kind("Entitlement", "entitlements")
GLOBAL_ENTITLEMENT: Final = Kind("GlobalEntitlement", "globalentitlements")
KINDS: Final = (TOKEN_POOL, ENTITLEMENT, GLOBAL_ENTITLEMENT)
BY_PLURAL: Final = {k.plural: k for k in KINDS}
BY_KIND: Final = {k.kind: k for k in KINDS}

# A condition's message on the CR and a refusal's message stay short enough to read in `kubectl
# describe`; a spec can make pydantic's messages long (one line per bad field).
MAX_MESSAGE: Final = 1024


class Refused(ValueError):
    """The model refuses the CR; ``str()`` is one bounded line that says what to change."""


def manifest_doc(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a CR that make up its manifest (labels only when set, as in YAML configs)."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    metadata: dict[str, Any] = {"name": meta.get("name")}
    if meta.get("labels"):
        metadata["labels"] = dict(meta["labels"])
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": metadata,
            "spec": obj.get("spec")}


def to_manifest(obj: Mapping[str, Any]) -> TokenPool | Entitlement | GlobalEntitlement:
    """The validated manifest of a CR, or ``Refused`` with what to change."""
    name = name_of(obj)
    try:
        manifest: Manifest = parse_manifest(manifest_doc(obj), Source(f"{obj.get('kind')}/{name}", 1))
    except ConfigError as exc:
        raise Refused(bounded("; ".join(_problem_text(p) for p in exc.problems))) from None
    if not isinstance(manifest, TokenPool | Entitlement | GlobalEntitlement):
        raise Refused(f"kind {echo_str(str(obj.get('kind')))} is not a TokenPool, an Entitlement or a "
                      "GlobalEntitlement")
    return manifest


def _problem_text(problem: Any) -> str:
    return f"{problem.field}: {problem.message}" if problem.field else str(problem.message)


def bounded(text: str, limit: int = MAX_MESSAGE) -> str:
    return echo_str(text.replace("\n", "; "), limit)


def name_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    return str(meta.get("name", "")) if isinstance(meta, Mapping) else ""


def namespace_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    return str(meta.get("namespace", "")) if isinstance(meta, Mapping) else ""


def generation_of(obj: Mapping[str, Any]) -> int:
    meta = obj.get("metadata")
    value = meta.get("generation", 0) if isinstance(meta, Mapping) else 0
    return int(value) if isinstance(value, int) else 0


def resource_version_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    return str(meta.get("resourceVersion", "")) if isinstance(meta, Mapping) else ""
