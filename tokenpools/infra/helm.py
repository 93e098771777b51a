"""helm, built from the Helm Go module once per version and cached outside the repo.

The chart (deploy/helm/tokenpools) is linted and rendered with a real helm. There is no binary to
download here, only the Go module proxy, so it is built the way ``tokenpools.infra.promtool`` builds
promtool: ``go install helm.sh/helm/v3/cmd/helm@<version>`` into a temporary GOBIN under the cache,
then renamed into ``$TOKENPOOLS_CACHE/tools/helm-<version>/helm``. A file lock makes concurrent test
sessions wait for one build instead of racing; the rename makes the install atomic, so a binary at
the final path is always complete.

``go install`` stamps no version: helm would call itself "v3.22" and assume Kubernetes 1.20 for
``.Capabilities.KubeVersion`` and for lint's deprecated-API check. The ldflags set what helm's own
Makefile sets: the release version and the Kubernetes minor of the client-go that helm's go.mod
pins (read from the downloaded module, so a version bump cannot leave it stale).

``python -m tokenpools.infra.helm`` prints the binary's path, building it if needed.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tokenpools.infra.gobuild import build_env, file_lock, find_go, go_env, log_tail, run_logged, usable
from tokenpools.infra.kafka_local.jars import cache_root

HELM_VERSION = "v3.22.0"  # helm.sh/helm/v3
HELM_MODULE = "helm.sh/helm/v3"
HELM_PACKAGE = f"{HELM_MODULE}/cmd/helm"


class HelmBuildError(RuntimeError):
    """One-line, actionable reason why helm could not be built."""


def say(msg: str) -> None:
    print(f"helm: {msg}", file=sys.stderr, flush=True)


def helm_path(version: str = HELM_VERSION) -> Path:
    return cache_root() / "tools" / f"helm-{version}" / "helm"


def ensure_helm(version: str = HELM_VERSION) -> Path:
    """The cached helm of ``version``, built first if it is not there (minutes on a cold machine)."""
    binary = helm_path(version)
    if usable(binary):
        return binary
    with file_lock(binary.parent.parent / f".helm-{version}.lock"):
        if usable(binary):
            return binary
        _build(version, binary)
    return binary


def _go() -> str:
    go = find_go()
    if go is None:
        raise HelmBuildError(
            "helm is built from its Go module, and `go` is not on PATH: install Go >= 1.26 "
            "(https://go.dev/dl/) or put a prebuilt helm at " + str(helm_path())
        )
    return go


def _kube_minor(go: str, version: str, env: dict[str, str], cwd: Path) -> tuple[str, str] | None:
    """Kubernetes major/minor of the client-go in helm's go.mod (v0.37.x -> 1, 37), or None if unknown."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [go, "mod", "download", "-json", f"{HELM_MODULE}@{version}"],
            capture_output=True, text=True, env=env, cwd=cwd, timeout=600,
        )
        match = re.search(r'"GoMod":\s*"([^"]+)"', out.stdout)
        if match:
            gomod = Path(match.group(1)).read_text(encoding="utf-8")
            pin = re.search(r"^\s*k8s\.io/client-go v0\.(\d+)\.", gomod, re.MULTILINE)
            if pin:
                return ("1", pin.group(1))
    return None


def _build(version: str, binary: Path) -> None:
    go = _go()
    home = binary.parent.parent
    home.mkdir(parents=True, exist_ok=True)
    staging = home / f".helm-{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    gobin = staging / "bin"
    gobin.mkdir(parents=True)
    env = build_env(gobin)
    ldflags = ["-s", "-w", f"-X {HELM_MODULE}/internal/version.version={version}"]
    kube = _kube_minor(go, version, env, staging)
    if kube is not None:
        for pkg in ("pkg/lint/rules", "pkg/chartutil"):
            ldflags += [f"-X {HELM_MODULE}/{pkg}.k8sVersionMajor={kube[0]}",
                        f"-X {HELM_MODULE}/{pkg}.k8sVersionMinor={kube[1]}"]
    cmd = [go, "install", "-trimpath", f"-ldflags={' '.join(ldflags)}", f"{HELM_PACKAGE}@{version}"]
    log_path = home / f"helm-{version}-build.log"
    say(f"building helm {version} from its Go module into {binary} (first time only; a few minutes cold, "
        f"modules downloaded into {go_env(go, 'GOMODCACHE', env) or 'the Go module cache'})")
    started = time.monotonic()
    rc = run_logged("helm", cmd, env, staging, log_path, say)
    built = gobin / "helm"
    if rc != 0 or not built.is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise HelmBuildError(
            f"`go install {HELM_PACKAGE}@{version}` failed (exit {rc}); check access to the Go module "
            f"proxy (GOPROXY) and the Go version the module needs; full log {log_path}: {log_tail(log_path)}"
        )
    binary.parent.mkdir(parents=True, exist_ok=True)
    built.rename(binary)  # same filesystem: atomic, so the final path only ever holds a whole binary
    shutil.rmtree(staging, ignore_errors=True)
    size = binary.stat().st_size / 1e6
    say(f"built helm {version} ({size:.0f} MB) in {time.monotonic() - started:.0f}s")


def main() -> None:
    try:
        print(ensure_helm())
    except HelmBuildError as exc:
        print(f"helm: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
