"""A real Kubernetes control plane for tests and local use, built from Go modules (see build.py)."""

from tokenpools.infra.kube_local.build import KubeBinaries, KubeBuildError, ensure_binaries
from tokenpools.infra.kube_local.control_plane import ControlPlane, ControlPlaneError

__all__ = ["ControlPlane", "ControlPlaneError", "KubeBinaries", "KubeBuildError", "ensure_binaries"]
