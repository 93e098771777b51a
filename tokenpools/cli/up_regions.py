"""`tokenpools up --regions N`: N regions on this machine, one Kafka cluster each, MirrorMaker 2 between them.

What runs, in this order (what each is, and where its data and log are, is printed and written to
``--ready-file``):

1. **A broker per region** (``LocalKafka`` under ``<data-dir>/<region>/kafka``), the way multi-region
   platforms run Kafka: one cluster per region.
2. **A config per region** (``<data-dir>/<region>/config/config.yaml``): the given config (the repo's
   ``deploy/examples`` by default) with every TokenPool's ``spec.region`` (and a ``region`` label, if it
   has one) set to the region, and every GlobalEntitlement's ``spec.regions`` set to the N regions.
3. **A region's stack**: a child ``tokenpools up --bootstrap <its broker> --config <its config> --region
   <name>`` per region, in a session of its own (so one region can be killed whole): its pipeline worker,
   its global loop (``streams regional``), the scaler with emulator replicas and its admitters. No
   history process unless ``--history`` (one chDB per region costs the machine's CPU).
4. **MirrorMaker 2** (``tokenpools.infra.mirror_local.MirrorMaker``, Apache Kafka's own, dedicated mode):
   one process per *target* region (``<data-dir>/mirror/<target>``), replicating every other region's
   ``<prefix>tokenpools.region-summaries`` into it as ``<source>.<prefix>tokenpools.region-summaries``.
   One process per target is one replication link per region: stopping it cuts that region off from
   its peers' summaries (a partition) without touching the others.

After the start a region whose ``up`` exits (killed, say, to try a region loss) is reported and the
others go on. SIGINT or SIGTERM (or ``--duration``) stops everything: the regions' ``up`` first (each
stops its own parts), then MirrorMaker, then the brokers.

The ready file::

    {"regions": {"us-east": {"bootstrap", "kafka_data_dir", "config_dir", "data_dir", "command", "log",
                             "ready_file", "pid", "admitters", "replicas", "admin_token",
                             "pipeline": {"pid", ...}, "regional": {"pid", "metrics_url", "log"},
                             "history", "mirror": {"pid", "data_dir", "log", "clusters", "topics", "targets"}},
                 ...},
     "order": [...], "topic_prefix", "pid"}

``command`` and ``ready_file`` restart a region's stack as this process started it; ``mirror`` holds what
``MirrorMaker(data_dir, clusters, topics, targets)`` takes to restart a link on the same data dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from tokenpools.cli.up import _write_json

REGION_NAMES = ("us-east", "eu-west", "ap-south", "us-west", "eu-north", "ap-northeast", "sa-east", "af-south")
EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
CHILD_START_S = 240.0  # a region's up: topics, worker, replicas, admitters; on 2 busy cores with N JVMs
CHILD_STOP_S = 60.0
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class RegionsOptions:
    count: int
    config: list[Path]
    data_dir: Path
    admitters: int = 2
    port: int = 8080
    speedup: float = 1.0
    topic_prefix: str = ""
    ready_file: Path | None = None
    duration: float | None = None
    report_every: float = 5.0
    worker_args: list[str] = field(default_factory=list)
    history: bool = False
    log_level: str = "warning"


def _echo(what: str, detail: str) -> None:
    typer.echo(f"{what:<10} {detail}")


def _documents(paths: list[Path]) -> list[dict[str, Any]]:
    """Every YAML document of the files and folders (sorted, as ``schemas.loader`` reads them)."""
    import yaml

    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file())
        else:
            files.append(path)
    docs = []
    for file in files:
        docs += [d for d in yaml.safe_load_all(file.read_text(encoding="utf-8")) if isinstance(d, dict)]
    return docs


def region_documents(docs: list[dict[str, Any]], region: str, regions: list[str]) -> list[dict[str, Any]]:
    """``docs`` as region ``region`` of ``regions`` holds them: its pools in it, the global entitlements over all."""
    import copy

    out = []
    for doc in copy.deepcopy(docs):
        spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else None
        if doc.get("kind") == "TokenPool" and spec is not None:
            spec["region"] = region
            labels = (doc.get("metadata") or {}).get("labels")
            if isinstance(labels, dict) and "region" in labels:
                labels["region"] = region
        elif doc.get("kind") == "GlobalEntitlement" and spec is not None:
            spec["regions"] = list(regions)
        out.append(doc)
    return out


def write_region_config(docs: list[dict[str, Any]], region: str, regions: list[str], folder: Path) -> Path:
    """The region's config file, checked by the loader as ``config check`` would."""
    import yaml

    from schemas.loader import load_config

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    header = (f"# Region {region} of {', '.join(regions)}: written by `tokenpools up --regions` on every start "
              "(the given config with the pools in this region and the GlobalEntitlements over all regions).\n")
    path.write_text(header + yaml.safe_dump_all(region_documents(docs, region, regions), sort_keys=False))
    load_config(path)  # raises ConfigError with every problem
    return path


