"""Load multi-document YAML configs into validated specs, with errors a human can act on.

Every problem becomes one line naming the file, the document, the field and what to fix, so
`tokenpools config check` can print it and a CI job can grep it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from schemas import yaml_load
from schemas.echo import echo, echo_str
from schemas.errors import TokenPoolsError
from schemas.regions import GlobalEntitlement, is_regional_share, pool_in_region
from schemas.specs import API_VERSION, DIMENSIONS, Entitlement, Manifest, Tier, TokenPool
from schemas.workload import WorkloadSpec


class Workload(Manifest):
    kind: Literal["Workload"] = "Workload"
    spec: WorkloadSpec


KINDS: dict[str, type[Manifest]] = {
    "TokenPool": TokenPool, "Entitlement": Entitlement, "GlobalEntitlement": GlobalEntitlement, "Workload": Workload,
}
YAML_SUFFIXES = (".yaml", ".yml")
MAX_MESSAGE = 200  # characters of a validator's own message in a problem line
LABEL_PART = 40  # characters of an unvalidated kind or name in a problem's label


@dataclass(frozen=True)
class Source:
    """Where a document came from: file and 1-based document index."""

    file: str
    document: int

    def __str__(self) -> str:
        return f"{self.file}: document {self.document}"


@dataclass(frozen=True)
class ConfigProblem:
    source: Source | None
    label: str  # e.g. 'Entitlement "acme"'
    field: str
    message: str

    def __str__(self) -> str:
        where = str(self.source) if self.source else "<config>"
        label = f" ({self.label})" if self.label else ""
        fld = f"{self.field}: " if self.field else ""
        return f"{where}{label}: {fld}{self.message}"


class ConfigError(TokenPoolsError, ValueError):
    """One or more config problems; str() is one line per problem."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class PlatformConfig:
    pools: dict[str, TokenPool] = field(default_factory=dict)
    entitlements: dict[str, Entitlement] = field(default_factory=dict)
    workloads: dict[str, Workload] = field(default_factory=dict)
    global_entitlements: dict[str, GlobalEntitlement] = field(default_factory=dict)
    sources: dict[tuple[str, str], Source] = field(default_factory=dict)

    def entitlements_of(self, pool: str) -> list[Entitlement]:
        return [e for e in self.entitlements.values() if e.spec.pool == pool]

    def pool_for_model(self, model: str) -> TokenPool | None:
        for pool in self.pools.values():
            if pool.spec.model == model or pool.name == model:
                return pool
        return None


def load_config(*paths: str | Path, loader: type | None = None) -> PlatformConfig:
    """Load files and folders (``*.yaml``/``*.yml``, sorted) into one validated config.

    ``loader`` is a class from ``schemas.yaml_load`` (the C one where installed); tests and the
    benchmark pass the pure-Python one to compare.
    """
    problems: list[ConfigProblem] = []
    config = PlatformConfig()
    files = list(_expand(paths, problems))
    for file in files:
        for source, doc in _documents(file, problems, loader or yaml_load.LOADER):
            manifest = _parse_manifest(source, doc, problems)
            if manifest is not None:
                _register(config, manifest, source, problems)
    problems.extend(cross_check(config))
    if problems:
        raise ConfigError(problems)
    return config


def parse_manifest(doc: Any, source: Source | None = None) -> Manifest:
    """Validate one already-decoded document (for the admin API and the config topic)."""
    problems: list[ConfigProblem] = []
    manifest = _parse_manifest(source or Source("<request>", 1), doc, problems)
    if manifest is None:
        raise ConfigError(problems)
    return manifest


