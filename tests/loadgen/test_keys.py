"""Which key goes with which entitlement: options, files, demo keys, and what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadgen import keys
from schemas.loader import load_config
from schemas.specs import key_digest

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


def test_demo_keys_match_the_digests_in_the_examples() -> None:
    config = load_config(EXAMPLES)
    for name, key in keys.DEMO_KEYS.items():
        digests = {ref.sha256 for ref in config.entitlements[name].spec.api_keys}
        assert key_digest(key) in digests, name
    # entitlements outside DEMO_KEYS get their tenant's demo key when the config accepts it
    http = load_config(EXAMPLES.parent / "experiments" / "overload-http")
    resolved = keys.resolve_keys(["acme-http", "batchco-http"], http.entitlements)
    assert resolved == {"acme-http": "tp-demo-acme", "batchco-http": "tp-demo-batchco"}


def test_explicit_keys_win_and_missing_ones_are_named_together(tmp_path: Path) -> None:
    config = load_config(EXAMPLES)
    path = tmp_path / "keys.yaml"
    path.write_text("acme-prod: from-file\nglobex-prod: also-file\n")
    explicit = {**keys.load_keys_file(path), **keys.parse_key_options(["globex-prod=from-option"])}
    resolved = keys.resolve_keys(["acme-prod", "globex-prod", "batchco-spot"], config.entitlements, explicit=explicit)
    assert resolved == {"acme-prod": "from-file", "globex-prod": "from-option", "batchco-spot": "tp-demo-batchco"}
    with pytest.raises(keys.KeysError, match="nobody, batchco-spot"):
        keys.resolve_keys(["nobody", "batchco-spot"], config.entitlements, use_demo=False)


@pytest.mark.parametrize("bad", ["acme", "=key", "acme="])
def test_bad_key_option(bad: str) -> None:
    with pytest.raises(keys.KeysError, match="ENTITLEMENT=KEY"):
        keys.parse_key_options([bad])


def test_keys_file_must_be_a_map(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text('["not", "a", "map"]')
    with pytest.raises(keys.KeysError, match="map of entitlement name to API key"):
        keys.load_keys_file(path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a: k1\na: k2\n", "duplicate key"),
        ("a: &x [" + "y, " * 5 + "y]\n" + "".join(f"b{i}: &b{i} [*{'x' if i == 0 else f'b{i-1}'}, "
                                                     f"*{'x' if i == 0 else f'b{i-1}'}]\n" for i in range(20)),
         "alias"),
    ],
    ids=["duplicate key", "alias bomb"],
)
def test_keys_file_is_read_with_the_hardened_loader(tmp_path: Path, text: str, match: str) -> None:
    """A keys file gets the config loader's limits: a repeated entitlement is refused, not silently
    overwritten, and an alias bomb is refused before it expands (2^20 nodes here)."""
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(keys.KeysError, match=match) as info:
        keys.load_keys_file(path)
    assert len(str(info.value)) < 400