@dataclass
class Region:
    name: str
    index: int
    data_dir: Path
    kafka: Any = None  # LocalKafka
    config: Path | None = None
    command: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    ready: dict[str, Any] | None = None
    mirror: Any = None  # MirrorMaker into this region
    reported_exit: bool = False

    @property
    def ready_file(self) -> Path:
        return self.data_dir / "ready.json"

    @property
    def log(self) -> Path:
        return self.data_dir / "up.log"


def _tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _child_command(opts: RegionsOptions, region: Region) -> list[str]:
    assert region.kafka is not None and region.config is not None
    port = opts.port + region.index * opts.admitters if opts.port else 0
    args = [sys.executable, "-m", "tokenpools.cli", "up", "--bootstrap", region.kafka.bootstrap_servers,
            "--config", str(region.config), "--region", region.name, "--data-dir", str(region.data_dir),
            "--ready-file", str(region.ready_file), "--port", str(port), "--admitters", str(opts.admitters),
            "--speedup", f"{opts.speedup:g}", "--report-every", f"{opts.report_every:g}",
            "--history" if opts.history else "--no-history", "--log-level", opts.log_level]
    if opts.topic_prefix:
        args += ["--topic-prefix", opts.topic_prefix]
    return args + [f"--worker-arg={a}" for a in opts.worker_args]


def _launch_child(region: Region) -> subprocess.Popen[bytes]:
    from tokenpools.infra.kafka_local.process import die_with_parent_hook

    with contextlib.suppress(FileNotFoundError):
        region.ready_file.unlink()  # a reader waits for this run's file, not the last run's
    in_main = threading.current_thread() is threading.main_thread()
    with region.log.open("ab") as out:
        # A session of its own: Ctrl-C reaches this process only (which stops the regions in order), and a
        # region can be killed whole (its process group). SIGTERM if this process dies: it stops cleanly.
        return subprocess.Popen(region.command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent_hook() if in_main else None)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_child(region: Region) -> None:
    """SIGTERM the region's up (it stops its own parts), SIGKILL its group if it hangs; then anything it
    started that is still there (it was killed before it could stop them)."""
    proc = region.proc
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(CHILD_STOP_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    ready = region.ready or {}
    for part in ("pipeline", "regional", "history"):
        pid = (ready.get(part) or {}).get("pid")
        if isinstance(pid, int) and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)


def mirror_topics(topic_prefix: str) -> str:
    """The Java regex of what MirrorMaker copies: each region's own summaries topic (matched whole)."""
    from schemas.topics import Topics

    return re.escape(Topics(topic_prefix).region_summaries)


def _region_ready(region: Region) -> dict[str, Any]:
    assert region.kafka is not None and region.config is not None
    child = dict(region.ready or {})
    mirror = region.mirror
    return {
        "bootstrap": region.kafka.bootstrap_servers, "kafka_data_dir": str(region.kafka.data_dir),
        "kafka_pid": region.kafka.pid(), "config_dir": str(region.config.parent), "data_dir": str(region.data_dir),
        "command": region.command, "log": str(region.log), "ready_file": str(region.ready_file),
        "pid": region.proc.pid if region.proc is not None else None,
        "admitters": child.get("admitters", []), "replicas": child.get("replicas", {}),
        "admin_token": child.get("admin_token"), "pipeline": child.get("pipeline"),
        "regional": child.get("regional"), "history": child.get("history"),
        "mirror": None if mirror is None else {
            "pid": mirror.pid(), "data_dir": str(mirror.data_dir), "log": str(mirror.log_path),
            "clusters": mirror.clusters, "topics": mirror.topics, "targets": mirror.targets,
            "sources": [s for s, _ in mirror.flows]},
    }


def main(opts: RegionsOptions) -> int:
    """Runs until a signal or ``--duration``; the exit code."""
    if not 1 <= opts.count <= len(REGION_NAMES):
        typer.echo(f"error: --regions {opts.count}: this machine runs 1 to {len(REGION_NAMES)} regions "
                   f"({', '.join(REGION_NAMES)})", err=True)
        return 2
    if opts.port and opts.port + opts.count * opts.admitters - 1 > 65535:
        typer.echo(f"error: --port {opts.port} leaves no room for {opts.count} x {opts.admitters} admitters", err=True)
        return 2
    for path in opts.config:
        if not path.exists():
            typer.echo(f"error: no such config file or folder: {path} (give --config)", err=True)
            return 2
    from schemas.loader import ConfigError

    names = list(REGION_NAMES[:opts.count])
    regions = [Region(name, i, opts.data_dir / name) for i, name in enumerate(names)]
    docs = _documents(opts.config)
    if not any(d.get("kind") == "TokenPool" for d in docs):
        typer.echo("error: the config has no TokenPool: nothing to serve", err=True)
        return 2
    try:
        for region in regions:
            region.config = write_region_config(docs, region.name, names, region.data_dir / "config")
    except ConfigError as exc:
        typer.echo(f"invalid config for region {region.name}:\n{exc}", err=True)
        return 2

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    deadline = None if opts.duration is None else time.monotonic() + opts.duration
    try:
        return _run(opts, regions, names, stop, deadline)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped(stop: threading.Event, deadline: float | None) -> bool:
    if deadline is not None and time.monotonic() >= deadline:
        stop.set()
    return stop.is_set()