def cross_check(config: PlatformConfig) -> list[ConfigProblem]:
    """Checks that need more than one document: references and provisionability."""
    problems: list[ConfigProblem] = []
    for ent in config.entitlements.values():
        if ent.spec.pool not in config.pools:
            problems.append(_problem(config, ent, "spec.pool", _unknown("pool", ent.spec.pool, config.pools)))
    for wl in config.workloads.values():
        if wl.spec.pool not in config.pools:
            problems.append(_problem(config, wl, "spec.pool", _unknown("pool", wl.spec.pool, config.pools)))
        for i, tenant in enumerate(wl.spec.tenants):
            if tenant.entitlement not in config.entitlements:
                problems.append(
                    _problem(
                        config, wl, f"spec.tenants.{i}.entitlement",
                        _unknown("entitlement", tenant.entitlement, config.entitlements),
                    )
                )
    for pool in config.pools.values():
        problems.extend(
            _problem(config, ent, fld, msg)
            for ent, fld, msg in provisioning_problems(pool, config.entitlements_of(pool.name))
        )
    for glob in config.global_entitlements.values():
        problems.extend(_problem(config, glob, fld, msg) for fld, msg in global_problems(config, glob))
    return problems


def global_problems(config: PlatformConfig, glob: GlobalEntitlement) -> list[tuple[str, str]]:
    """A GlobalEntitlement against the pools this config holds.

    A region's config holds its own pools (and may hold the others'): each listed region that has pools
    here must have exactly one pool of the model, so its share has one place to go. When every listed
    region is here, the global guarantee must be provisionable by their pools at max replicas.
    """
    out: list[tuple[str, str]] = []
    spec = glob.spec
    held = config.entitlements.get(glob.name)
    if held is not None and not is_regional_share(held):
        out.append(("metadata.name", f"an Entitlement is also named '{glob.name}'; the regional share of a "
                                     "GlobalEntitlement takes its name, so rename one of them"))
    regions_here = {p.spec.region for p in config.pools.values()}
    ceiling = [0.0, 0.0, 0.0]
    for i, region in enumerate(spec.regions):
        if region not in regions_here:
            continue
        pools = pool_in_region(config.pools, spec.model, region)
        if len(pools) != 1:
            found = ", ".join(f"'{p.name}'" for p in pools) or "none"
            out.append((f"spec.regions.{i}", f"region '{region}' must have exactly one pool of model "
                                              f"{echo(spec.model)}, found {found}"))
            continue
        cap = pools[0].spec.capacity(pools[0].spec.replicas.max)
        ceiling = [c + x for c, x in zip(ceiling, cap, strict=True)]
    if regions_here >= set(spec.regions) and not out:
        for i, dim in enumerate(DIMENSIONS):
            g = spec.guarantee.get(dim)
            if g > ceiling[i] * (1 + 1e-9):
                out.append((f"spec.guarantee.{dim.value}",
                            f"the guarantee ({g:g} {dim.value}) exceeds what the pools of model "
                            f"{echo(spec.model)} in regions {', '.join(spec.regions)} can provision at max "
                            f"replicas ({ceiling[i]:g}); lower it or raise their maxReplicas"))
    return out


def provisioning_problems(
    pool: TokenPool, entitlements: Iterable[Entitlement]
) -> list[tuple[Entitlement, str, str]]:
    """Guarantees the pool could never provision, even at max replicas.

    What is promised must always be provisionable, so the entitlement that tips a dimension over
    is refused (here at load time, and with 409 at the admin API).
    """
    ceiling = pool.spec.capacity(pool.spec.replicas.max)
    per = pool.spec.sellable_per_replica()
    totals = [0.0, 0.0, 0.0]
    out: list[tuple[Entitlement, str, str]] = []
    for ent in sorted(entitlements, key=lambda e: e.name):
        if ent.spec.tier is not Tier.GUARANTEED:
            continue
        for i, dim in enumerate(DIMENSIONS):
            g = ent.spec.guarantee.get(dim)
            totals[i] += g
            if g > 0 and totals[i] > ceiling[i] * (1 + 1e-9):
                needed = math.ceil(totals[i] / per[i])
                out.append(
                    (
                        ent,
                        f"spec.guarantee.{dim.value}",
                        f"guarantees on pool '{pool.name}' total {totals[i]:g} {dim.value} but the pool can "
                        f"provision at most {ceiling[i]:g} at maxReplicas={pool.spec.replicas.max}; "
                        f"lower the guarantee or raise maxReplicas to {needed}",
                    )
                )
    return out


