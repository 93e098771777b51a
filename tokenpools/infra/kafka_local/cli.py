"""Command line: `python -m tokenpools.infra.kafka_local start|stop|status` (wrapped by deploy/kafka/kafka-local)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from tokenpools.infra.kafka_local.broker import STATE_FILE, LocalKafka
from tokenpools.infra.kafka_local.errors import KafkaStartError, say
from tokenpools.infra.kafka_local.jars import KAFKA_VERSION, cache_root
from tokenpools.infra.kafka_local.probe import probe


def default_data_dir() -> Path:
    return cache_root() / "kafka-data"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tokenpools.infra.kafka_local", description="Local single-node Apache Kafka (KRaft)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("start", "start the broker (foreground until Ctrl-C, or --detach)"),
        ("stop", "stop a detached broker"),
        ("status", "is a broker running on this data dir? (exit 0 yes, 3 no)"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--data-dir", type=Path, default=default_data_dir(), help="default: %(default)s")
        cmd.add_argument("--timeout", type=float, default=90 if name == "start" else 30)
        if name == "start":
            cmd.add_argument("--port", type=int, default=None, help="PLAINTEXT port (default: last or free)")
            cmd.add_argument("--controller-port", type=int, default=None)
            cmd.add_argument("--version", default=KAFKA_VERSION, help="Kafka version (default: %(default)s)")
            cmd.add_argument("--detach", action="store_true", help="leave it running and return")
            cmd.add_argument("--auto-create-topics", action="store_true")
    return parser


def _cmd_start(args: argparse.Namespace) -> int:
    kafka = LocalKafka(
        args.data_dir, args.port, args.controller_port, args.version, auto_create_topics=args.auto_create_topics
    )
    if kafka.is_running():
        print(kafka.bootstrap_servers)
        say(f"already running (pid {kafka.pid()}) on {kafka.data_dir}")
        return 0
    if args.detach:
        kafka.start(args.timeout, detach=True)
        print(kafka.bootstrap_servers, flush=True)
        say(f"detached (pid {kafka.pid()}); log {kafka.log_path}; stop with `stop --data-dir {kafka.data_dir}`")
        return 0
    return _run_foreground(kafka, args.timeout)


def _run_foreground(kafka: LocalKafka, timeout: float) -> int:
    """SIGTERM is turned into Ctrl-C, so both stop the broker cleanly at any moment, even mid-start."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        kafka.start(timeout)
        print(kafka.bootstrap_servers, flush=True)
        say(f"running; log {kafka.log_path}; Ctrl-C stops it")
        rc = kafka.wait()
    except KeyboardInterrupt:
        say("stopping")
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        kafka.stop()
        return 0
    kafka.stop()  # tidies the pid file and any unfinished class archive
    say(f"broker exited with code {rc}; log {kafka.log_path}")
    return rc


def _cmd_stop(args: argparse.Namespace) -> int:
    if not (args.data_dir / STATE_FILE).is_file():
        say(f"no broker state in {args.data_dir}")
        return 0
    kafka = LocalKafka(args.data_dir)
    pid = kafka.pid()
    if pid is None:
        say(f"no broker running on {kafka.data_dir}")
        return 0
    kafka.stop(args.timeout)
    say(f"stopped pid {pid}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    if not (args.data_dir / STATE_FILE).is_file():
        print(f"stopped (no broker state in {args.data_dir})")
        return 3
    kafka = LocalKafka(args.data_dir)
    pid = kafka.pid()
    if pid is None:
        print(f"stopped ({kafka.data_dir})")
        return 3
    ready = "ready" if probe(kafka.bootstrap_servers) else "not answering"
    print(f"running pid={pid} bootstrap={kafka.bootstrap_servers} {ready} ({kafka.data_dir})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"start": _cmd_start, "stop": _cmd_stop, "status": _cmd_status}
    try:
        return handlers[args.command](args)
    except KafkaStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
