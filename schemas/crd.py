"""Kubernetes CustomResourceDefinitions for TokenPool and Entitlement, generated from the pydantic specs.

One source of truth: ``TokenPoolSpec`` and ``EntitlementSpec`` (schemas/specs.py) give the OpenAPI v3
schema the API server validates and prunes with, so a field added to a spec reaches the CRD by
running ``tokenpools schemas export`` (tests/schemas/test_crd.py fails until it is run).

How the pydantic JSON Schema becomes a *structural* schema (the API server refuses anything else):

- every ``$ref`` is inlined (structural schemas have no references), and every node has a ``type``;
- ``X | None`` (``anyOf: [X, null]``) becomes ``X`` with ``nullable: true``; a ``null`` default is
  dropped (absent and null mean the same to the spec, and to CEL, which treats a null field as absent);
- bounds, enums, lengths and patterns are kept; JSON Schema 2020's numeric ``exclusiveMinimum: 0``
  becomes OpenAPI 3.0's ``minimum: 0, exclusiveMinimum: true``;
- defaults are kept (the API server applies them, as pydantic does), without their ``null`` members;
- ``extra="forbid"`` (``additionalProperties: false``) has no structural equivalent: the API server
  forbids ``additionalProperties`` beside ``properties``. Unknown fields are *pruned* instead (dropped
  before storage), and refused outright when the client asks for strict field validation
  (``kubectl`` does by default, ``fieldValidation=Strict`` on the API). A ``dict[str, X]`` becomes
  ``additionalProperties: <X>``.

The cross-field checks of the pydantic validators become CEL rules (``x-kubernetes-validations``),
each with a message that says what to change:

- ``ReplicaBounds._ordered``: ``replicas.min <= replicas.max``; ``replicas.initial`` within them;
- ``TokenPoolSpec._positive_replica``: every ``perReplica`` dimension at least ``MIN_PER_REPLICA``;
- ``EntitlementSpec._guarantee_within_burst``: ``guarantee <= burst`` on every dimension, and a
  non-zero guarantee only on the guaranteed tier;
- and a CEL twin of every fractional ``minimum``/``maximum`` (``_fractional_bound_rules``: the API
  server lets an integer past a fractional bound).

What CEL cannot express, because it needs more than the one object (the operator's validating
webhook and ``schemas.loader.cross_check`` do these):

- an Entitlement's ``spec.pool`` names an existing TokenPool;
- the guarantees on a pool are provisionable: their sum per dimension is within the pool's capacity
  at ``replicas.max`` (``schemas.loader.provisioning_problems``), and lowering a pool's ``max`` or
  ``perReplica`` does not strand guarantees already sold;
- names unique per kind (the API server does this itself, per namespace).

The field validators need no rule of their own: ``bounded``'s wrap validator only rewords the range
(the schema's ``minimum``/``maximum`` enforce it; JSON has no NaN or infinity), ``check_name`` is the
``pattern``/``maxLength`` of ``Name`` (also applied to ``metadata.name``), and ``ApiKeyRef.sha256``'s
pattern is kept as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel

from schemas.regions import GlobalEntitlementSpec
from schemas.specs import (
    API_VERSION,
    DIMENSIONS,
    MIN_PER_REPLICA,
    NAME_MAX,
    NAME_PATTERN,
    NAME_RULE,
    EntitlementSpec,
    ReplicaBounds,
    Resources,
    Tier,
    TokenPoolSpec,
)

Schema = dict[str, Any]

GROUP: Final = API_VERSION.split("/")[0]
VERSION: Final = API_VERSION.split("/")[1]
CRD_DIR: Final = Path(__file__).resolve().parent.parent / "deploy" / "helm" / "tokenpools" / "crds"
EXPORT_COMMAND: Final = "tokenpools schemas export"

# Keywords the converter knows how to carry into a structural schema. Anything else in pydantic's
# output (a new constraint kind, a discriminator, a const) stops the export instead of being dropped.
_KEPT = frozenset({
    "type", "description", "enum", "minimum", "maximum", "minLength", "maxLength", "pattern",
    "minItems", "maxItems", "format", "default",
})
_DROPPED = frozenset({"title", "$defs"})  # documentation only, or resolved here


class CRDSchemaError(ValueError):
    """The pydantic schema holds something a structural schema cannot say."""


# -- pydantic JSON Schema -> structural OpenAPI v3 ---------------------------------------------------


def structural(schema: Schema, defs: Schema | None = None, where: str = "spec") -> Schema:
    """A structural OpenAPI v3 schema for one pydantic JSON Schema node (``$defs`` from the root)."""
    defs = schema.get("$defs", {}) if defs is None else defs
    node = dict(schema)
    if "$ref" in node:
        target = _resolve(node.pop("$ref"), defs, where)
        node = {**target, **node}  # the referring site's default/description win
    nullable = False
    if "anyOf" in node:
        variants = node.pop("anyOf")
        rest = [v for v in variants if v != {"type": "null"}]
        if len(rest) != 1 or len(rest) == len(variants):
            raise CRDSchemaError(f"{where}: only `X | None` unions have a structural form, got anyOf {variants}")
        inner = rest[0]
        if "$ref" in inner:
            inner = _resolve(inner["$ref"], defs, where)
        node = {**inner, **node}
        nullable = True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    out: Schema = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "properties":
            out["properties"] = {
                name: structural(sub, defs, f"{where}.{name}") for name, sub in value.items()
            }
        elif key == "required":
            out["required"] = list(value)
        elif key == "items":
            out["items"] = structural(value, defs, f"{where}[]")
        elif key == "additionalProperties":
            if isinstance(value, dict):  # dict[str, X]: a map
                out["additionalProperties"] = structural(value, defs, f"{where}{{}}")
            elif value is not False:  # False is extra="forbid": pruning does it (module docstring)
                raise CRDSchemaError(f"{where}: additionalProperties {value!r} has no structural form")
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "description":
            out["description"] = " ".join(str(value).split())
        elif key in _KEPT:
            out[key] = value
        else:
            raise CRDSchemaError(f"{where}: JSON Schema keyword {key!r} has no structural mapping here")
    if "type" not in out:
        raise CRDSchemaError(f"{where}: no type (structural schemas need one on every node)")
    if out["type"] == "number":
        rules = _fractional_bound_rules(out, where)
        if rules:
            out["x-kubernetes-validations"] = rules
    if nullable:
        out["nullable"] = True
    if "default" in out:
        default = _without_nulls(out["default"])
        if default is None:
            del out["default"]
        else:
            out["default"] = default
    return {key: out[key] for key in sorted(out, key=_ORDER.index)}


# Reading order in the YAML: what a node is, then its bounds, then what it holds.
_ORDER: Final = [
    "type", "description", "nullable", "enum", "format", "minimum", "exclusiveMinimum", "maximum",
    "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems", "maxItems", "default", "required",
    "properties", "items", "additionalProperties", "x-kubernetes-validations",
]


def _fractional_bound_rules(node: Schema, where: str) -> list[Schema]:
    """CEL twins of a fractional ``minimum``/``maximum``: the API server's OpenAPI validator checks an
    integer value against the bound cut to an integer (seen on kube-apiserver 1.37: ``weight: 0``
    passed ``minimum: 0.001``, ``weight: -1`` was refused as "greater than or equal to 0"). CEL
    compares the value as a double."""
    rules = []
    for bound, op, words, fix in (("minimum", ">", "at least", "raise"), ("maximum", "<", "at most", "lower")):
        value = node.get(bound)
        if isinstance(value, float) and not value.is_integer():
            strict = node.get(f"exclusive{bound.capitalize()}") is True
            rel = op if strict else f"{op}="
            said = ("more than" if op == ">" else "less than") if strict else words
            rules.append(_rule(f"self {rel} {value!r}", f"{where} must be {said} {value:g}: {fix} it"))
    return rules


def _resolve(ref: str, defs: Schema, where: str) -> Schema:
    prefix = "#/$defs/"
    if not ref.startswith(prefix) or ref[len(prefix):] not in defs:
        raise CRDSchemaError(f"{where}: cannot resolve $ref {ref!r}")
    target: Schema = defs[ref[len(prefix):]]
    return target


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


# -- CEL rules for the cross-field validators ----------------------------------------------------------


def _default_of(model: type[BaseModel], name: str) -> Any:
    return model.model_fields[name].get_default(call_default_factory=True)


def _cel_literal(value: float | int) -> str:
    # CEL does not mix int and double in one comparison; a `type: number` field is always a double.
    return repr(float(value)) if isinstance(value, float) else str(value)


def _field(obj: str, model: type[BaseModel], name: str) -> str:
    """``obj.name``, or the model's default when it is absent (the server defaults it first, but a
    rule that cannot fail on a missing field stays right if a default is ever removed)."""
    default = _default_of(model, name)
    return f"(has({obj}.{name}) ? {obj}.{name} : {_cel_literal(default)})"


def _rule(rule: str, message: str, field_path: str | None = None) -> Schema:
    out: Schema = {"rule": rule, "message": message}
    if field_path is not None:
        out["fieldPath"] = field_path
    return out


def replica_rules() -> list[Schema]:
    """On ``spec.replicas`` (``self`` is the ReplicaBounds), mirroring ``ReplicaBounds._ordered``."""
    lo, hi = _field("self", ReplicaBounds, "min"), _field("self", ReplicaBounds, "max")
    return [
        _rule(f"{lo} <= {hi}", "replicas.min must not exceed replicas.max: lower min or raise max"),
        _rule(
            f"!has(self.initial) || ({lo} <= self.initial && self.initial <= {hi})",
            "replicas.initial must lie within [replicas.min, replicas.max]: change initial, or leave it "
            "out to start at min",
            ".initial",
        ),
    ]


def per_replica_rules() -> list[Schema]:
    """On ``spec.perReplica`` (``self`` is Resources), mirroring ``TokenPoolSpec._positive_replica``."""
    floor = float(MIN_PER_REPLICA)
    return [
        _rule(
            f"{_field('self', Resources, dim.value)} >= {floor!r}",
            f"perReplica.{dim.value} must be at least {floor:g}: a replica that serves nothing cannot be "
            f"sold (set what one replica serves)",
            f".{dim.value}",
        )
        for dim in DIMENSIONS
    ]


def entitlement_rules() -> list[Schema]:
    """On ``spec`` (``self`` is the EntitlementSpec), mirroring ``EntitlementSpec._guarantee_within_burst``."""
    rules = []
    for dim in DIMENSIONS:
        d = dim.value
        guarantee = f"(has(self.guarantee) ? {_field('self.guarantee', Resources, d)} : 0.0)"
        burst = _field("self.burst", Resources, d)
        rules.append(_rule(
            f"{guarantee} <= {burst}",
            f"guarantee.{d} exceeds burst.{d}: the burst ceiling must be at least the guarantee "
            f"(raise burst.{d} or lower guarantee.{d})",
            f".guarantee.{d}",
        ))
    for dim in DIMENSIONS:
        d = dim.value
        guarantee = f"(has(self.guarantee) ? {_field('self.guarantee', Resources, d)} : 0.0)"
        rules.append(_rule(
            f"self.tier == '{Tier.GUARANTEED.value}' || {guarantee} == 0.0",
            f"guarantee.{d} is set but the tier is not {Tier.GUARANTEED.value}: only the guaranteed tier "
            f"holds a guarantee (set guarantee.{d} to 0 or change the tier to {Tier.GUARANTEED.value})",
            f".guarantee.{d}",
        ))
    return rules


# -- status ------------------------------------------------------------------------------------------

CONDITION_TYPES: Final = ("Provisionable", "Ready")


def _amounts(what: str) -> Schema:
    return {
        "type": "object",
        "description": what,
        "properties": {
            dim.value: {"type": "number", "minimum": 0, "description": f"{dim.value} ({_UNITS[dim.value]})"}
            for dim in DIMENSIONS
        },
    }


_UNITS: Final = {"throughput": "weighted tokens/s", "kv": "KV-cache tokens", "concurrency": "sequences"}


def conditions_schema() -> Schema:
    """metav1.Condition's shape (as the API conventions and controller-gen spell it)."""
    return {
        "type": "array",
        "description": f"Latest observations; types {', '.join(CONDITION_TYPES)}.",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {
                    "type": "string",
                    "maxLength": 316,
                    "pattern": r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                               r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
                    "description": f"One of {', '.join(CONDITION_TYPES)}.",
                },
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "reason": {
                    "type": "string", "minLength": 1, "maxLength": 1024,
                    "pattern": r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
                    "description": "CamelCase reason for the last transition.",
                },
                "message": {"type": "string", "maxLength": 32768, "description": "What happened, for people."},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
            },
        },
    }