def _run(opts: RegionsOptions, regions: list[Region], names: list[str], stop: threading.Event,
         deadline: float | None) -> int:
    from tokenpools.infra.kafka_local import LocalKafka

    code = 0
    mirrors: list[Any] = []
    try:
        # Brokers in this thread: each is tied to it (PR_SET_PDEATHSIG), so none outlives a killed `up`.
        for region in regions:
            region.kafka = LocalKafka(region.data_dir / "kafka")
            region.kafka.start()
            _echo("kafka", f"region {region.name}: {region.kafka.bootstrap_servers} (data {region.kafka.data_dir})")
            if _stopped(stop, deadline):
                return 0
        for region in regions:
            region.command = _child_command(opts, region)
            region.proc = _launch_child(region)
            _echo("region", f"{region.name}: up pid {region.proc.pid}, config {region.config} (log {region.log})")
        if len(regions) > 1:
            from tokenpools.infra.mirror_local import MirrorMaker

            clusters = {r.name: r.kafka.bootstrap_servers for r in regions}
            topics = mirror_topics(opts.topic_prefix)
            for region in regions:  # while the regions start: MirrorMaker needs only the brokers
                region.mirror = MirrorMaker(opts.data_dir / "mirror" / region.name, clusters, topics,
                                            targets=[region.name])
                mirrors.append(region.mirror)
                region.mirror.start()
                _echo("mirror", f"into {region.name}: MirrorMaker 2 pid {region.mirror.pid()} from "
                                f"{', '.join(n for n in names if n != region.name)}, topics {topics!r} "
                                f"(data {region.mirror.data_dir}, log {region.mirror.log_path})")
                if _stopped(stop, deadline):
                    return 0
        started = time.monotonic()
        while not all(r.ready is not None for r in regions):
            for region in regions:
                if region.ready is not None:
                    continue
                assert region.proc is not None
                if region.proc.poll() is not None:
                    typer.echo(f"error: region {region.name}'s up exited with code {region.proc.returncode} "
                               f"while starting (log {region.log}):\n{_tail(region.log)}", err=True)
                    return 1
                if region.ready_file.exists():
                    region.ready = json.loads(region.ready_file.read_text())
                    _describe(region)
            if time.monotonic() - started > CHILD_START_S:
                late = ", ".join(r.name for r in regions if r.ready is None)
                typer.echo(f"error: region(s) {late} not ready within {CHILD_START_S:g} s", err=True)
                return 1
            if stop.wait(0.2) or _stopped(stop, deadline):
                return 0
        if opts.ready_file is not None:
            _write_json(opts.ready_file, {
                "regions": {r.name: _region_ready(r) for r in regions}, "order": names,
                "topic_prefix": opts.topic_prefix, "pid": os.getpid()})
        typer.echo(f"ready: {len(regions)} region(s); Ctrl-C stops everything"
                   + (f" (or {opts.duration:g} s after start)" if opts.duration is not None else ""))
        while not (stop.wait(1.0) or _stopped(stop, deadline)):
            for region in regions:
                if region.proc is not None and region.proc.poll() is not None and not region.reported_exit:
                    region.reported_exit = True
                    typer.echo(f"warning: region {region.name}'s up exited with code {region.proc.returncode} "
                               f"(log {region.log}); the other regions go on", err=True)
        typer.echo("stopping")
    except Exception as exc:
        typer.echo(f"error: {exc}", err=True)
        code = 1
    finally:
        for region in regions:  # all at once: each stops its parts, then waits for them
            if region.proc is not None and region.proc.poll() is None:
                region.proc.send_signal(signal.SIGTERM)
        for region in regions:
            _stop_child(region)
        for mirror in mirrors:
            with contextlib.suppress(Exception):
                mirror.stop()
        for region in regions:
            if region.kafka is not None:
                with contextlib.suppress(Exception):
                    region.kafka.stop()
        typer.echo("stopped")
    return code


def _describe(region: Region) -> None:
    ready = region.ready or {}
    pipeline = ready.get("pipeline") or {}
    regional = ready.get("regional") or {}
    replicas = sum(len(u) for u in (ready.get("replicas") or {}).values())
    _echo("region", f"{region.name} ready: admitters {' '.join(ready.get('admitters', []))}; pipeline pid "
                    f"{pipeline.get('pid')}, global loop pid {regional.get('pid')} (metrics "
                    f"{regional.get('metrics_url')}); {replicas} emulator replicas")
