"""Which API key the load generator sends for each entitlement.

A workload names entitlements, never keys (configs hold only SHA-256 digests), so the keys come
from the command line (``--key ENT=KEY``), a file (``--keys FILE``, a YAML or JSON map), or, by
default, the demo keys that ``deploy/examples/entitlements.yaml`` lists in its header comment.
Missing keys are reported all at once before anything is sent: a run that discovers a missing
key after a minute of load has wasted the minute.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from schemas.specs import Entitlement, key_digest
from schemas.yaml_load import YAMLInputError, load_one

#: The plaintext demo keys of deploy/examples (their SHA-256 digests are in entitlements.yaml).
DEMO_KEYS: dict[str, str] = {
    "acme-prod": "tp-demo-acme",
    "globex-prod": "tp-demo-globex",
    "batchco-spot": "tp-demo-batchco",
    "tenant-a-interactive": "tp-demo-tenant-a",
    "tenant-b-standard": "tp-demo-tenant-b",
    "tenant-c-batch": "tp-demo-tenant-c",
}
#: Demo keys are ``tp-demo-<tenant>``: an entitlement not in DEMO_KEYS (e.g. the HTTP experiment's
#: ``acme-http``) gets its tenant's demo key when that key's digest is one the entitlement lists.
DEMO_PREFIX = "tp-demo-"


class KeysError(ValueError):
    """A key option or file that cannot be used; the message says which and why."""


def parse_key_options(options: Iterable[str]) -> dict[str, str]:
    """``ENTITLEMENT=KEY`` options into a map (a later option for the same entitlement wins)."""
    out: dict[str, str] = {}
    for option in options:
        name, sep, key = option.partition("=")
        if not sep or not name.strip() or not key.strip():
            raise KeysError(f"--key expects ENTITLEMENT=KEY, got {option!r}")
        out[name.strip()] = key.strip()
    return out


def load_keys_file(path: str | Path) -> dict[str, str]:
    """A YAML or JSON object ``{entitlement: key}`` (JSON is YAML, so one parser reads both)."""
    p = Path(path)
    try:
        data = load_one(p.read_bytes())
    except (OSError, UnicodeDecodeError, YAMLInputError) as exc:
        raise KeysError(f"{p}: cannot read the keys file: {exc}") from None
    if not isinstance(data, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise KeysError(f"{p}: expected a map of entitlement name to API key, e.g. "
                        f"{json.dumps({'acme-prod': 'tp-demo-acme'})}")
    return dict(data)


def demo_key(name: str, entitlement: Entitlement | None) -> str | None:
    """The demo key of an entitlement: listed in DEMO_KEYS, or its tenant's if the config accepts it."""
    if name in DEMO_KEYS:
        return DEMO_KEYS[name]
    if entitlement is None:
        return None
    key = DEMO_PREFIX + entitlement.spec.tenant
    digests = {ref.sha256 for ref in entitlement.spec.api_keys}
    return key if key_digest(key) in digests else None


def resolve_keys(needed: Iterable[str], entitlements: Mapping[str, Entitlement], *,
                 explicit: Mapping[str, str] | None = None, use_demo: bool = True) -> dict[str, str]:
    """A key for every entitlement in ``needed``: explicit ones first, then demo keys.

    Raises ``KeysError`` naming every entitlement left without a key.
    """
    explicit = explicit or {}
    keys: dict[str, str] = {}
    missing: list[str] = []
    for name in dict.fromkeys(needed):
        key = explicit.get(name) or (demo_key(name, entitlements.get(name)) if use_demo else None)
        if key:
            keys[name] = key
        else:
            missing.append(name)
    if missing:
        raise KeysError(f"no API key for entitlement(s) {', '.join(missing)}: pass --key ENTITLEMENT=KEY "
                        "or --keys FILE")
    return keys
