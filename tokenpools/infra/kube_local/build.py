"""etcd and the Kubernetes control plane, built from their Go modules once per version and cached.

There is no binary to download here, only the Go module proxy, and ``go install k8s.io/kubernetes/
cmd/...@v1.37.2`` does not work (k8s.io/kubernetes's go.mod replaces its 33 staging modules with
``./staging/...`` paths). So two small wrapper modules live beside this file:

- ``go/kube``: requires ``k8s.io/kubernetes`` and replaces every staging module with its published
  ``v0.<minor>.<patch>`` tag; one multi-call ``main`` (``kube apiserver|controller-manager|scheduler``)
  so that the three commands share one link and one copy of client-go & co.
- ``go/etcd``: requires ``go.etcd.io/etcd/server/v3`` and calls ``etcdmain.Main``.

Each is copied into a staging directory under the cache (the repo is never written to), built with
``go build -trimpath -ldflags='-s -w'`` and renamed into
``$TOKENPOOLS_CACHE/tools/kube-<version>/kube`` and ``.../etcd-<version>/etcd`` (the cache root of the
Kafka jars, ``tokenpools.infra.kafka_local.jars.cache_root``). The versions come from the wrapper
modules' go.mod files, so bumping a version there builds into a new directory. A file lock makes
concurrent sessions wait for one build; the rename makes the install atomic. The build log stays
beside the binary.

``python -m tokenpools.infra.kube_local build`` builds (if needed) and prints the paths.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tokenpools.infra.gobuild import build_env, file_lock, find_go, log_tail, run_logged, usable
from tokenpools.infra.kafka_local.jars import cache_root

GO_DIR = Path(__file__).resolve().parent / "go"
KUBE_MODULE = GO_DIR / "kube"
ETCD_MODULE = GO_DIR / "etcd"
MODULE_FILES = ("go.mod", "go.sum", "main.go")


class KubeBuildError(RuntimeError):
    """One-line, actionable reason why a control-plane binary could not be built."""


@dataclass(frozen=True)
class KubeBinaries:
    kube: Path  # multi-call: `kube apiserver|controller-manager|scheduler ...`
    etcd: Path
    kube_version: str
    etcd_version: str


def say(msg: str) -> None:
    print(f"kube_local: {msg}", file=sys.stderr, flush=True)


def required_version(module_dir: Path, module: str) -> str:
    """The version of ``module`` that the wrapper's go.mod requires (the one source of the version)."""
    text = (module_dir / "go.mod").read_text(encoding="utf-8")
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
    if match is None:
        raise KubeBuildError(f"{module_dir / 'go.mod'} does not require {module}")
    return match.group(1)


def kube_version() -> str:
    return required_version(KUBE_MODULE, "k8s.io/kubernetes")


def etcd_version() -> str:
    return required_version(ETCD_MODULE, "go.etcd.io/etcd/server/v3")


def binary_paths() -> KubeBinaries:
    kv, ev = kube_version(), etcd_version()
    tools = cache_root() / "tools"
    return KubeBinaries(tools / f"kube-{kv}" / "kube", tools / f"etcd-{ev}" / "etcd", kv, ev)


def ensure_binaries() -> KubeBinaries:
    """The cached binaries, built first if missing (about 10 minutes on a cold 2-core machine)."""
    paths = binary_paths()
    for name, module_dir, version, binary in (
        ("etcd", ETCD_MODULE, paths.etcd_version, paths.etcd),
        ("kube", KUBE_MODULE, paths.kube_version, paths.kube),
    ):
        if usable(binary):
            continue
        with file_lock(binary.parent.parent / f".{name}-{version}.lock"):
            if not usable(binary):
                _build(name, module_dir, version, binary)
    return paths


def _go() -> str:
    go = find_go()
    if go is None:
        raise KubeBuildError(
            "the local Kubernetes control plane is built from Go modules, and `go` is not on PATH: install "
            f"Go >= 1.26 (https://go.dev/dl/) or put prebuilt binaries at {binary_paths().kube} and "
            f"{binary_paths().etcd}"
        )
    return go


def _build(name: str, module_dir: Path, version: str, binary: Path) -> None:
    go = _go()
    home = binary.parent.parent
    home.mkdir(parents=True, exist_ok=True)
    staging = home / f".{name}-{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    src = staging / "src"
    src.mkdir(parents=True)
    for file in MODULE_FILES:
        shutil.copy2(module_dir / file, src / file)
    env = build_env()
    built = staging / name
    cmd = [go, "build", "-trimpath", f"-ldflags={_ldflags(name, version)}", "-o", str(built), "."]
    log_path = home / f"{name}-{version}-build.log"
    say(f"building {name} {version} from its Go module into {binary} (first time only: "
        f"{'~8 minutes' if name == 'kube' else '~1 minute'} on 2 cold cores; log {log_path})")
    started = time.monotonic()
    rc = run_logged(name, cmd, env, src, log_path, say)
    if rc != 0 or not built.is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise KubeBuildError(
            f"`go build` of {name} {version} failed (exit {rc}); check access to the Go module proxy "
            f"(GOPROXY) and the Go version the module needs; full log {log_path}: {log_tail(log_path)}"
        )
    binary.parent.mkdir(parents=True, exist_ok=True)
    built.rename(binary)  # same filesystem: atomic, so the final path only ever holds a whole binary
    shutil.rmtree(staging, ignore_errors=True)
    say(f"built {name} {version} ({binary.stat().st_size / 1e6:.0f} MB) in {time.monotonic() - started:.0f}s")


def _ldflags(name: str, version: str) -> str:
    """-s -w (no symbol table or DWARF: ~1/3 smaller), plus the version stamps `make` would set.

    Without them kube-apiserver reports ``v0.0.0-master`` at /version, which clients that check the
    server's version (helm's ``kubeVersion``, for one) refuse.
    """
    flags = ["-s", "-w"]
    if name == "kube":
        major, minor = version.removeprefix("v").split(".")[:2]
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            flags += [f"-X {package}.gitVersion={version}", f"-X {package}.gitMajor={major}",
                      f"-X {package}.gitMinor={minor}", f"-X {package}.gitTreeState=clean"]
    return " ".join(flags)
