"""Debian's Chromium for headless checks of the static report (``tokenpools report``'s index.html).

Grafana cannot run here, so the report is what a person looks at, and a headless browser is how a test
looks at it too: it loads the page as a user's browser would and tells whether every image decoded.
Debian's package is used rather than a downloaded browser build: it comes from the same apt sources
as the rest of the machine and needs no network access of its own at test time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
APT_TIMEOUT_S = 1800.0  # a first install pulls a few hundred MB of dependencies


class ChromiumError(RuntimeError):
    """Chromium is missing and could not be installed; the message says why and what to do."""


def _say(message: str) -> None:
    print(f"[chromium] {message}", file=sys.stderr, flush=True)


def _apt(args: list[str], say: Callable[[str], None]) -> None:
    say("running " + " ".join(args))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ChromiumError(f"{args[0]} {args[1]} failed: {exc}") from None
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
        raise ChromiumError(f"{' '.join(args)} exited {result.returncode}:\n{tail}")


def ensure_chromium(say: Callable[[str], None] = _say) -> Path:
    """``/usr/bin/chromium``, installing Debian's ``chromium`` package first when it is missing (as root)."""
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None:
        raise ChromiumError(f"{CHROMIUM} is missing and there is no apt-get to install it: install Chromium "
                            "(Debian's `chromium` package) by hand")
    if os.geteuid() != 0:
        raise ChromiumError(f"{CHROMIUM} is missing; installing it needs root: run "
                            "`sudo apt-get install -y --no-install-recommends chromium`")
    say(f"{CHROMIUM} is missing: installing Debian's chromium package")
    try:
        _apt(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], say)
    except ChromiumError:
        # The package lists may be absent or stale (a fresh container): refresh them once, then retry.
        _apt(["apt-get", "update"], say)
        _apt(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], say)
    if not CHROMIUM.exists():
        raise ChromiumError(f"apt-get installed chromium but {CHROMIUM} is still missing")
    say(f"installed {CHROMIUM}")
    return CHROMIUM


if __name__ == "__main__":
    try:
        print(ensure_chromium())
    except ChromiumError as error:
        _say(f"error: {error}")
        raise SystemExit(1) from None
