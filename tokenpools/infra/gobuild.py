"""What the project's Go builds (promtool, helm, the Kubernetes control plane) share.

``TOKENPOOLS_BUILD_NICE=N`` (0-19) runs ``go`` at a lower CPU priority. The test suite sets it when it
starts building in the background (``tests/conftest.py``), so a cold machine builds on the cores the
tests leave idle instead of slowing them down.
"""

from __future__ import annotations

import os
from collections.abc import Callable

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
