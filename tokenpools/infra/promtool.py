"""promtool, built from the Prometheus Go module once per version and cached outside the repo.

The alert rules (deploy/prometheus/tokenpools-rules.yaml) are checked and unit-tested with a real
promtool. There is no binary to download here, only the Go module proxy, so it is built:
``go install github.com/prometheus/prometheus/cmd/promtool@<version>`` into a temporary GOBIN under
the cache, then renamed into ``$TOKENPOOLS_CACHE/tools/promtool-<version>/promtool`` (the same
cache root as the Kafka jars, ``tokenpools.infra.kafka_local.jars.cache_root``). A file lock makes
concurrent test sessions wait for one build instead of racing; the rename makes the install atomic,
so a binary at the final path is always complete.

Built with ``-tags remove_all_sd``: Prometheus 3.x guards every service-discovery plugin in
``plugins/`` with ``//go:build !remove_all_sd || enable_<x>_sd``, and promtool needs none of them to
check or test rules. (promtool still imports the Kubernetes SD and file SD directly, so those stay.)

Go's own caches are used (``go env GOMODCACHE``, ``GOCACHE``): they are content-addressed and safe
for concurrent builds, a version bump reuses most of the downloaded modules, and our cache keeps
only the ~tens of MB binary (CI caches ``$TOKENPOOLS_CACHE``; it may cache Go's too).

``python -m tokenpools.infra.promtool`` prints the binary's path, building it if needed.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tokenpools.infra.gobuild import build_env, file_lock, find_go, go_env, log_tail, run_logged, usable
from tokenpools.infra.kafka_local.jars import cache_root

PROMTOOL_VERSION = "v0.316.0"  # github.com/prometheus/prometheus, i.e. Prometheus 3.x's promtool
PROMTOOL_PACKAGE = "github.com/prometheus/prometheus/cmd/promtool"
BUILD_TAGS = "remove_all_sd"


class PromtoolBuildError(RuntimeError):
    """One-line, actionable reason why promtool could not be built."""


def say(msg: str) -> None:
    print(f"promtool: {msg}", file=sys.stderr, flush=True)


def promtool_path(version: str = PROMTOOL_VERSION) -> Path:
    return cache_root() / "tools" / f"promtool-{version}" / "promtool"


def ensure_promtool(version: str = PROMTOOL_VERSION) -> Path:
    """The cached promtool binary, built from its Go module on first use (minutes cold)."""
    binary = promtool_path(version)
    if usable(binary):
        return binary
    with file_lock(binary.parent.parent / f".promtool-{version}.lock"):
        if usable(binary):
            return binary
        _build(version, binary)
    return binary


def _go() -> str:
    go = find_go()
    if go is None:
        raise PromtoolBuildError(
            "promtool is built from its Go module, and `go` is not on PATH: install Go >= 1.26 "
            "(https://go.dev/dl/) or put a prebuilt promtool at " + str(promtool_path())
        )
    return go


def _build(version: str, binary: Path) -> None:
    go = _go()
    home = binary.parent.parent
    home.mkdir(parents=True, exist_ok=True)
    staging = home / f".promtool-{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    gobin = staging / "bin"
    gobin.mkdir(parents=True)
    env = build_env(gobin)
    # `go install` sets no version; stamp the module version so `promtool --version` names it.
    ldflags = f"-X github.com/prometheus/common/version.Version={version.removeprefix('v')}"
    cmd = [go, "install", "-tags", BUILD_TAGS, "-ldflags", ldflags, f"{PROMTOOL_PACKAGE}@{version}"]
    log_path = home / f"promtool-{version}-build.log"
    say(f"building promtool {version} from its Go module into {binary} (first time only; a few minutes cold, "
        f"~1 GB of modules downloaded into {go_env(go, 'GOMODCACHE', env) or 'the Go module cache'})")
    started = time.monotonic()
    rc = run_logged("promtool", cmd, env, staging, log_path, say)
    built = gobin / "promtool"
    if rc != 0 or not built.is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise PromtoolBuildError(
            f"`go install {PROMTOOL_PACKAGE}@{version}` failed (exit {rc}); check access to the Go module "
            f"proxy (GOPROXY) and the Go version the module needs; full log {log_path}: {log_tail(log_path)}"
        )
    binary.parent.mkdir(parents=True, exist_ok=True)
    built.rename(binary)  # same filesystem: atomic, so the final path only ever holds a whole binary
    shutil.rmtree(staging, ignore_errors=True)
    size = binary.stat().st_size / 1e6
    say(f"built promtool {version} ({size:.0f} MB) in {time.monotonic() - started:.0f}s")


def rule_expressions(path: str | Path) -> list[str]:
    """Every ``expr`` of a Prometheus rules file (alerting and recording rules), in file order."""
    doc: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return [str(rule["expr"]) for group in doc.get("groups") or [] for rule in group.get("rules") or []]


def main() -> None:
    try:
        print(ensure_promtool())
    except PromtoolBuildError as exc:
        print(f"promtool: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