def _expand(paths: Iterable[str | Path], problems: list[ConfigProblem]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file())
            if not found:
                problems.append(ConfigProblem(Source(str(path), 0), "", "", "folder holds no .yaml or .yml files"))
            yield from found
        elif path.is_file():
            yield path
        else:
            problems.append(ConfigProblem(Source(str(path), 0), "", "", "no such file or folder"))


def _documents(file: Path, problems: list[ConfigProblem], loader: type) -> Iterator[tuple[Source, Any]]:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(ConfigProblem(Source(str(file), 0), "", "", f"cannot read: {exc}"))
        return
    try:
        for index, doc in yaml_load.load_all(text, loader):
            if doc is not None:
                yield Source(str(file), index), doc
    except yaml_load.YAMLInputError as exc:
        problems.append(ConfigProblem(Source(str(file), exc.document), "", "", str(exc)))


def _parse_manifest(source: Source, doc: Any, problems: list[ConfigProblem]) -> Manifest | None:
    if not isinstance(doc, dict):
        got = type(doc).__name__
        problems.append(ConfigProblem(source, "", "", f"expected a mapping with apiVersion/kind, got {got}"))
        return None
    kind = doc.get("kind")
    name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
    label = _label(kind, name)
    if doc.get("apiVersion") != API_VERSION:
        problems.append(
            ConfigProblem(source, label, "apiVersion", f"must be '{API_VERSION}', got {echo(doc.get('apiVersion'))}")
        )
        return None
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        problems.append(
            ConfigProblem(source, label, "kind", f"unknown kind {echo(kind)}; expected one of {sorted(KINDS)}")
        )
        return None
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        problems.extend(ConfigProblem(source, label, _loc(err["loc"]), _message(err)) for err in exc.errors())
        return None


def _register(config: PlatformConfig, manifest: Manifest, source: Source, problems: list[ConfigProblem]) -> None:
    kind = manifest.kind
    tables: dict[str, dict[str, Any]] = {
        "TokenPool": config.pools, "Entitlement": config.entitlements, "Workload": config.workloads,
        "GlobalEntitlement": config.global_entitlements,
    }
    table = tables[kind]
    previous = config.sources.get((kind, manifest.name))
    if previous is not None:
        problems.append(
            ConfigProblem(
                source, f'{kind} "{manifest.name}"', "metadata.name",
                f"duplicate {kind} name '{manifest.name}' (first defined in {previous}); names must be unique",
            )
        )
        return
    table[manifest.name] = manifest
    config.sources[(kind, manifest.name)] = source


def _problem(config: PlatformConfig, manifest: Manifest, fld: str, msg: str) -> ConfigProblem:
    kind = manifest.kind
    return ConfigProblem(config.sources.get((kind, manifest.name)), f'{kind} "{manifest.name}"', fld, msg)


def _unknown(what: str, name: str, known: Mapping[str, object]) -> str:
    listing = ", ".join(sorted(known)) or "none defined"
    return f"unknown {what} '{name}' (known: {listing})"


def _label(kind: Any, name: Any) -> str:
    """'Kind "name"' for a problem line, from what the document says (bounded: it is unvalidated)."""
    def part(value: Any) -> str:
        return echo_str(value, LABEL_PART) if isinstance(value, str) else echo(value, LABEL_PART)

    if kind and name:
        return f'{part(kind)} "{part(name)}"'
    return part(kind) if kind else ""


def _loc(loc: tuple[Any, ...]) -> str:
    # Parts can be keys the document made up (an unknown field), so each is bounded.
    return ".".join(echo_str(str(part)) for part in loc)


def _message(err: Any) -> str:
    msg = echo_str(str(err["msg"]), MAX_MESSAGE)  # a validator's message may quote what it was given
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err.get("type") == "extra_forbidden":
        msg = "unknown field (check the spelling; fields are camelCase)"
    elif err.get("type") == "missing":
        msg = "required field is missing"
    elif "input" in err and err.get("type") not in {"model_type"} and not isinstance(err["input"], dict | list):
        got = echo(err["input"])
        if got not in msg:  # a validator's own message may quote the value already
            msg = f"{msg} (got {got})"
    return msg
