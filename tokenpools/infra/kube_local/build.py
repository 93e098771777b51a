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

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenpools.infra.gobuild import lower_priority
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
        if _usable(binary):
            continue
        with _file_lock(binary.parent.parent / f".{name}-{version}.lock"):
            if not _usable(binary):
                _build(name, module_dir, version, binary)
    return paths


def _usable(binary: Path) -> bool:
    return binary.is_file() and os.access(binary, os.X_OK)


def find_go() -> str:
    go = shutil.which("go")
    if go is not None:
        return go
    if Path("/usr/local/go/bin/go").is_file():
        return "/usr/local/go/bin/go"
    raise KubeBuildError(
        "the local Kubernetes control plane is built from Go modules, and `go` is not on PATH: install "
        f"Go >= 1.26 (https://go.dev/dl/) or put prebuilt binaries at {binary_paths().kube} and "
        f"{binary_paths().etcd}"
    )


def _build(name: str, module_dir: Path, version: str, binary: Path) -> None:
    go = find_go()
    home = binary.parent.parent
    home.mkdir(parents=True, exist_ok=True)
    staging = home / f".{name}-{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    src = staging / "src"
    src.mkdir(parents=True)
    for file in MODULE_FILES:
        shutil.copy2(module_dir / file, src / file)
    env = dict(os.environ)
    # Keep the user's other flags; -mod=mod so that a GOFLAGS=-mod=vendor elsewhere cannot break it.
    flags = [f for f in env.get("GOFLAGS", "").split() if not f.startswith("-mod=")]
    env["GOFLAGS"] = " ".join([*flags, "-mod=mod"])
    env.setdefault("GOTOOLCHAIN", "local")  # never fetch another toolchain behind the user's back
    built = staging / name
    cmd = [go, "build", "-trimpath", f"-ldflags={_ldflags(name, version)}", "-o", str(built), "."]
    log_path = home / f"{name}-{version}-build.log"
    say(f"building {name} {version} from its Go module into {binary} (first time only: "
        f"{'~8 minutes' if name == 'kube' else '~1 minute'} on 2 cold cores; log {log_path})")
    started = time.monotonic()
    with open(log_path, "w") as log, _progress(name, started, log_path):
        log.write(f"$ (cd {src} && {' '.join(cmd)})\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=src,
                            preexec_fn=lower_priority()).returncode
    if rc != 0 or not built.is_file():
        tail = log_path.read_text(errors="replace").splitlines()[-8:]
        shutil.rmtree(staging, ignore_errors=True)
        raise KubeBuildError(
            f"`go build` of {name} {version} failed (exit {rc}); check access to the Go module proxy "
            f"(GOPROXY) and the Go version the module needs; full log {log_path}: {_one_line(tail)}"
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


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _progress(name: str, started: float, log_path: Path, every: float = 15.0) -> Iterator[None]:
    """`go build` prints nothing while it compiles; say that it is still working."""
    done = threading.Event()

    def tick() -> None:
        while not done.wait(every):
            lines = log_path.read_text(errors="replace").splitlines() if log_path.is_file() else []
            downloads = sum(1 for line in lines if line.startswith("go: downloading"))
            say(f"  still building {name}: {time.monotonic() - started:.0f}s, {downloads} modules downloaded")

    thread = threading.Thread(target=tick, name=f"{name}-build-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=1)


def _one_line(lines: list[str], limit: int = 900) -> str:
    text = " | ".join(line.strip() for line in lines if line.strip())
    return text if len(text) <= limit else "..." + text[-limit:]
