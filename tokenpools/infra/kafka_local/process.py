"""The broker process as the OS sees it: pids, its log file, and dying with its parent."""

from __future__ import annotations

import contextlib
import ctypes
import re
import signal
from collections.abc import Callable
from pathlib import Path

RUN_HEADER = "=== kafka_local: broker start"
MAX_LOG_BYTES = 50 * 1024 * 1024


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def is_our_broker(pid: int, server_properties: Path) -> bool:
    """A stale pid file may name a recycled pid: only trust a java running our config file."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in argv and str(server_properties).encode() in argv and pid_alive(pid)


def log_tail(path: Path, lines: int = 8) -> list[str]:
    """Error lines of the latest run only (the log is appended across restarts), else its last lines."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return [f"(no log at {path})"]
    run = text.rsplit(RUN_HEADER, 1)[-1].splitlines()[1:]
    errors = [ln for ln in run if re.search(r"\b(ERROR|FATAL)\b|Exception\b|Error:|^Caused by", ln)]
    if not errors:
        return run[-lines:]
    # The first errors name the cause; the last ones say how it ended.
    return list(dict.fromkeys(errors[: lines - 2] + errors[-2:]))


def die_with_parent_hook() -> Callable[[], None] | None:
    """Linux PR_SET_PDEATHSIG: a broker owned by a killed pytest must not outlive it.

    libc is loaded here, in the parent: the hook runs between fork and exec, where loading a
    library could deadlock on a lock that another thread held at fork time.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def rotate(log_path: Path) -> None:
    with contextlib.suppress(OSError):
        if log_path.stat().st_size > MAX_LOG_BYTES:
            log_path.replace(log_path.with_suffix(".log.1"))