def _status(extra: Schema) -> Schema:
    return {
        "type": "object",
        "description": "Written by the operator from the state topics; read-only to users.",
        "properties": {
            "observedGeneration": {
                "type": "integer", "format": "int64", "minimum": 0,
                "description": "The metadata.generation this status describes.",
            },
            "conditions": conditions_schema(),
            **extra,
        },
    }


def entitlement_status() -> Schema:
    return _status({
        "limits": _amounts("Current limit per dimension (the allocator's last tick)."),
        "fairShare": {"type": "number", "minimum": 0, "description": "Dominant-resource fair share."},
        "debt": {"type": "number", "description": "Remembered over-use (decays with the pool's half-life)."},
        "effectiveWeight": {"type": "number", "minimum": 0, "description": "Weight after the debt factor."},
        "admitters": {"type": "integer", "minimum": 0, "description": "Admitters holding a share of the limits."},
    })


def global_entitlement_status() -> Schema:
    return _status({
        "shares": {
            "type": "object",
            "description": "Each region's burst share as the region's global loop last enforced it.",
            "additionalProperties": _amounts("Burst share of one region."),
        },
        "lostRegions": {"type": "array", "items": {"type": "string"}, "description": "Regions taken for lost."},
    })


def token_pool_status() -> Schema:
    return _status({
        "readyReplicas": {"type": "integer", "minimum": 0, "description": "Replicas Ready and serving."},
        "desiredReplicas": {"type": "integer", "minimum": 0, "description": "What the scaler last decided."},
        "capacity": _amounts("Sellable capacity of the ready replicas, per dimension."),
    })


