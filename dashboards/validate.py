"""Hold dashboard JSON to grafana-foundation-sdk's typed models, for want of the JSON Schemas.

The SDK's schemas are not shipped (PyPI wheel, npm package, Go module), so the check is against its
models: the JSON is decoded with ``Dashboard.from_json`` and encoded again, and must come back exactly.
``from_json`` keeps only the fields the schema knows, so an unknown or misspelt field (``fieldConfg``, a
panel option the panel type does not have) is missing from the round trip. Then the decoded objects are
held to their own annotations: ``from_json`` copies values without checking them, so a string where the
schema wants an int, or a value outside an enum (``graphTooltip: 7``), is caught here.

The annotation forms the SDK's generated models use are few: ``Optional``/``Union``, ``list[X]``,
``dict[K, V]``, ``Literal``, ``str``/``int``/``float``/``bool``, ``object``/``Any``, enums, and model
classes (a class with ``to_json`` and annotated attributes), forward references included.
"""

from __future__ import annotations

import enum
import json
import types
import typing
from typing import Any

from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as models

from dashboards.grafana import register_plugins

_UNION_ORIGINS = (typing.Union, types.UnionType)


def _diff(expected: Any, actual: Any, path: str) -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        problems = [f"{path}.{k}: not in the schema (dropped by from_json)"
                    for k in sorted(expected.keys() - actual.keys())]
        problems += [f"{path}.{k}: added by the round trip (a default the JSON lacks)"
                     for k in sorted(actual.keys() - expected.keys())]
        for key in sorted(expected.keys() & actual.keys()):
            problems += _diff(expected[key], actual[key], f"{path}.{key}")
        return problems
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [p for i, (e, a) in enumerate(zip(expected, actual, strict=True)) for p in _diff(e, a, f"{path}[{i}]")]
    if type(expected) is not type(actual) or expected != actual:
        return [f"{path}: {json.dumps(expected)[:80]} came back as {json.dumps(actual)[:80]}"]
    return []


def _is_model(value: object) -> bool:
    return callable(getattr(value, "to_json", None)) and bool(getattr(type(value), "__annotations__", None))


def _type_problems(value: object, annotation: Any, path: str) -> list[str]:
    origin = typing.get_origin(annotation)
    if annotation is Any or annotation is object:
        return check_types(value, path) if _is_model(value) else []
    if origin in _UNION_ORIGINS:
        attempts = [_type_problems(value, arm, path) for arm in typing.get_args(annotation)]
        return [] if any(not a for a in attempts) else min(attempts, key=len)
    if annotation is type(None):
        return [] if value is None else [f"{path}: {value!r} where null was expected"]
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        return [] if value in allowed else [f"{path}: {value!r} is not one of {allowed}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {type(value).__name__} where a list was expected"]
        (item,) = typing.get_args(annotation)
        return [p for i, v in enumerate(value) for p in _type_problems(v, item, f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__} where an object was expected"]
        key_type, value_type = typing.get_args(annotation)
        return [p for k, v in value.items()
                for p in _type_problems(k, key_type, f"{path}<key>") + _type_problems(v, value_type, f"{path}.{k}")]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        # from_json copies the raw JSON value; the schema allows exactly the enum's values.
        values = {m.value for m in annotation}
        ok = value in values and isinstance(value, bool) == any(isinstance(v, bool) for v in values)
        return [] if ok else [f"{path}: {value!r} is not a {annotation.__name__} ({sorted(map(str, values))})"]
    if annotation is bool:
        return [] if isinstance(value, bool) else [f"{path}: {value!r} where a boolean was expected"]
    if annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {value!r} where an integer was expected"]
    if annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {value!r} where a number was expected"]
    if annotation is str:
        return [] if isinstance(value, str) else [f"{path}: {value!r} where a string was expected"]
    if isinstance(annotation, type):
        if isinstance(value, cogruntime.UnknownDataquery):
            return [f"{path}: a query of a data source type no model is registered for"]
        if not isinstance(value, annotation):
            return [f"{path}: {type(value).__name__} where {annotation.__name__} was expected"]
        return check_types(value, path)
    raise TypeError(f"{path}: annotation form {annotation!r} not handled by the checker")


def check_types(model: object, path: str = "$") -> list[str]:
    """Every attribute of a decoded SDK model (recursively) against its annotation."""
    hints = typing.get_type_hints(type(model))
    return [p for name, annotation in hints.items()
            for p in _type_problems(getattr(model, name, None), annotation, f"{path}.{name}")]


def validate(text: str) -> list[str]:
    """Problems with a dashboard's JSON against the SDK's models; an empty list means it holds."""
    register_plugins()
    data = json.loads(text)
    decoded = models.Dashboard.from_json(data)
    again = json.loads(json.dumps(decoded, cls=JSONEncoder))
    return _diff(data, again, "$") + check_types(decoded)
