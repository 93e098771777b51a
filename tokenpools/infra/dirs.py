"""Where token pools keeps local state that must outlive a process (spools, Faust's directory)."""

from __future__ import annotations

import os
from pathlib import Path


def state_home() -> Path:
    """``$XDG_STATE_HOME/tokenpools`` (``~/.local/state/tokenpools`` without it)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tokenpools"
