"""`config check` throughput: HEAD's pure-Python YAML path against the hardened libyaml path.

Builds one multi-document file (a pool and N entitlements, 20,000 by default) in a temp dir, then
loads it both ways in one run and prints documents/s and the ratio (figures, not assertions: the
machine is shared):

- ``old``: ``yaml.safe_load_all`` (PyYAML's pure-Python loader) plus the same validation, as
  ``load_config`` did before it used ``schemas.yaml_load``;
- ``new``: ``load_config`` (``CConfigLoader``: libyaml composes, ``schemas.yaml_load`` builds and
  checks aliases, duplicate keys and depth);
- ``yaml only`` lines split each path into reading YAML and validating, to show where time goes.

``python -m bench.bench_config_load [DOCUMENTS]``.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from schemas import yaml_load
from schemas.loader import ConfigProblem, PlatformConfig, Source, _parse_manifest, _register, cross_check, load_config

POOL = """\
apiVersion: tokenpools.dev/v1alpha1
kind: TokenPool
metadata: {name: p}
spec:
  model: p
  perReplica: {throughput: 1000000, kv: 100000000, concurrency: 100000}
  replicas: {min: 1, max: 8}
"""


def entitlement(i: int) -> str:
    return f"""\
apiVersion: tokenpools.dev/v1alpha1
kind: Entitlement
metadata: {{name: tenant-{i}}}
spec:
  pool: p
  tenant: tenant-{i}
  tier: elastic
  weight: 1
  burst: {{throughput: 200, kv: 6000, concurrency: 2}}
  slo: {{ttftSeconds: 1.0, tpotSeconds: 0.05}}
  apiKeys:
    - sha256: {hashlib.sha256(str(i).encode()).hexdigest()}
"""


def old_load(path: Path) -> PlatformConfig:
    """HEAD's path: pure-Python safe_load_all, then the loader's own validation and cross-checks."""
    problems: list[ConfigProblem] = []
    config = PlatformConfig()
    for index, doc in enumerate(yaml.safe_load_all(path.read_text(encoding="utf-8")), 1):
        source = Source(str(path), index)
        manifest = _parse_manifest(source, doc, problems)
        if manifest is not None:
            _register(config, manifest, source, problems)
    problems.extend(cross_check(config))
    assert not problems, problems[:3]
    return config


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(documents: int = 20_000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(POOL + "".join("---\n" + entitlement(i) for i in range(documents)))
        text = path.read_text()
        n = documents + 1
        print(f"{n} documents, {path.stat().st_size / 1e6:.1f} MB")
        # Best of two runs each, interleaved, so a busy neighbour on a shared machine skews both alike.
        old = new = old_yaml = new_yaml = c_plain = float("inf")
        for _ in range(2):
            old = min(old, timed(lambda: old_load(path)))
            new = min(new, timed(lambda: load_config(path)))
            old_yaml = min(old_yaml, timed(lambda: list(yaml.safe_load_all(text))))
            new_yaml = min(new_yaml, timed(lambda: list(yaml_load.load_all(text))))
            if hasattr(yaml, "CSafeLoader"):
                c_plain = min(c_plain, timed(lambda: list(yaml.load_all(text, Loader=yaml.CSafeLoader))))
        print(f"old (pure-Python safe_load_all + validation): {n / old:10,.0f} documents/s ({old:.2f} s)")
        print(f"new (load_config, {yaml_load.LOADER.__name__}):      {n / new:10,.0f} documents/s ({new:.2f} s)")
        print(f"ratio new/old: {old / new:.1f}x")
        print(f"  yaml only: old {n / old_yaml:,.0f}/s, new {n / new_yaml:,.0f}/s ({old_yaml / new_yaml:.1f}x); "
              f"plain CSafeLoader without the checks {n / c_plain:,.0f}/s")
        print(f"  validation and cross-checks: {max(new - new_yaml, 0.0):.2f} s of the new path's {new:.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
