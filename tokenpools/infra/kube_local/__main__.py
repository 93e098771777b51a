"""``python -m tokenpools.infra.kube_local start --data-dir DIR``: a local control plane until Ctrl-C.

``build`` only builds (if needed) and prints the binaries' paths.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from tokenpools.infra.kube_local.build import KubeBuildError, ensure_binaries
from tokenpools.infra.kube_local.control_plane import ControlPlane, ControlPlaneError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokenpools.infra.kube_local")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="run etcd, kube-apiserver, kube-controller-manager and kube-scheduler")
    start.add_argument("--data-dir", required=True, help="certificates, tokens, etcd data, kubeconfigs, logs")
    sub.add_parser("build", help="build the binaries (if needed) and print their paths")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            binaries = ensure_binaries()
            print(binaries.kube)
            print(binaries.etcd)
            return 0
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a background job may have it ignored
            signal.signal(signum, lambda *_: stop.set())
        with ControlPlane(args.data_dir) as cp:
            print(f"control plane ready at {cp.url} in {cp.timings['all_ready']:.1f}s "
                  f"(apiserver {cp.timings['apiserver_ready']:.1f}s); logs in {cp.data_dir}", file=sys.stderr)
            print(f"export KUBECONFIG={cp.kubeconfig_path}", flush=True)
            while not stop.wait(1.0):
                pass
            print("stopping", file=sys.stderr)
        return 0
    except (KubeBuildError, ControlPlaneError) as exc:
        print(f"kube_local: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
