"""hypothesis over the config loader: any YAML text or document gives a config or a short ConfigError.

``load_config`` (``tokenpools config check``, the admitter's ``--config``) and ``parse_manifest``
(the admin API's PUT, the config topic) must answer anything with either a ``PlatformConfig`` whose
every number is finite, or a ``ConfigError`` whose every line is short (values quoted back are
capped: ``schemas.echo``). Any other exception would be a traceback for ``config check`` and a 500
for the admin API.

Inputs: arbitrary text; YAML dumped from arbitrary documents; valid pool and entitlement manifests
with one value replaced (wrong types, ``.inf``/``.nan``, ``1e999``, huge integers, long strings);
and small alias graphs (anchors referenced a few levels deep; the bounded sizes here never need more
than a few thousand nodes even if expanded, so a regression costs memory in the MB, not GB).
Bounded and reproducible: ``PROFILE`` fixes the example count and derandomizes (a few seconds).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.loader import ConfigError, PlatformConfig, Source, load_config, parse_manifest
from tests.factories import ent, pool
from tests.raw import all_finite

PROFILE = settings(max_examples=150, derandomize=True, database=None, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_LINE = 400  # characters of one problem line: a source, a label, a field and an echo (80) fit easily

VALID = [pool("p").model_dump(mode="json", by_alias=True), ent("e1").model_dump(mode="json", by_alias=True),
         ent("g1", tier="guaranteed", guarantee=(10.0, 100.0, 1.0)).model_dump(mode="json", by_alias=True)]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(), st.sampled_from([math.inf, -math.inf, math.nan, 1e308, -0.0, 5e-324]),
    st.sampled_from(["inf", ".inf", "-.inf", ".nan", "NaN", "1e999", "Infinity", "x" * 5000, "a/b", "a\nb"]),
    st.text(max_size=16),
)
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=16)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated_manifest(draw: st.DrawFn) -> Any:
    doc = yaml.safe_load(yaml.safe_dump(draw(st.sampled_from(VALID))))  # a deep copy
    paths = [p for p in _paths(doc) if p]
    path = draw(st.sampled_from(paths))
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(documents)
    return doc


@st.composite
def alias_graphs(draw: st.DrawFn) -> str:
    """An anchor per level, each level a list of aliases of the one before (a small 'billion laughs')."""
    width, depth = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    lines = ["a0: &a0 [x]"]
    for level in range(1, depth + 1):
        refs = ", ".join(f"*a{level - 1}" for _ in range(width))
        lines.append(f"a{level}: &a{level} [{refs}]")
    lines.append(draw(st.sampled_from([f"spec: *a{depth}", f"metadata: {{name: *a{depth}}}", ""])))
    return "\n".join(["apiVersion: tokenpools.dev/v1alpha1", "kind: TokenPool", *lines]) + "\n"


def yaml_texts() -> st.SearchStrategy[str]:
    dumped = st.one_of(documents, mutated_manifest()).map(lambda d: yaml.safe_dump(d, allow_unicode=True))
    many = st.lists(mutated_manifest(), min_size=1, max_size=3).map(lambda ds: yaml.safe_dump_all(ds))
    return st.one_of(st.text(max_size=300), dumped, many, alias_graphs())


def assert_short(exc: ConfigError) -> None:
    assert exc.problems, "a ConfigError without problems"
    for line in str(exc).splitlines():
        assert len(line) <= MAX_LINE, f"a problem line of {len(line)} characters: {line[:200]}..."


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def test_load_config_any_text(folder: Path) -> None:
    file = folder / "config.yaml"

    @PROFILE
    @given(text=yaml_texts())
    def run(text: str) -> None:
        file.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            config = load_config(file)
        except ConfigError as exc:
            assert_short(exc)
            return
        assert isinstance(config, PlatformConfig)
        for doc in [*config.pools.values(), *config.entitlements.values(), *config.workloads.values()]:
            assert all_finite(doc), f"a non-finite number was accepted: {doc!r}"

    run()


@PROFILE
@given(doc=st.one_of(documents, mutated_manifest()))
def test_parse_manifest_any_document(doc: Any) -> None:
    try:
        manifest = parse_manifest(doc, Source("PUT /admin/entitlements/x", 1))
    except ConfigError as exc:
        assert_short(exc)
        return
    assert all_finite(manifest), f"a non-finite number was accepted: {manifest!r}"


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, "inf", ".inf", "1e999", 1e308])
@pytest.mark.parametrize("field", ["weight", "burstWindowSeconds"])
def test_entitlement_with_a_non_finite_or_huge_number_is_refused(value: Any, field: str) -> None:
    doc = ent("e1").model_dump(mode="json", by_alias=True)
    doc["spec"][field] = value
    with pytest.raises(ConfigError) as info:
        parse_manifest(doc)
    assert_short(info.value)
