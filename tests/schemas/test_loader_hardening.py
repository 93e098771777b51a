"""The config loader against hostile or careless YAML (issue 10, defects 2, 7 and 10).

Every test runs with both loader classes: the pure-Python one (PyYAML's wording, the reference) and
the libyaml one ``config check`` uses where installed. Their problem lists must be identical.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from schemas import yaml_load
from schemas.loader import ConfigError, load_config
from tests.schemas.test_loader import POOL, entitlement

LOADERS = [pytest.param(yaml_load.SafeConfigLoader, id="pure")]
if yaml_load.CConfigLoader is not None:
    LOADERS.append(pytest.param(yaml_load.CConfigLoader, id="libyaml"))

MAX_LINE = 300  # characters per problem line after the file's path, whatever the input


def bomb(levels: int, width: int) -> str:
    """The classic alias bomb: each level lists the previous one ``width`` times."""
    names = [f"l{i}" for i in range(levels)]
    lines = [f"{names[0]}: &{names[0]} [" + ", ".join(['"lol"'] * width) + "]"]
    lines += [f"{n}: &{n} [" + ", ".join([f"*{p}"] * width) + "]" for p, n in itertools.pairwise(names)]
    return "\n".join(lines) + "\n"


def problems(path: Path, loader: type) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(path, loader=loader)
    return [str(p) for p in exc.value.problems]


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_libyaml_is_what_config_check_uses_where_installed() -> None:
    if getattr(yaml, "__with_libyaml__", False):
        assert yaml_load.LOADER is yaml_load.CConfigLoader


@pytest.mark.parametrize("loader", LOADERS)
def test_alias_bomb_is_refused_with_its_line(tmp_path: Path, loader: type) -> None:
    path = write(tmp_path, POOL + "---\n" + bomb(9, 9))
    [line] = problems(path, loader)
    assert line.startswith(f"{path}: document 2: invalid YAML at line 14, column 5: aliases expand this document")
    assert "write the repeated values out" in line
    assert len(line) - len(str(path)) <= MAX_LINE


@pytest.mark.parametrize("loader", LOADERS)
def test_recursive_alias_is_refused(tmp_path: Path, loader: type) -> None:
    [line] = problems(write(tmp_path, "a: &a [*a]\n"), loader)
    assert "an alias refers to a node that contains it" in line


ANCHORED = """\
apiVersion: tokenpools.dev/v1alpha1
kind: Entitlement
metadata: {name: a}
spec:
  pool: small
  tenant: a
  tier: elastic
  burst: &burst {throughput: 200, kv: 1000, concurrency: 5}
  slo: &slo {ttftSeconds: 1.0}
  apiKeys:
    - &key {sha256: 9f6b17298c4d28b7529aecb246004defd8670cd2efdea03003fa6f7b307468bd}