# -- the CRDs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short: str
    spec: type[BaseModel]
    status: Schema
    columns: list[Schema]
    spec_rules: list[Schema] = field(default_factory=list)
    nested_rules: dict[str, list[Schema]] = field(default_factory=dict)  # property of spec -> rules

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def file(self) -> str:
        return f"{GROUP}_{self.plural}.yaml"


def _column(name: str, type_: str, path: str, description: str, priority: int = 0) -> Schema:
    out: Schema = {"name": name, "type": type_, "jsonPath": path, "description": description}
    if priority:
        out["priority"] = priority
    return out


_AGE = _column("Age", "date", ".metadata.creationTimestamp", "Time since creation.")

KINDS: Final = (
    Kind(
        kind="TokenPool",
        plural="tokenpools",
        short="tp",
        spec=TokenPoolSpec,
        status=token_pool_status(),
        columns=[
            _column("Model", "string", ".spec.model", "Model served."),
            _column("Ready", "integer", ".status.readyReplicas", "Ready replicas."),
            _column("Min", "integer", ".spec.replicas.min", "Least replicas."),
            _column("Max", "integer", ".spec.replicas.max", "Most replicas."),
            _AGE,
        ],
        nested_rules={"replicas": replica_rules(), "perReplica": per_replica_rules()},
    ),
    Kind(
        kind="Entitlement",
        plural="entitlements",
        short="ent",
        spec=EntitlementSpec,
        status=entitlement_status(),
        columns=[
            _column("Tenant", "string", ".spec.tenant", "Tenant."),
            _column("Pool", "string", ".spec.pool", "Pool."),
            _column("Tier", "string", ".spec.tier", "guaranteed, elastic or spot."),
            _column("Throughput", "number", ".status.limits.throughput", "Throughput limit (weighted tokens/s)."),
            _column("KV", "number", ".status.limits.kv", "Current KV-cache limit (tokens)."),
            _column("Concurrency", "number", ".status.limits.concurrency", "Current concurrency limit (sequences)."),
            _column("Debt", "number", ".status.debt", "Remembered over-use."),
            _column("Ready", "string", '.status.conditions[?(@.type=="Ready")].status', "Ready condition."),
            _AGE,
        ],
        spec_rules=entitlement_rules(),
    ),
    Kind(
        kind="GlobalEntitlement",
        plural="globalentitlements",
        short="gent",
        spec=GlobalEntitlementSpec,
        status=global_entitlement_status(),
        columns=[
            _column("Tenant", "string", ".spec.tenant", "Tenant."),
            _column("Model", "string", ".spec.model", "Model, served by one pool in each region."),
            _column("Tier", "string", ".spec.tier", "guaranteed, elastic or spot."),
            _column("Regions", "string", ".spec.regions", "Regions it spans."),
            _column("Burst", "number", ".spec.burst.throughput", "Global throughput burst (weighted tokens/s)."),
            _column("Lost", "string", ".status.lostRegions", "Regions taken for lost."),
            _AGE,
        ],
        spec_rules=[*entitlement_rules(), _rule(
            "self.regions.all(r, self.regions.exists_one(x, x == r))",
            "a region is listed twice in regions; list each region once", ".regions")],
    ),
)


