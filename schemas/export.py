"""JSON Schema files generated from the models, committed so non-Python consumers can validate."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas.loader import Workload
from schemas.records import (
    EntitlementState,
    PoolState,
    RegionReport,
    ReplicasReport,
    RequestEvent,
    RequestEventBatch,
)
from schemas.regions import GlobalEntitlement
from schemas.specs import Entitlement, TokenPool

SCHEMA_DIR = Path(__file__).parent / "jsonschema"
MODELS: dict[str, type[BaseModel]] = {
    "TokenPool": TokenPool,
    "Entitlement": Entitlement,
    "GlobalEntitlement": GlobalEntitlement,
    "Workload": Workload,
    "RequestEvent": RequestEvent,
    "RequestEventBatch": RequestEventBatch,
    "EntitlementState": EntitlementState,
    "PoolState": PoolState,
    "ReplicasReport": ReplicasReport,
    "RegionReport": RegionReport,
}


def render() -> dict[str, str]:
    """File name -> JSON text, deterministic so a stale file shows up as a diff."""
    out: dict[str, str] = {}
    for name, model in MODELS.items():
        schema = model.model_json_schema(by_alias=True, mode="validation")
        schema["$id"] = f"https://tokenpools.dev/schemas/v1alpha1/{name}.json"
        out[f"{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def export(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for file, text in render().items():
        path = directory / file
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale(directory: Path = SCHEMA_DIR) -> list[str]:
    """Files that differ from what the models generate now (missing ones included)."""
    problems = []
    for file, text in render().items():
        path = directory / file
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            problems.append(file)
    return problems