x-unused: null
"""


@pytest.mark.parametrize("loader", LOADERS)
def test_anchors_aliases_and_merge_keys_still_load(tmp_path: Path, loader: type) -> None:
    # Anchors are per document in YAML, so the DRY case is within one document: a pool's
    # replicas reused via alias and a merge key overriding one field.
    pool = POOL.replace("  replicas: {min: 1, max: 2}\n", "  replicas: &r {min: 1, max: 2}\n")
    pool = pool.replace("  targetUtilisation: {throughput: 1.0, kv: 1.0, concurrency: 1.0}\n",
                        "  targetUtilisation: &u {throughput: 1.0, kv: 1.0, concurrency: 1.0}\n")
    ent = ANCHORED.replace("x-unused: null\n", "").replace(
        "  slo: &slo {ttftSeconds: 1.0}\n", "  slo: &slo {ttftSeconds: 1.0}\n  guarantee: {<<: *burst, kv: 500}\n"
    ).replace("tier: elastic", "tier: guaranteed")
    config = load_config(write(tmp_path, pool + "---\n" + ent), loader=loader)
    assert config.pools["small"].spec.replicas.max == 2
    spec = config.entitlements["a"].spec
    assert (spec.guarantee.throughput, spec.guarantee.kv, spec.guarantee.concurrency) == (200, 500, 5)
    assert spec.burst.kv == 1000


@pytest.mark.parametrize("loader", LOADERS)
def test_duplicate_keys_are_errors_naming_key_line_and_document(tmp_path: Path, loader: type) -> None:
    top = entitlement("a", tier="elastic", g="0") + "kind: Entitlement\n"
    nested = entitlement("b", tier="elastic", g="0").replace("  tier: elastic\n", "  tier: elastic\n  tier: spot\n")
    path = write(tmp_path, "---\n".join([POOL, top, nested]))
    assert problems(path, loader) == [
        f"{path}: document 2: invalid YAML at line 19, column 1: duplicate key 'kind' (first at line 11); "
        "keep one of them",
    ]  # the first bad document stops the file: what follows it may be misaligned
    path = write(tmp_path, "---\n".join([POOL, nested]))
    assert problems(path, loader) == [
        f"{path}: document 2: invalid YAML at line 17, column 3: duplicate key 'tier' (first at line 16); "
        "keep one of them",
    ]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("where", ["apiVersion", "kind", "tier", "unknown key", "tag", "name"])
def test_a_megabyte_value_gives_a_short_problem(tmp_path: Path, loader: type, where: str) -> None:
    big = "x" * 1_000_000
    text = entitlement("a", tier="elastic", g="0")
    text = {
        "apiVersion": text.replace("tokenpools.dev/v1alpha1", big),
        "kind": text.replace("kind: Entitlement", f"kind: {big}"),
        "tier": text.replace("tier: elastic", f"tier: {big}"),
        "unknown key": text + f"{big}: 1\n",
        "tag": text.replace("tier: elastic", f"tier: !{big} elastic"),
        "name": text.replace("metadata: {name: a}", f"metadata: {{name: {big}}}"),
    }[where]
    lines = problems(write(tmp_path, POOL + "---\n" + text), loader)
    assert lines
    for line in lines:
        assert len(line) - len(str(tmp_path)) <= MAX_LINE, line[:400]


@pytest.mark.parametrize("loader", LOADERS)
def test_deep_nesting_is_an_error_not_a_traceback(tmp_path: Path, loader: type) -> None:
    for depth in (100, 5000):
        [line] = problems(write(tmp_path, "a: " + "[" * depth + "]" * depth + "\n"), loader)
        assert line.endswith("invalid YAML at line 1, column 67: mappings and sequences are nested more than "
                             "64 levels deep; flatten the document")


@pytest.mark.parametrize("loader", LOADERS)
def test_explicitly_tagged_garbage_is_an_error_not_a_traceback(tmp_path: Path, loader: type) -> None:
    text = entitlement("a", tier="elastic", g="0").replace("  tier: elastic\n", "  tier: elastic\n  weight: !!int 0x\n")
    [line] = problems(write(tmp_path, POOL + "---\n" + text), loader)
    assert "document 2: invalid YAML at line 17, column 11: cannot read '0x' as 'tag:yaml.org,2002:int'" in line


BAD_FILES = {
    "syntax": POOL + "---\n" + entitlement("a").replace("tier: guaranteed", "tier: a: b"),
    "tab": POOL + "---\nkind:\n\tx: 1\n",
    "unclosed flow in doc 3": POOL + "---\n" + entitlement("a") + "---\nspec: [1, 2\n",
    "undefined alias": POOL + "---\n" + entitlement("a").replace("tier: guaranteed", "tier: *t"),
    "bad indent": "a:\n  b: 1\n c: 2\n",
    "bad escape": 'a: "\\q"\n',
    "version directive": "%YAML 9.9\n---\na: 1\n",
    "document cannot start": "a: 1\n---\nb: 2\n---\n  c: 1\n d: 2\n",
    "control character": POOL + "---\nkind: \x07\n",
    "python tag": "a: !!python/object/apply:os.system [echo hi]\n",
    "unhashable key": "? [a]\n: 1\n",
    "bomb": bomb(9, 9),
    "merge bomb": "a: &a {x: 1}\n" + "".join(
        f"m{i}: &m{i} {{<<: [*{p}, *{p}]}}\n" for i, p in enumerate(["a"] + [f"m{j}" for j in range(39)])),
    "deep": "[" * 3000 + "]" * 3000,
    "duplicate": POOL + "---\n" + entitlement("a") + "metadata: {name: b}\n",
    "validation": POOL.replace("kv: 10000", "kv: -1"),
}


@pytest.mark.skipif(yaml_load.CConfigLoader is None, reason="libyaml is not installed")
@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_both_loaders_report_the_same_problems(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, BAD_FILES[name])
    pure = problems(path, yaml_load.SafeConfigLoader)
    assert pure == problems(path, yaml_load.CConfigLoader)
    assert all("Traceback" not in p and len(p) - len(str(path)) <= MAX_LINE for p in pure)


@pytest.mark.parametrize("loader", LOADERS)
def test_syntax_errors_keep_pyyamls_wording(tmp_path: Path, loader: type) -> None:
    # What `config check` printed before libyaml was used (libyaml says "... in this context").
    [line] = problems(write(tmp_path, BAD_FILES["syntax"]), loader)
    assert line.endswith("document 2: invalid YAML at line 16, column 10: mapping values are not allowed here")


@pytest.mark.parametrize("loader", LOADERS)
def test_load_one_refuses_a_second_document_and_bombs(loader: type) -> None:
    assert yaml_load.load_one(b"a: &x [1]\nb: *x\n", loader) == {"a": [1], "b": [1]}
    with pytest.raises(yaml_load.YAMLInputError, match="expected a single document"):
        yaml_load.load_one("a: 1\n---\nb: 2\n", loader)
    with pytest.raises(yaml_load.YAMLInputError, match="aliases expand"):
        yaml_load.load_one(bomb(8, 8).encode(), loader)