def spec_schema(kind: Kind) -> Schema:
    spec = structural(kind.spec.model_json_schema(by_alias=True, mode="validation"))
    spec["description"] = " ".join((kind.spec.__doc__ or f"Desired state of a {kind.kind}.").split())
    if kind.spec_rules:
        spec["x-kubernetes-validations"] = kind.spec_rules
    for prop, rules in kind.nested_rules.items():
        spec["properties"][prop]["x-kubernetes-validations"] = rules
    return spec


def crd(kind: Kind) -> Schema:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition of one kind."""
    schema: Schema = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string", "minLength": 1, "maxLength": NAME_MAX, "pattern": NAME_PATTERN,
                        "description": f"Name: {NAME_RULE}.",
                    },
                },
            },
            "spec": spec_schema(kind),
            "status": kind.status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.name,
            "labels": {"app.kubernetes.io/part-of": "tokenpools"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": [kind.short],
                "categories": ["tokenpools"],
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": schema},
                "subresources": {"status": {}},
                "additionalPrinterColumns": kind.columns,
            }],
        },
    }


def crds() -> dict[str, Schema]:
    """File name -> CRD object, for every kind."""
    return {kind.file: crd(kind) for kind in KINDS}


_HEADER = (
    "# Generated from schemas/specs.py by `{command}` (schemas/crd.py); do not edit.\n"
    "# Helm installs crds/ on first install only: on upgrade, apply this file yourself\n"
    "# (docs/kubernetes.md, \"Upgrades\").\n"
)


def render() -> dict[str, str]:
    """File name -> YAML text, deterministic so a stale file shows up as a diff."""
    return {
        file: _HEADER.format(command=EXPORT_COMMAND)
        + yaml.safe_dump(obj, sort_keys=False, width=120, allow_unicode=True)
        for file, obj in crds().items()
    }


def export(directory: Path = CRD_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for file, text in render().items():
        path = directory / file
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale(directory: Path = CRD_DIR) -> list[str]:
    """Files that differ from what the specs generate now (missing ones included)."""
    return [
        file for file, text in render().items()
        if not (directory / file).is_file() or (directory / file).read_text(encoding="utf-8") != text
    ]
