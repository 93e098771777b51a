"""What the project's Go builds (promtool, helm, the Kubernetes control plane) share.

Each tool is built once per machine from its Go module into a cache keyed by version, the way the Kafka
jars are: under a file lock (two test sessions never build it twice), into a staging folder renamed
into place (the final path only ever holds a whole binary), with progress every 15 s (``go`` prints
nothing while it compiles) and a build log kept beside it.

``TOKENPOOLS_BUILD_NICE=N`` (0-19) runs ``go`` at a lower CPU priority. The test suite sets it when it
starts building in the background (``tests/conftest.py``), so a cold machine builds on the cores the
tests leave idle instead of slowing them down.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

NICE_ENV = "TOKENPOOLS_BUILD_NICE"


def lower_priority() -> Callable[[], None] | None:
    """A ``preexec_fn`` that lowers the build's priority, or None when the variable is unset."""
    raw = os.environ.get(NICE_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 <= int(raw) <= 19:
        raise ValueError(f"{NICE_ENV} must be a whole number from 0 to 19, got {raw[:20]!r}")
    step = int(raw)

    def nice() -> None:
        os.nice(step)

    return nice


def usable(binary: Path) -> bool:
    return binary.is_file() and os.access(binary, os.X_OK)


def find_go() -> str | None:
    """``go`` on PATH, else the default install location; None when there is none (the caller says why
    it needs it)."""
    go = shutil.which("go")
    if go is not None:
        return go
    return "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").is_file() else None


def build_env(gobin: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if gobin is not None:
        env["GOBIN"] = str(gobin)
    # Keep the user's flags (e.g. -buildvcs=false); -mod=mod so a GOFLAGS=-mod=vendor elsewhere cannot
    # break a build outside any module.
    flags = [f for f in env.get("GOFLAGS", "").split() if not f.startswith("-mod=")]
    env["GOFLAGS"] = " ".join([*flags, "-mod=mod"])
    env.setdefault("GOTOOLCHAIN", "local")  # never fetch another toolchain behind the user's back
    return env


def go_env(go: str, name: str, env: dict[str, str]) -> str:
    """``go env NAME`` (for messages: where the modules go); empty if it cannot be read."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([go, "env", name], capture_output=True, text=True, env=env, timeout=30)
        return out.stdout.strip()
    return ""


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def progress(name: str, started: float, log_path: Path, say: Callable[[str], None],
             every: float = 15.0) -> Iterator[None]:
    """Say every ``every`` seconds that the build of ``name`` is still working, and how many modules it fetched."""
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


def run_logged(name: str, cmd: Sequence[str], env: dict[str, str], cwd: Path, log_path: Path,
               say: Callable[[str], None]) -> int:
    """Run one ``go`` command into ``log_path`` (at the priority ``TOKENPOOLS_BUILD_NICE`` asks), with progress."""
    started = time.monotonic()
    with open(log_path, "w") as log, progress(name, started, log_path, say):
        log.write(f"$ (cd {cwd} && {' '.join(cmd)})\n")
        log.flush()
        return subprocess.run(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                              preexec_fn=lower_priority()).returncode


def log_tail(log_path: Path, lines: int = 8, limit: int = 900) -> str:
    """The log's last lines on one line, for an error message."""
    tail = log_path.read_text(errors="replace").splitlines()[-lines:] if log_path.is_file() else []
    text = " | ".join(line.strip() for line in tail if line.strip())
    return text if len(text) <= limit else "..." + text[-limit:]
