"""Command line: `python -m tokenpools.infra.mirror_local start|jars`."""

from __future__ import annotations

import argparse
import re
import signal
import sys
from pathlib import Path

from tokenpools.infra.kafka_local.errors import KafkaStartError
from tokenpools.infra.kafka_local.jars import cache_root
from tokenpools.infra.mirror_local.errors import say
from tokenpools.infra.mirror_local.jars import MIRROR_VERSION, ensure_mirror_jars
from tokenpools.infra.mirror_local.mirror import MirrorMaker, check_alias

_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})$")


def default_data_dir() -> Path:
    return cache_root() / "mirror-data"


def cluster_arg(text: str) -> tuple[str, str]:
    """ALIAS=HOST:PORT[,HOST:PORT...] -> (alias, bootstrap servers)."""
    alias, sep, servers = text.partition("=")
    if not sep or not alias or not servers:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ALIAS=HOST:PORT, e.g. us-east=127.0.0.1:9092")
    try:
        check_alias(alias)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    for server in servers.split(","):
        match = _HOST_PORT.match(server.strip())
        if not match or not 0 < int(match["port"]) < 65536:
            raise argparse.ArgumentTypeError(
                f"{text!r}: bootstrap server {server!r} is not HOST:PORT with a port in 1-65535"
            )
    return alias, ",".join(s.strip() for s in servers.split(","))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tokenpools.infra.mirror_local",
        description="Apache Kafka's MirrorMaker 2 (dedicated mode) between local Kafka clusters.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="run MirrorMaker in the foreground until Ctrl-C or SIGTERM")
    start.add_argument(
        "--cluster", action="append", type=cluster_arg, required=True, metavar="ALIAS=HOST:PORT",
        help="a cluster and its bootstrap servers; give two or more",
    )  # fmt: skip
    start.add_argument("--topics", required=True, help=r"Java regex of the topics to replicate, e.g. 'tp\..*'")
    start.add_argument(
        "--target", action="append", default=None, metavar="ALIAS",
        help="run only the flows into this cluster (repeatable; default: every flow)",
    )  # fmt: skip
    start.add_argument("--data-dir", type=Path, default=default_data_dir(), help="default: %(default)s")
    start.add_argument("--refresh-seconds", type=float, default=2.0, help="new-topic pickup interval")
    start.add_argument("--sync-group-offsets", action="store_true", help="translate consumer group offsets")
    start.add_argument("--timeout", type=float, default=120)
    start.add_argument("--version", default=MIRROR_VERSION, help="Kafka version (default: %(default)s)")
    jars = sub.add_parser("jars", help="resolve MirrorMaker's jars with Maven; print the libs directory")
    jars.add_argument("--version", default=MIRROR_VERSION, help="Kafka version (default: %(default)s)")
    return parser


def _cmd_start(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    clusters: dict[str, str] = {}
    for alias, servers in args.cluster:
        if alias in clusters:
            parser.error(f"--cluster {alias} given twice")
        clusters[alias] = servers
    if len(clusters) < 2:
        parser.error("give at least two --cluster ALIAS=HOST:PORT")
    for target in args.target or ():
        if target not in clusters:
            parser.error(f"--target {target} is not one of the --cluster aliases ({', '.join(clusters)})")
    if not args.topics.strip():
        parser.error("--topics is empty")
    try:
        re.compile(args.topics)  # close enough to java.util.regex to catch typos early
    except re.error as exc:
        parser.error(f"--topics {args.topics!r} is not a valid regex: {exc}")
    mirror = MirrorMaker(
        args.data_dir, clusters, args.topics, args.target,
        refresh_seconds=args.refresh_seconds, sync_group_offsets=args.sync_group_offsets, version=args.version,
    )  # fmt: skip
    if mirror.is_running():
        say(f"already running (pid {mirror.pid()}) on {mirror.data_dir}")
        return 0
    return _run_foreground(mirror, args.timeout)


def _run_foreground(mirror: MirrorMaker, timeout: float) -> int:
    """SIGTERM is turned into Ctrl-C, so both stop MirrorMaker cleanly at any moment, even mid-start."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        mirror.start(timeout)
        say(f"running; log {mirror.log_path}; Ctrl-C stops it")
        rc = mirror.wait()
    except KeyboardInterrupt:
        say("stopping")
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        mirror.stop()
        return 0
    mirror.stop()
    say(f"MirrorMaker exited with code {rc}; log {mirror.log_path}")
    return rc or 1


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "jars":
            print(ensure_mirror_jars(args.version))
            return 0
        return _cmd_start(parser, args)
    except KafkaStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
