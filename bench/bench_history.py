"""History in ClickHouse (issue 13): sink throughput, analyst query latency on 10M events, bytes per event.

Three measurements, each side by side in one run (the machine is shared and noisy: compare the
ratios, not the absolute figures across runs):

1. **Sink throughput into chDB, events/s per process.** A local Kafka (``bench.kafka_parts.kafka``),
   the topics created as the pipeline creates them, N request events (decision and finish pairs,
   packed per entitlement into batch records of about 60 events, as admitters' ``KafkaSink`` sends
   them, 1,500-event sender passes over 20 entitlements) published *before* the sink starts. Then,
   on the same records in the same run:

   - **consume only**: a plain aiokafka consumer with the sink's fetch settings, no decode, no insert;
   - **decode only**: ``streams.history.decode.BlockDecoder`` on those records in memory, in the blocks
     the sink would cut (split, on the first 100,000 events, into the wire decode with validation,
     ``schemas.wire.decode_request_events``, and the row building, ``streams.history.rows.request_block``);
   - **insert only**: the decoded blocks inserted with ``HistoryStore.insert`` (tokens, both rollup
     MVs) into a fresh database;
   - **sink**: ``HistorySink`` in this process into a fresh chDB database, timed from ``run()`` until
     ``request_events`` holds N rows.

   Each stage reports wall seconds and this process's CPU seconds; ratios sink / stage show the
   bottleneck, and the sink's time to its first block (consumer group join) is reported apart. Below
   the aim (100,000 events/s), ``HistorySink.flush`` (plan, decode, insert: what the sink's worker
   thread runs while its loop waits) runs under cProfile on the first 100,000 events, into another
   database, and the top costs are printed; that pass is not timed.
2. **Each analyst question on 10M events.** ``request_events`` is filled inside ClickHouse
   (``INSERT ... SELECT ... FROM numbers()``, in chunks, so the materialized views fill the rollups
   as the sink's inserts do): 30 days with a daily cycle, 20 entitlements of 16 tenants on 2 pools
   and 3 tiers, refusals by tier and dimension, queueing, TTFT/TPOT by tier and prompt length. The
   state tables get a version per entitlement every 30 s and per pool every 10 s (one allocator tick),
   the specs a version per entitlement and a mid-month SLO change. After ``OPTIMIZE FINAL`` (30 days
   of history would have been merged by background merges), each question runs once to warm up and
   then ``--runs`` times, its rollup form and its raw twin (``questions/raw``) alternately; the
   median of each and their ratio are printed. Questions without a twin (state tables, the raw-only
   SLO and "why refused") get their median alone.
3. **Bytes on disk per event**: active parts of ``system.parts``, before and after ``OPTIMIZE FINAL``.

Writes ``summary.json``, ``table.md`` and ``history_bench.png`` to ``--out`` (default
``results/history-bench``). Run: ``python -m bench history [--events N] [--query-events M] [--quick]``
or ``python -m bench.bench_history ...``; ``KAFKA_BOOTSTRAP_SERVERS`` to use a running broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import logging
import os
import pstats
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from admitter.kafka.sink import pack_events
from bench.kafka_parts import kafka
from schemas.records import Amounts, Outcome, Phase, RequestEvent
from schemas.specs import Tier
from schemas.topics import Topics
from schemas.wire import BadRecords, decode_request_events
from streams.history import rows
from streams.history.catalog import Question, parse, questions
from streams.history.decode import BlockDecoder, no_cyclic_gc
from streams.history.migrate import migrate
from streams.history.rows import Located
from streams.history.settings import HistorySettings, StoreSettings
from streams.history.sink import Block, BlockRange, HistorySink
from streams.history.store import HistoryStore, open_store
from streams.topics import create_topics

REPO = Path(__file__).resolve().parents[1]
RAW_DIR = REPO / "streams" / "history" / "questions" / "raw"
AIM_EVENTS_PER_S = 100_000
AIM_RATIO = 10.0
AIM_ROLLUP_MS = 100.0
DAY_MS = 86_400_000
HOUR_MS = 3_600_000

# The synthetic deployment (both parts): 20 entitlements of 16 tenants on 2 pools, 3 tiers.
TENANTS = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka", "tyrell", "cyberdyne",
           "soylent", "aperture", "massive", "oscorp", "gringotts", "vandelay")
N_ENTS = 20
POOLS = ("llama-70b", "mixtral-8x7b")
MODELS = ("meta-llama/Llama-3.1-70B-Instruct", "mistralai/Mixtral-8x7B-Instruct-v0.1")
POOL_WEIGHTS = ((0.5, 3.0), (0.3, 1.5))  # per pool: weighted tokens per prompt token, per output token
PRICES = {"guaranteed": (3.0, 9.0), "elastic": (1.5, 4.5), "spot": (0.4, 1.2)}  # per 1,000 prompt / output tokens


def ent_name(i: int) -> str:
    return f"e{i:02d}"


def ent_tier(i: int) -> str:
    return "guaranteed" if i < 5 else "elastic" if i < 13 else "spot"


def ent_tenant(i: int) -> str:
    return TENANTS[i % len(TENANTS)]


def code_version() -> str:
    """HEAD, and whether the sink's code differs from it (others may be changing it while benches run)."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "streams/history", "schemas", "streams/history/questions")
    return f"HEAD {head}" + (f", uncommitted changes in {len(dirty.splitlines())} history/schema files" if dirty
                             else ", history and schema code as committed")


def load_avg() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (5 min {five:.1f}) on {os.cpu_count()} cores"


def say(text: str) -> None:
    print(text, flush=True)


# == 1. sink throughput ===========================================================================

Record = tuple[bytes, bytes, int]  # key, value, events in it


def make_traffic(n: int, t0: float, span_s: float, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """n events as (key, value) records: decision and finish of each request, refusals (decision only) by tier,
    over span_s. Built as ``RequestEvent`` models (so they are valid) and encoded at once, as admitters do."""
    import random

    rng = random.Random(seed)
    out: list[tuple[bytes, bytes]] = []

    def add(ev: RequestEvent) -> None:
        out.append((ev.entitlement.encode(), orjson.dumps(ev.model_dump(mode="json"))))

    k = 0
    while len(out) < n:
        i = min(int(N_ENTS * rng.random() ** 2), N_ENTS - 1)  # skewed: a few big entitlements
        tier, pool_i = ent_tier(i), i % 2
        w_in, w_out = POOL_WEIGHTS[pool_i]
        ts = t0 + span_s * k / (n / 2)
        prompt = 20 + int(rng.expovariate(1 / 600))
        max_tokens = rng.choice((256, 512, 1024, 2048))
        reserved = Amounts(throughput=w_in * prompt + w_out * max_tokens, kv=float(prompt + max_tokens), concurrency=1)
        common: dict[str, Any] = dict(
            request_id=uuid.UUID(int=rng.getrandbits(128)).hex, admitter_id=f"adm-{pool_i}-{k % 3}",
            region="us-east-1", tenant=ent_tenant(i), entitlement=ent_name(i), pool=POOLS[pool_i], tier=Tier(tier),
            model=MODELS[pool_i], max_tokens=max_tokens, reserved=reserved, prompt_tokens=prompt)
        k += 1
        refuse_p = {"guaranteed": 0.01, "elastic": 0.06, "spot": 0.15}[tier]
        if rng.random() < refuse_p:
            dim = rng.choices(("throughput", "kv", "concurrency"), (0.55, 0.30, 0.15))[0]
            add(RequestEvent(phase=Phase.DECISION, outcome=Outcome.REFUSED, ts=ts, refused_dimension=dim,
                                    retry_after_s=round(0.5 + 4 * rng.random(), 2), status_code=429, **common))
            continue
        wait = round(rng.expovariate(1 / 0.6), 3) if rng.random() < 0.1 else 0.0
        add(RequestEvent(phase=Phase.DECISION, outcome=Outcome.QUEUED_ADMITTED if wait else Outcome.ADMITTED,
                                ts=ts + wait, queue_wait_s=wait, **common))
        f = {"guaranteed": 1.0, "elastic": 1.5, "spot": 2.5}[tier]
        output = min(max_tokens, 1 + int(rng.expovariate(1 / 250)))
        ttft = round(wait + f * (0.05 + prompt * 0.00012) + rng.expovariate(1 / (0.05 * f)), 4)
        latency = round(ttft + (0.012 + 0.03 * rng.random()) * (output - 1), 4)
        add(RequestEvent(phase=Phase.FINISH, outcome=Outcome.COMPLETED, ts=ts + latency, queue_wait_s=wait,
                                output_tokens=output, ttft_s=ttft, latency_s=latency, status_code=200,
                                replica=f"http://{POOLS[pool_i]}-{k % 6}:8000",
                                charged=Amounts(throughput=w_in * prompt + w_out * output, kv=reserved.kv,
                                                concurrency=1), **common))
    return out[:n]


def batched_records(encoded: Sequence[tuple[bytes, bytes]], pass_events: int = 1500,
                    per_record: int = 100) -> list[Record]:
    """What admitters' KafkaSink sends: each sender pass's events packed per entitlement (~60 per record here)."""
    out: list[Record] = []
    for i in range(0, len(encoded), pass_events):
        out.extend(pack_events(encoded[i:i + pass_events], per_record, 512 * 1024))
    return out


async def publish(bootstrap: str, topic: str, records: Sequence[Record]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1024 * 1024,
                                max_request_size=4 * 1024 * 1024, acks="all")
    await producer.start()
    started = time.perf_counter()
    try:
        for key, value, _ in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    return time.perf_counter() - started


Consumed = list[ConsumerRecord[bytes, bytes]]


async def consume_only(bootstrap: str, topic: str, expect: int) -> tuple[float, float, Consumed]:
    """Wall and CPU seconds to read ``expect`` records with the sink's fetch settings (no group, decode, insert)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                isolation_level="read_committed", fetch_max_wait_ms=200,
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or await _partitions(consumer, topic))
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        got: Consumed = []
        started, cpu = time.perf_counter(), time.process_time()
        while len(got) < expect:
            for batch in (await consumer.getmany(timeout_ms=500, max_records=20_000)).values():
                got.extend(batch)
            if time.perf_counter() - started > 300:
                raise RuntimeError(f"consumed {len(got)} of {expect} records in 300 s")
        return time.perf_counter() - started, time.process_time() - cpu, got
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(50):
        await consumer._client.force_metadata_update()  # aiokafka has no public metadata refresh
        found = consumer.partitions_for_topic(topic)
        if found:
            return set(found)
        await asyncio.sleep(0.1)
    raise RuntimeError(f"no partitions for {topic}")


def sink_blocks(records: Sequence[ConsumerRecord[bytes, bytes]], block_records: int) -> list[list[Any]]:
    """The records per partition in blocks of at most ``block_records``, as the sink cuts them."""
    by_partition: dict[int, list[Any]] = defaultdict(list)
    for r in records:
        by_partition[r.partition].append(r)
    return [part[i:i + block_records] for part in by_partition.values() for i in range(0, len(part), block_records)]


def first_events(blocks: Sequence[Sequence[Any]], limit: int) -> list[Sequence[Any]]:
    """Whole blocks from the start until about ``limit`` events (for the split and the profile)."""
    out, events = [], 0
    for block in blocks:
        if events >= limit:
            break
        out.append(block)
        events += sum(_events_in(r.value) for r in block)
    return out


def _events_in(value: bytes) -> int:
    return value.count(b'"request_id"') or 1


@dataclass
class Stage:
    """One stage on the same records: wall seconds and this process's CPU seconds (all threads)."""

    events: int
    seconds: float
    cpu_s: float

    @property
    def per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    @property
    def per_cpu_s(self) -> float:
        return self.events / self.cpu_s if self.cpu_s > 0 else float("inf")


@contextlib.contextmanager
def clock(out: list[float]) -> Iterator[None]:
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    out[:] = [time.perf_counter() - wall, time.process_time() - cpu]


def decode_only(topics: Topics, blocks: Sequence[Sequence[Any]]) -> tuple[Stage, list[dict[str, list[Any]]]]:
    """``BlockDecoder.decode`` per block, as the sink's flush calls it; the request_events blocks."""
    decoder = BlockDecoder(topics)
    now_ms = int(time.time() * 1000)
    out: list[dict[str, list[Any]]] = []
    events = 0
    t: list[float] = []
    with clock(t):
        for block in blocks:
            decoded = decoder.decode(topics.requests, block, now_ms)
            if decoded.dead:
                raise RuntimeError(f"bench traffic dead-lettered: {decoded.dead['reason'][:3]}")
            events += decoded.events
            out.append(decoded.tables["request_events"])
            # Kept for the insert stage, so out of the collector's sight: the sink does not hold
            # earlier blocks, and scanning them on every collection would slow this stage alone.
            gc.freeze()
    gc.unfreeze()
    return Stage(events, *t), out


def decode_split(topics: Topics, blocks: Sequence[Sequence[Any]]) -> tuple[Stage, Stage]:
    """The decoder's two parts on the same blocks: wire decode with validation, then row building.

    Each block's work runs with the cyclic collector paused, as ``BlockDecoder.decode`` runs a block.
    """
    bad = BadRecords()
    parsed = []
    t: list[float] = []
    with clock(t):
        for block in blocks:
            evs = []
            with no_cyclic_gc():
                for r in block:
                    where = Located(topics.requests, r.partition, r.offset, r.timestamp)
                    evs.extend((ev, where) for ev in decode_request_events(r.value, topics.requests, bad)[0])
            parsed.append(evs)
            gc.freeze()  # kept for the next part: out of the collector's sight, as in decode_only
    gc.unfreeze()
    events = sum(len(evs) for evs in parsed)
    wire = Stage(events, *t)
    with clock(t):
        for evs in parsed:
            with no_cyclic_gc():
                rows.request_block(evs)
    return wire, Stage(events, *t)


def insert_only(store: HistoryStore, blocks: Sequence[dict[str, list[Any]]]) -> Stage:
    t: list[float] = []
    with clock(t):
        for i, block in enumerate(blocks):
            store.insert("request_events", block, token=f"bench/insert-only/{i}")
    return Stage(sum(len(b["event_id"]) for b in blocks), *t)


def fresh_store(data_dir: Path, database: str) -> tuple[HistoryStore, StoreSettings]:
    settings = StoreSettings(data_dir=data_dir, database=database)
    store = open_store(settings)
    migrate(store, settings)
    return store, settings


@dataclass
class SinkRun:
    total: Stage  # from run() until request_events holds N rows
    first_block_s: float  # from run() until the first block was inserted (group join, assignment, first fetch)
    flush_s: float  # time inside HistorySink.flush (decode + insert, in its worker thread)
    flushes: int

    @property
    def after_first(self) -> float:
        """Events/s from the first inserted block to the last (the steady rate, start-up left out)."""
        span = self.total.seconds - self.first_block_s
        return self.total.events / span if span > 0 else float("inf")


async def run_sink(store: HistoryStore, settings: HistorySettings, n: int, within: float = 900.0) -> SinkRun:
    sink = HistorySink(store, settings)
    flush, spent = sink.flush, [0.0, 0]

    def timed_flush(blocks: Any) -> None:
        started = time.perf_counter()
        try:
            flush(blocks)
        finally:
            spent[0] += time.perf_counter() - started
            spent[1] += 1

    sink.flush = timed_flush  # type: ignore[method-assign]
    cpu0, started = time.process_time(), time.perf_counter()
    first = None
    task = asyncio.create_task(sink.run())
    shown = started
    try:
        while sink.inserted_events < n:
            if task.done():
                task.result()
                raise RuntimeError("the sink stopped")
            now = time.perf_counter()
            if first is None and sink.inserted_events:
                first = now - started
            if now - started > within:
                raise RuntimeError(f"the sink inserted {sink.inserted_events} of {n} events in {within:.0f} s")
            if now - shown >= 5.0:
                shown = now
                say(f"    sink: {sink.inserted_events:>9,} / {n:,} events, {now - started:5.1f} s")
            await asyncio.sleep(0.02)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    count = int(store.scalar("SELECT count() FROM request_events"))
    if count != n:
        raise RuntimeError(f"request_events holds {count} rows, expected {n}")
    return SinkRun(Stage(n, elapsed, cpu), first if first is not None else elapsed, spent[0], int(spent[1]))


def sink_settings(bootstrap: str, prefix: str, store: StoreSettings, group: str) -> HistorySettings:
    return HistorySettings(kafka={"bootstrap": bootstrap, "prefix": prefix}, store=store, sink={"group_id": group})


def profile_flush(store: HistoryStore, settings: HistorySettings, topics: Topics,
                  blocks: Sequence[Sequence[Any]]) -> tuple[Stage, cProfile.Profile]:
    """``HistorySink.flush`` (plan, decode, insert: what its worker thread runs) on these blocks, under cProfile."""
    sink = HistorySink(store, settings)
    todo = [Block(BlockRange(topics.requests, b[0].partition, b[0].offset, b[-1].offset), list(b)) for b in blocks]
    profile = cProfile.Profile()
    t: list[float] = []
    with clock(t):
        profile.enable()
        try:
            sink.flush(todo)
        finally:
            profile.disable()
    return Stage(sink.inserted_events, *t), profile


def top_costs(profile: cProfile.Profile, limit: int) -> tuple[str, list[dict[str, Any]]]:
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text)
    stats.strip_dirs().sort_stats("tottime").print_stats(limit)
    table = [line for line in text.getvalue().splitlines() if line.strip()]
    start = next((i for i, line in enumerate(table) if line.lstrip().startswith("ncalls")), 0)
    total = stats.total_tt  # type: ignore[attr-defined]
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    entries = [{"function": f"{file}:{line}({name})", "calls": ncalls, "tottime_s": tt, "cumtime_s": ct,
                "share_of_own_time": tt / total if total else 0.0}
               for (file, line, name), (_, ncalls, tt, ct, _) in sorted(raw.items(), key=lambda kv: -kv[1][2])[:limit]]
    return "\n".join([f"total {total:.2f} s of own time", *table[start:]]), entries


def cumulative(profile: cProfile.Profile, wanted: dict[str, tuple[str, str]]) -> dict[str, float]:
    """Cumulative seconds of chosen functions ({label: (file suffix, function name)})."""
    stats = pstats.Stats(profile)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    out = {}
    for label, (suffix, name) in wanted.items():
        out[label] = sum(v[3] for (file, _, fn), v in raw.items() if file.endswith(suffix) and fn == name)
    return out


_METHOD = "<method '{}' of 'pydantic_core._pydantic_core.SchemaValidator' objects>"
PROFILE_PARTS = {  # label: (file suffix, function name); parts that did not run are left out of the report
    "HistorySink.flush": ("history/sink.py", "flush"),
    "BlockDecoder.decode": ("history/decode.py", "decode"),
    "  wire.decode_request_events": ("schemas/wire.py", "decode_request_events"),
    "    pydantic validate_json (a record at once)": ("~", _METHOD.format("validate_json")),
    "    pydantic validate_python (per event)": ("~", _METHOD.format("validate_python")),
    "    orjson.loads": ("~", "<orjson.loads>"),
    "  rows.request_block": ("history/rows.py", "request_block"),
    "HistoryStore.insert": ("history/store.py", "insert"),
    "  clickhouse_connect: LowCardinality dictionaries": ("datatypes/base.py", "_build_lc_dictionary"),
    "  chdb query (ClickHouse insert + MVs)": ("~", "<built-in method chdb._chdb.query>"),
}


@dataclass
class SinkFigures:
    events: int
    records: int
    partitions: int
    generate_s: float
    publish_s: float
    consume: Stage
    decode: Stage
    wire: Stage  # on the first SPLIT_EVENTS events
    rows: Stage
    insert: Stage
    sink: SinkRun
    profile: dict[str, Any] = field(default_factory=dict)


SPLIT_EVENTS = 100_000  # events the decode split and the profile run on (rates do not depend on it)


def measure_sink(n: int, data_dir: Path, profile: str) -> SinkFigures:
    partitions = 6
    say(f"[sink] generating {n:,} events (decision + finish pairs, refusals decision-only) ...")
    started = time.perf_counter()
    events = make_traffic(n, time.time() - 3 * 3600, 3600.0)
    records = batched_records(events)
    del events
    generate_s = time.perf_counter() - started
    say(f"  {len(records):,} batch records, {n / len(records):.1f} events per record, "
        f"{sum(len(v) for _, v, _ in records) / n:.0f} bytes per event ({generate_s:.1f} s)")
    with kafka() as bootstrap:
        prefix = f"benchhist{uuid.uuid4().hex[:6]}."
        topics = Topics(prefix)
        asyncio.run(create_topics(bootstrap, topics.specs(partitions=partitions)))
        publish_s = asyncio.run(publish(bootstrap, topics.requests, records))
        say(f"  published to {topics.requests} ({partitions} partitions) in {publish_s:.1f} s, before any consumer "
            f"starts; {load_avg()}")
        say("  the same records, stage by stage (wall s; CPU-s of this process, all threads):")
        wall, cpu, consumed = asyncio.run(consume_only(bootstrap, topics.requests, len(records)))
        consume = Stage(n, wall, cpu)
        say(f"    consume only: {len(consumed):,} records, {consume.seconds:.2f} s = {consume.per_s:,.0f} events/s")
        blocks = sink_blocks(consumed, HistorySettings().sink.block_records)
        del consumed
        decode, decoded = decode_only(topics, blocks)
        if decode.events != n:
            raise RuntimeError(f"decoded {decode.events} events, published {n}")
        say(f"    decode only: {decode.seconds:.2f} s = {decode.per_s:,.0f} events/s")
        sample = first_events(blocks, SPLIT_EVENTS)
        wire, built = decode_split(topics, sample)
        say(f"      split on {wire.events:,} events: wire decode + validation {wire.per_s:,.0f} events/s, "
            f"row building {built.per_s:,.0f} events/s")
        store, _ = fresh_store(data_dir, "bench_insert_only")
        insert = insert_only(store, decoded)
        del decoded
        say(f"    insert only: {insert.seconds:.2f} s = {insert.per_s:,.0f} events/s (request_events and its 2 MVs)")
        store, store_settings = fresh_store(data_dir, "bench_sink")
        say(f"    sink: HistorySink in this process (default sink settings) from run() until request_events holds "
            f"{n:,} rows ...")
        sink = asyncio.run(run_sink(store, sink_settings(bootstrap, prefix, store_settings, "bench-sink"), n))
        say(f"    sink: {sink.total.seconds:.2f} s = {sink.total.per_s:,.0f} events/s; {load_avg()}")
    figures = SinkFigures(n, len(records), partitions, generate_s, publish_s, consume, decode, wire, built, insert,
                          sink)
    if profile == "always" or (profile == "auto" and sink.total.per_s < AIM_EVENTS_PER_S):
        say(f"  profiling HistorySink.flush on the first {wire.events:,} events (cProfile; not timed) ...")
        store, store_settings = fresh_store(data_dir, "bench_sink_profile")
        settings = sink_settings("127.0.0.1:9", prefix, store_settings, "bench-profile")
        stage, prof = profile_flush(store, settings, topics, sample)
        text, top = top_costs(prof, 16)
        parts = cumulative(prof, PROFILE_PARTS)
        figures.profile = {"events": stage.events, "seconds_under_profile": stage.seconds, "top_by_own_time": top,
                           "cumulative_s": parts, "text": text}
    return figures


def report_sink(f: SinkFigures) -> list[str]:
    s = f.sink
    stages = [("consume only (aiokafka, no decode)", f.consume), ("decode only (BlockDecoder.decode)", f.decode),
              (f"  wire decode + validation (first {f.wire.events:,})", f.wire),
              (f"  row building (first {f.rows.events:,})", f.rows),
              ("insert only (HistoryStore.insert + MVs)", f.insert), ("sink (HistorySink, from run())", s.total)]
    lines = [f"Sink throughput: {f.events:,} events in {f.records:,} batch records "
             f"({f.events / f.records:.0f} events/record) on {f.partitions} partitions, one process, chDB; "
             "published before the sink starts",
             f"{'stage, same records, one run':<44} {'wall s':>7} {'events/s':>10} {'sink/stage':>10} "
             f"{'CPU-s':>6} {'events/CPU-s':>12}"]
    for name, st in stages:
        lines.append(f"{name:<44} {st.seconds:>7.2f} {st.per_s:>10,.0f} {s.total.per_s / st.per_s:>10.2f} "
                     f"{st.cpu_s:>6.1f} {st.per_cpu_s:>12,.0f}")
    serial = f.consume.seconds + f.decode.seconds + f.insert.seconds
    lines += [
        f"sink: first block inserted {s.first_block_s:.1f} s after run() (group join, assignment, first fetch); "
        f"{s.after_first:,.0f} events/s from then on",
        f"sink: {s.flush_s:.1f} s of its {s.total.seconds:.1f} s inside flush (decode + insert, {s.flushes} flushes, "
        f"the loop awaits each); consume + decode + insert one after another: {f.events / serial:,.0f} events/s",
        f"sink: {s.total.per_s:,.0f} events/s per process (aim >= {AIM_EVENTS_PER_S:,}: "
        f"{'met' if s.total.per_s >= AIM_EVENTS_PER_S else 'NOT met'}); {s.total.per_cpu_s:,.0f} events per CPU-second",
    ]
    return lines


# == 2. analyst questions on 10M events ===========================================================

def _array(values: Sequence[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def request_events_sql(first: int, count: int, total: int, base_ms: int, days: int) -> str:
    """INSERT ... SELECT rows ``first .. first+count-1`` of ``total`` synthetic events over ``days`` days.

    Row n belongs to request k = n / 2: row 2k is its decision, row 2k+1 its finish, or (when the
    decision was refused) the decision of the client's retry, admitted, whose finish is not in the data.
    Arrivals follow a daily cycle (4x between trough and peak) by warping time; every per-request draw
    is a hash of k, so a request's two rows agree.
    """
    ents = _array([ent_name(i) for i in range(N_ENTS)])
    tenants = _array([ent_tenant(i) for i in range(N_ENTS)])
    pairs, span_ms = total // 2, days * DAY_MS
    u = "(cityHash64(k, {j}) % 1000003) / 1000003"
    draws = ",\n        ".join(f"{u.format(j=j)} AS u{j}" for j in range(1, 11))
    return f"""
INSERT INTO request_events
SELECT event_id, request_id, ts, region, pool, entitlement, tenant, tier, admitter, model, phase, outcome,
       refused_dimension, status_code, prompt_tokens, max_tokens, output_tokens, reserved_throughput, reserved_kv,
       reserved_concurrency, charged_throughput, kv_seconds, seq_seconds, queue_wait_s, ttft_s, tpot_s, latency_s,
       retry_after_s, replica, preempted_by, kafka_topic, kafka_partition, kafka_offset
FROM
(
    SELECT
        number AS n,
        intDiv(number, 2) AS k,
        number % 2 AS second,
        {draws},
        k / {pairs} AS x,
        {base_ms} + toInt64({span_ms} * (x - 0.6 * sin(2 * pi() * {days} * x) / (2 * pi() * {days}))) AS arrival_ms,
        toUInt8(least(floor({N_ENTS} * u1 * u1), {N_ENTS - 1})) AS ei,
        arrayElement({ents}, ei + 1) AS entitlement,
        arrayElement({tenants}, ei + 1) AS tenant,
        multiIf(ei < 5, 'guaranteed', ei < 13, 'elastic', 'spot') AS tier,
        ei % 2 AS pool_i,
        arrayElement({_array(POOLS)}, pool_i + 1) AS pool,
        arrayElement({_array(MODELS)}, pool_i + 1) AS model,
        'us-east-1' AS region,
        concat('adm-', toString(pool_i), '-', toString(cityHash64(k, 13) % 3)) AS admitter,
        multiIf(tier = 'guaranteed', 0.01, tier = 'elastic', 0.06, 0.15) AS refuse_p,
        u2 < refuse_p AS refused,
        NOT refused AND u2 < refuse_p + 0.10 AS queued,
        second = 0 OR refused AS is_decision,
        second = 1 AND refused AS is_retry,
        lower(hex(MD5(concat('req', toString(k), if(is_retry, '-retry', ''))))) AS request_id,
        lower(hex(MD5(concat('ev', toString(n))))) AS event_id,
        if(is_decision, 'decision', 'finish') AS phase,
        multiIf(u4 < 0.02, 'failed', u4 < 0.05, 'cancelled', tier = 'spot' AND u4 < 0.15, 'preempted',
                'completed') AS finish_outcome,
        multiIf(is_retry, 'admitted', refused, 'refused', NOT is_decision, finish_outcome, queued, 'queued_admitted',
                'admitted') AS outcome,
        if(outcome = 'refused', multiIf(u3 < 0.55, 'throughput', u3 < 0.85, 'kv', 'concurrency'), '')
            AS refused_dimension,
        toUInt32(least(20 + floor(-log(1 - u5) * 600), 32000)) AS prompt_tokens,
        toUInt32(arrayElement([256, 512, 1024, 2048], cityHash64(k, 11) % 4 + 1)) AS max_tokens,
        least(max_tokens, toUInt32(1 + floor(-log(1 - u6) * 250))) AS full_output,
        toUInt32(multiIf(is_decision, 0, finish_outcome = 'failed', 0, finish_outcome = 'completed', full_output,
                         floor(full_output * u7))) AS output_tokens,
        if(queued AND NOT is_retry, round(-log(1 - u8) * 0.6, 3), 0) AS queue_wait_s,
        multiIf(tier = 'guaranteed', 1.0, tier = 'elastic', 1.5, 2.5) AS slow,
        round(queue_wait_s + slow * (0.05 + prompt_tokens * 0.00012) - log(1 - u9) * 0.05 * slow, 4) AS full_ttft,
        round((0.012 + 0.03 * u10) * if(tier = 'spot', 1.4, 1.0), 5) AS per_token,
        if(finish_outcome = 'failed', round(0.05 + 0.4 * u7, 4),
           if(output_tokens > 0, full_ttft, queue_wait_s + 0.05) + per_token * greatest(toInt64(output_tokens) - 1, 0))
            AS full_latency,
        if(is_decision OR output_tokens = 0, NULL, full_ttft) AS ttft_s,
        if(is_decision OR output_tokens < 2, NULL, per_token) AS tpot_s,
        if(is_decision, NULL, full_latency) AS latency_s,
        fromUnixTimestamp64Milli(toInt64(multiIf(is_retry, arrival_ms + 2500, is_decision,
                                                 arrival_ms + queue_wait_s * 1000, arrival_ms + full_latency * 1000)),
                                 'UTC') AS ts,
        if(outcome = 'refused', 429, multiIf(is_decision, 0, finish_outcome = 'failed', 502, 200)) AS status_code,
        arrayElement([{POOL_WEIGHTS[0][0]}, {POOL_WEIGHTS[1][0]}], pool_i + 1) AS w_in,
        arrayElement([{POOL_WEIGHTS[0][1]}, {POOL_WEIGHTS[1][1]}], pool_i + 1) AS w_out,
        w_in * prompt_tokens + w_out * max_tokens AS reserved_throughput,
        toFloat64(prompt_tokens + max_tokens) AS reserved_kv,
        1.0 AS reserved_concurrency,
        multiIf(is_decision, 0, finish_outcome = 'failed', reserved_throughput,
                w_in * prompt_tokens + w_out * output_tokens) AS charged_throughput,
        if(is_decision, 0, reserved_kv * full_latency) AS kv_seconds,
        if(is_decision, 0, full_latency) AS seq_seconds,
        if(outcome = 'refused', round(0.5 + 4 * u3, 2), NULL) AS retry_after_s,
        if(is_decision, '', concat('http://', pool, '-', toString(cityHash64(k, 12) % 6), ':8000')) AS replica,
        if(outcome = 'preempted', lower(hex(MD5(concat('req', toString(k + 1))))), '') AS preempted_by,
        'tokenpools.requests' AS kafka_topic,
        toUInt32(cityHash64(entitlement) % 6) AS kafka_partition,
        intDiv(n, 75) AS kafka_offset
    FROM numbers({first}, {count})
)
"""


def state_sql(base_ms: int, days: int) -> list[tuple[str, str]]:
    """The state tables: a pool tick every 10 s, entitlement versions every 30 s, specs with an SLO change."""
    ticks = days * 8640  # 10 s ticks
    ents = _array([ent_name(i) for i in range(N_ENTS)])
    tenants = _array([ent_tenant(i) for i in range(N_ENTS)])
    tiers = _array([ent_tier(i) for i in range(N_ENTS)])
    guarantee = "toFloat64(if(ei < 5, 1500 + 500 * ei, 0))"  # guaranteed entitlements' throughput guarantees
    cycle = f"sin(2 * pi() * tick / 8640 + {0.7})"  # the daily cycle, in 10 s ticks
    pool_ready = f"toUInt32(greatest(2, round(5 + 3 * {cycle} + (cityHash64(tick, pool_i) % 3) - 1)))"
    return [
        ("pool_state", f"""
INSERT INTO pool_state
SELECT pool, seq, ts, ready_replicas, desired_replicas, capacity_throughput, capacity_kv, capacity_concurrency,
       guarantees_throughput, guarantees_kv, guarantees_concurrency, kafka_partition, kafka_offset
FROM
(
    SELECT number % 2 AS pool_i, intDiv(number, 2) AS tick,
           arrayElement({_array(POOLS)}, pool_i + 1) AS pool, toUInt64(tick) AS seq,
           fromUnixTimestamp64Milli(toInt64({base_ms} + tick * 10000 + 37), 'UTC') AS ts,
           {pool_ready} AS ready_replicas, toNullable(ready_replicas + toUInt32({cycle} > 0.5)) AS desired_replicas,
           ready_replicas * 20000.0 AS capacity_throughput, ready_replicas * 500000.0 AS capacity_kv,
           ready_replicas * 256.0 AS capacity_concurrency,
           if(pool_i = 0, 1500 + 2500 + 3500, 2000 + 3000) * 1.0 AS guarantees_throughput,
           if(pool_i = 0, 60000.0, 40000.0) AS guarantees_kv, if(pool_i = 0, 48.0, 32.0) AS guarantees_concurrency,
           toUInt32(cityHash64(pool) % 6) AS kafka_partition, toUInt64(tick) AS kafka_offset
    FROM numbers({2 * ticks})
)"""),
        ("pool_tier_state", f"""
INSERT INTO pool_tier_state
SELECT pool, seq, ts, tier, demand_throughput, demand_kv, demand_concurrency, usage_throughput, usage_kv,
       usage_concurrency, kafka_partition, kafka_offset
FROM
(
    SELECT number % 3 AS tier_i, intDiv(number, 3) % 2 AS pool_i, intDiv(number, 6) AS tick,
           arrayElement({_array(POOLS)}, pool_i + 1) AS pool, toUInt64(tick) AS seq,
           fromUnixTimestamp64Milli(toInt64({base_ms} + tick * 10000 + 37), 'UTC') AS ts,
           arrayElement(['guaranteed', 'elastic', 'spot'], tier_i + 1) AS tier,
           {pool_ready} * 20000.0 AS capacity,
           capacity * arrayElement([0.3, 0.45, 0.5], tier_i + 1) * (1 + 0.5 * {cycle})
               * (0.9 + 0.2 * (cityHash64(tick, pool_i, tier_i) % 1000) / 1000) AS demand_throughput,
           demand_throughput * 25 AS demand_kv, demand_throughput / 400 AS demand_concurrency,
           multiIf(tier_i = 0, least(demand_throughput, capacity),
                   tier_i = 1, least(demand_throughput, capacity * 0.55),
                   least(demand_throughput, capacity * 0.25)) AS usage_throughput,
           usage_throughput * 25 AS usage_kv, usage_throughput / 400 AS usage_concurrency,
           toUInt32(cityHash64(pool) % 6) AS kafka_partition, toUInt64(tick) AS kafka_offset
    FROM numbers({6 * ticks})
)"""),
        ("entitlement_state", f"""
INSERT INTO entitlement_state
SELECT entitlement, pool, tier, seq, ts, limit_throughput, limit_kv, limit_concurrency, demand_throughput,
       demand_kv, demand_concurrency, usage_throughput, usage_kv, usage_concurrency, debt, effective_weight,
       fair_share, dominant_share, admitters, kafka_partition, kafka_offset
FROM
(
    SELECT number % {N_ENTS} AS ei, intDiv(number, {N_ENTS}) * 3 AS tick, ei % 2 AS pool_i,
           arrayElement({ents}, ei + 1) AS entitlement, arrayElement({_array(POOLS)}, pool_i + 1) AS pool,
           arrayElement({tiers}, ei + 1) AS tier, toUInt64(tick) AS seq,
           fromUnixTimestamp64Milli(toInt64({base_ms} + tick * 10000 + 37), 'UTC') AS ts,
           (800 + 400 * (cityHash64(ei) % 10)) * (1 + 0.6 * {cycle})
               * (0.8 + 0.4 * (cityHash64(tick, ei) % 1000) / 1000) AS demand_throughput,
           greatest({guarantee}, demand_throughput * if(tier = 'spot', 0.7, 0.95)) AS limit_throughput,
           limit_throughput * 30 AS limit_kv, greatest(4.0, limit_throughput / 300) AS limit_concurrency,
           demand_throughput * 25 AS demand_kv, demand_throughput / 350 AS demand_concurrency,
           least(demand_throughput, limit_throughput) AS usage_throughput,
           usage_throughput * 25 AS usage_kv, usage_throughput / 350 AS usage_concurrency,
           greatest(0.0, demand_throughput - limit_throughput) * 30 AS debt,
           if(tier = 'guaranteed', 4.0, if(tier = 'elastic', 2.0, 1.0)) / (1 + debt / 10000) AS effective_weight,
           limit_throughput / ({pool_ready} * 20000.0) AS fair_share,
           usage_throughput / ({pool_ready} * 20000.0) AS dominant_share,
           toUInt32(3) AS admitters, toUInt32(cityHash64(pool) % 6) AS kafka_partition, toUInt64(tick) AS kafka_offset
    FROM numbers({N_ENTS * ticks // 3})
)"""),
        ("entitlement_specs", f"""
INSERT INTO entitlement_specs
SELECT entitlement, ts, deleted, pool, tenant, tier, guarantee_throughput, guarantee_kv, guarantee_concurrency,
       burst_throughput, burst_kv, burst_concurrency, weight, slo_ttft_s, slo_tpot_s, kafka_partition, kafka_offset
FROM
(
    SELECT number % {N_ENTS} AS ei, intDiv(number, {N_ENTS}) AS version,
           arrayElement({ents}, ei + 1) AS entitlement,
           fromUnixTimestamp64Milli(toInt64(if(version = 0, {base_ms} - 7 * {DAY_MS}, {base_ms} + 12 * {DAY_MS}
                                                + ei * 600000)), 'UTC') AS ts,
           toUInt8(0) AS deleted, arrayElement({_array(POOLS)}, ei % 2 + 1) AS pool,
           arrayElement({tenants}, ei + 1) AS tenant, arrayElement({tiers}, ei + 1) AS tier,
           toFloat64({guarantee}) AS guarantee_throughput, guarantee_throughput * 30 AS guarantee_kv,
           if(ei < 5, 8.0, 0.0) AS guarantee_concurrency, 12000.0 AS burst_throughput, 400000.0 AS burst_kv,
           64.0 AS burst_concurrency, if(tier = 'guaranteed', 4.0, if(tier = 'elastic', 2.0, 1.0)) AS weight,
           multiIf(tier = 'guaranteed', toNullable(if(version = 0, 0.8, 0.6)), tier = 'elastic', toNullable(2.0),
                   NULL) AS slo_ttft_s,
           if(tier = 'guaranteed', toNullable(0.04), NULL) AS slo_tpot_s,
           toUInt32(cityHash64(entitlement) % 6) AS kafka_partition, toUInt64(number) AS kafka_offset
    FROM numbers({N_ENTS * 2})
    WHERE version = 0 OR ei % 4 = 0
)"""),
        ("pool_specs", f"""
INSERT INTO pool_specs
SELECT arrayElement({_array(POOLS)}, number + 1), fromUnixTimestamp64Milli(toInt64({base_ms} - 7 * {DAY_MS}), 'UTC'),
       0, arrayElement({_array(MODELS)}, number + 1), 'us-east-1', 20000, 500000, 256,
       arrayElement([{POOL_WEIGHTS[0][0]}, {POOL_WEIGHTS[1][0]}], number + 1),
       arrayElement([{POOL_WEIGHTS[0][1]}, {POOL_WEIGHTS[1][1]}], number + 1), 2, 12, 0, number
FROM numbers(2)"""),
    ]


NO_DEDUP = {"insert_deduplicate": 0}  # synthetic bulk fill: no tokens, no block-hash deduplication


def fill(store: HistoryStore, total: int, days: int, chunk: int) -> tuple[int, dict[str, float]]:
    """Fill request_events (and through the MVs the rollups) and the state tables; the base time and timings."""
    base_ms = (int(time.time() * 1000) // HOUR_MS) * HOUR_MS - days * DAY_MS
    timings: dict[str, float] = {}
    started = time.perf_counter()
    done = 0
    while done < total:
        count = min(chunk, total - done)
        t = time.perf_counter()
        store.writer.command(request_events_sql(done, count, total, base_ms, days), settings=NO_DEDUP)
        done += count
        elapsed = time.perf_counter() - started
        say(f"    request_events: {done:>11,} / {total:,} rows ({100 * done / total:3.0f} %), "
            f"chunk {time.perf_counter() - t:5.1f} s, {done / elapsed:,.0f} rows/s")
    timings["request_events_s"] = time.perf_counter() - started
    for table, sql in state_sql(base_ms, days):
        t = time.perf_counter()
        store.writer.command(sql, settings=NO_DEDUP)
        timings[f"{table}_s"] = time.perf_counter() - t
        say(f"    {table}: {int(store.scalar(f'SELECT count() FROM {table}')):,} rows "
            f"({timings[f'{table}_s']:.1f} s)")
    return base_ms, timings


TABLES = ("request_events", "request_rollup_1m", "request_rollup_1h", "latency_rollup_1h", "tenant_rollup_1m",
          "entitlement_state", "pool_state", "pool_tier_state", "entitlement_specs", "pool_specs")
ROLLUP_TABLES = ("request_rollup_1m", "request_rollup_1h", "latency_rollup_1h", "tenant_rollup_1m")


def parts(store: HistoryStore) -> dict[str, dict[str, int]]:
    """Active parts per table in the store's database: parts, rows, bytes on disk, uncompressed bytes."""
    result = store.query_write_side(
        "SELECT table, count(), sum(rows), sum(bytes_on_disk), sum(data_uncompressed_bytes) FROM system.parts "
        "WHERE database = currentDatabase() AND active GROUP BY table")
    return {str(t): {"parts": int(p), "rows": int(r), "bytes_on_disk": int(b), "uncompressed": int(u)}
            for t, p, r, b, u in result.rows}


def optimize(store: HistoryStore) -> float:
    started = time.perf_counter()
    for table in TABLES:
        t = time.perf_counter()
        store.writer.command(f"OPTIMIZE TABLE {table} FINAL")
        say(f"    OPTIMIZE TABLE {table} FINAL: {time.perf_counter() - t:.1f} s")
    return time.perf_counter() - started


def column_bytes(store: HistoryStore, table: str) -> list[tuple[str, int, int]]:
    """(column, compressed bytes, uncompressed bytes) of a table, largest first."""
    result = store.query_write_side(
        "SELECT name, data_compressed_bytes, data_uncompressed_bytes FROM system.columns "
        "WHERE database = currentDatabase() AND table = {t:String} ORDER BY data_compressed_bytes DESC", {"t": table})
    return [(str(n), int(c), int(u)) for n, c, u in result.rows]


def bytes_report(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], events: int,
                 columns: Sequence[tuple[str, int, int]]) -> list[str]:
    lines = [f"Bytes on disk per raw event ({events:,} events; active parts of system.parts)",
             f"{'table':<20} {'rows':>11} {'parts before/after':>18} {'bytes before':>13} {'bytes after':>12} "
             f"{'B/row after':>11} {'B/event after':>13} {'compression':>11}"]
    for table in TABLES:
        a, b = after.get(table), before.get(table, {"parts": 0, "bytes_on_disk": 0})
        if a is None:
            continue
        per_row = a["bytes_on_disk"] / a["rows"] if a["rows"] else 0.0
        lines.append(f"{table:<20} {a['rows']:>11,} {b['parts']:>8} / {a['parts']:<7} {b['bytes_on_disk']:>13,} "
                     f"{a['bytes_on_disk']:>12,} {per_row:>11.1f} {a['bytes_on_disk'] / events:>13.2f} "
                     f"{a['uncompressed'] / max(a['bytes_on_disk'], 1):>10.1f}x")
    raw = after["request_events"]["bytes_on_disk"]
    rollup_tables = [t for t in ROLLUP_TABLES if t in after]
    rollups = sum(after[t]["bytes_on_disk"] for t in rollup_tables)
    lines.append(f"request_events: {raw / events:.1f} B/event after OPTIMIZE FINAL "
                 f"({before['request_events']['bytes_on_disk'] / events:.1f} before); the {len(rollup_tables)} "
                 "rollups add "
                 f"{rollups / events:.2f} B per raw event ({100 * rollups / raw:.1f} % of the raw table)")
    lines.append("request_events, compressed bytes per event by column (largest first): " + ", ".join(
        f"{name} {c / events:.1f}" for name, c, _ in columns[:8]) + f"; the other {len(columns) - 8} columns "
        f"{sum(c for _, c, _ in columns[8:]) / events:.1f}")
    return lines


def load_twins() -> dict[str, Question]:
    twins = {}
    for path in sorted(RAW_DIR.glob("*.sql")):
        number, _, name = path.stem.partition("_")
        twins[name] = parse(int(number), name, path.read_text())
    return twins


def question_params(store: HistoryStore, base_ms: int, days: int) -> dict[str, Any]:
    start = datetime.fromtimestamp(base_ms / 1000, UTC)
    end = datetime.fromtimestamp((base_ms + days * DAY_MS) / 1000, UTC)
    middle = start + (end - start) / 2
    request_id = store.scalar(
        "SELECT request_id FROM request_events WHERE outcome = 'refused' AND ts >= {t:DateTime64(3)} "
        "ORDER BY ts LIMIT 1", {"t": middle})
    prices = {f"{tier}_{kind}_per_1k": price for tier, pair in PRICES.items()
              for kind, price in zip(("prompt", "output"), pair, strict=True)}
    return {"start": start, "end": end, "bucket_s": 3600, "top": 10, "tenant": "globex", "request_id": request_id,
            **prices}


def sql_of(q: Question) -> str:
    return q.sql.strip().rstrip(";").rstrip()


def timed(store: HistoryStore, q: Question, params: dict[str, Any]) -> tuple[float, int]:
    given = {name: params[name] for name in q.param_names}
    started = time.perf_counter()
    result = store.query(sql_of(q), given or None)
    return (time.perf_counter() - started) * 1000, len(result.rows)


@dataclass
class QuestionFigures:
    name: str
    number: int
    reads: str
    rollup_ms: float  # the question as the catalog has it (rollups where it has a raw twin)
    rows: int
    raw_ms: float | None = None
    raw_rows: int | None = None
    runs_ms: list[float] = field(default_factory=list)
    raw_runs_ms: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return self.raw_ms / self.rollup_ms if self.raw_ms is not None and self.rollup_ms > 0 else None


def reads_of(q: Question) -> str:
    import re

    code = "\n".join(line for line in q.sql.splitlines() if not line.lstrip().startswith("--"))
    return ", ".join(sorted(set(re.findall(r"\b(?:FROM|JOIN)\s+([a-z_0-9]+)", code)) - {"per_minute",
                                                                                     "specs_at_end", "guarantees"}))


def measure_questions(store: HistoryStore, params: dict[str, Any], runs: int) -> list[QuestionFigures]:
    twins = load_twins()
    out = []
    for q in questions().values():
        twin = twins.get(q.name)
        timed(store, q, params)  # warm-up
        if twin is not None:
            timed(store, twin, params)
        ms, raw_ms = [], []
        n_rows = raw_rows = 0
        for _ in range(runs):  # alternately, so a busy neighbour skews both alike
            t, n_rows = timed(store, q, params)
            ms.append(t)
            if twin is not None:
                t, raw_rows = timed(store, twin, params)
                raw_ms.append(t)
        f = QuestionFigures(q.name, q.number, reads_of(q), statistics.median(ms), n_rows, runs_ms=ms)
        if twin is not None:
            f.raw_ms, f.raw_rows, f.raw_runs_ms = statistics.median(raw_ms), raw_rows, raw_ms
            if raw_rows != n_rows:
                raise RuntimeError(f"{q.name}: the rollup answer has {n_rows} rows, its raw twin {raw_rows}")
            say(f"    {q.number:02d} {q.name:<28} rollup {f.rollup_ms:8.1f} ms   raw {f.raw_ms:8.1f} ms   "
                f"{f.ratio:6.1f}x   ({n_rows:,} rows)")
        else:
            say(f"    {q.number:02d} {q.name:<28} {f.rollup_ms:8.1f} ms   ({n_rows:,} rows; reads {f.reads})")
        out.append(f)
    return out


def questions_report(figures: Sequence[QuestionFigures], events: int, runs: int) -> list[str]:
    lines = [f"Analyst questions on {events:,} events: median of {runs} runs after 1 warm-up, rollup form and raw "
             f"twin run alternately; readonly reader (HistoryStore.query), wall time including the driver",
             f"{'#':>2} {'question':<28} {'rollup ms':>9} {'raw ms':>9} {'raw/rollup':>10} {'rows':>7}  reads"]
    for f in figures:
        raw = f"{f.raw_ms:9.1f}" if f.raw_ms is not None else f"{'-':>9}"
        ratio = f"{f.ratio:9.1f}x" if f.ratio is not None else f"{'-':>10}"
        lines.append(f"{f.number:>2} {f.name:<28} {f.rollup_ms:>9.1f} {raw} {ratio} {f.rows:>7,}  {f.reads}")
    twins = [f for f in figures if f.ratio is not None]
    if twins:
        ratios = [f.ratio for f in twins if f.ratio is not None]
        under = sum(f.rollup_ms < AIM_ROLLUP_MS for f in twins)
        lines.append(f"questions with a raw twin: raw/rollup {min(ratios):.1f}x .. {max(ratios):.1f}x "
                     f"(geometric mean {statistics.geometric_mean(ratios):.1f}x); {sum(r >= AIM_RATIO for r in ratios)}"
                     f" of {len(twins)} at >= {AIM_RATIO:.0f}x, {under} of {len(twins)} under {AIM_ROLLUP_MS:.0f} ms "
                     f"from the rollups")
    return lines


# == output ======================================================================================

def write_png(path: Path, figures: Sequence[QuestionFigures], sink: SinkFigures | None, events: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    cols = 2 if sink is not None else 1
    fig, axes = plt.subplots(1, cols, figsize=(15 if sink else 11, 5.6),
                             gridspec_kw={"width_ratios": [3, 1.1]} if sink else None, squeeze=False)
    ax = axes[0][0]
    names = [f"{f.number:02d} {f.name}" for f in figures]
    xs = range(len(figures))
    width = 0.4
    twin = [f.raw_ms is not None for f in figures]
    ax.bar([x - width / 2 if t else x for x, t in zip(xs, twin, strict=True)], [f.rollup_ms for f in figures], width,
           color=["#2b7bba" if t else "#7a7a7a" for t in twin])
    ax.bar([x + width / 2 for x, t in zip(xs, twin, strict=True) if t], [f.raw_ms or 0 for f in figures if f.raw_ms],
           width, color="#e07b39")
    legend = [Patch(color="#2b7bba", label="from the rollups (the catalog's question)"),
              Patch(color="#e07b39", label="its raw twin (request_events)"),
              Patch(color="#7a7a7a", label="no raw twin (state tables, raw-only questions)")]
    for x, f in zip(xs, figures, strict=True):
        if f.ratio is not None:
            ax.annotate(f"{f.ratio:.0f}x", (x + width / 2, f.raw_ms or 1), ha="center", va="bottom", fontsize=8)
    ax.axhline(AIM_ROLLUP_MS, color="#444", linestyle="--", linewidth=0.8)
    ax.text(len(figures) - 0.5, AIM_ROLLUP_MS * 1.08, f"{AIM_ROLLUP_MS:.0f} ms aim", ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("median latency, ms (log)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_title(f"Analyst questions on {events / 1e6:g}M events over 30 days (chDB), median latency", fontsize=10,
                 pad=28)
    ax.legend(handles=legend, fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, frameon=False)
    if sink is not None:
        ax2 = axes[0][1]
        labels = ["consume\nonly", "decode\nonly", "insert\nonly", "sink"]
        values = [st.per_s for st in (sink.consume, sink.decode, sink.insert, sink.sink.total)]
        bars = ax2.bar(labels, values, color=["#9ecae1", "#9ecae1", "#9ecae1", "#2b7bba"])
        for bar, v in zip(bars, values, strict=True):
            ax2.annotate(f"{v / 1000:,.0f}k", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom",
                         fontsize=8)
        ax2.axhline(AIM_EVENTS_PER_S, color="#444", linestyle="--", linewidth=0.8)
        ax2.text(3.4, AIM_EVENTS_PER_S * 1.08, "100k/s aim", ha="right", fontsize=8)
        ax2.set_yscale("log")
        ax2.set_ylabel("events/s, one process (log)")
        ax2.set_title(f"Sink: {sink.events:,} events, same records", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def write_results(out: Path, summary: dict[str, Any], lines: list[str], figures: Sequence[QuestionFigures] | None,
                  sink: SinkFigures | None, events: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(_round(summary), indent=2, default=str) + "\n")
    (out / "table.md").write_text("# History bench (issue 13)\n\n```\n" + "\n".join(lines) + "\n```\n")
    if figures:
        write_png(out / "history_bench.png", figures, sink, events)


# == main ========================================================================================

@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    logging.basicConfig(level=logging.WARNING)
    # aiokafka's start-up noise on fresh topics (leader elections, the group coordinator's first answer) is
    # retried by the clients themselves; the bench checks exact row counts instead.
    names = {"tokenpools": logging.WARNING, "aiokafka": logging.CRITICAL}
    previous = {name: logging.getLogger(name).level for name in names}
    for name, level in names.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench history", description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=None, help="events through the sink (default 300,000)")
    p.add_argument("--query-events", type=int, default=None, help="events for the questions (default 10,000,000)")
    p.add_argument("--days", type=int, default=30, help="days the question events span (default 30)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per question after one warm-up (default 5)")
    p.add_argument("--chunk", type=int, default=1_000_000, help="rows per INSERT ... SELECT of the fill")
    p.add_argument("--quick", action="store_true", help="50,000 sink events, 1,000,000 query events, 3 runs")
    p.add_argument("--skip-sink", action="store_true")
    p.add_argument("--skip-queries", action="store_true")
    p.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                   help="cProfile HistorySink.flush on the first 100,000 events: when the sink is "
                        "below 100,000 events/s (auto), always, or never")
    p.add_argument("--out", type=Path, default=REPO / "results" / "history-bench",
                   help="folder for summary.json, table.md and history_bench.png ('-': write nothing)")
    args = p.parse_args(list(argv))
    args.events = args.events or (50_000 if args.quick else 300_000)
    args.query_events = args.query_events or (1_000_000 if args.quick else 10_000_000)
    args.query_events -= args.query_events % 2
    args.runs = args.runs or (3 if args.quick else 5)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv or [])
    began = time.perf_counter()
    lines: list[str] = []
    summary: dict[str, Any] = {"started": datetime.now(UTC).isoformat(timespec="seconds"),
                               "machine": {"cores": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]},
                               "args": {k: str(v) for k, v in vars(args).items()}}
    summary["code"] = code_version()
    say(f"history bench: {load_avg()}; the machine is shared, so compare ratios measured in this run")
    say(f"code: {summary['code']}")
    lines.append(f"code: {summary['code']}; at start {load_avg()}")
    sink: SinkFigures | None = None
    figures: list[QuestionFigures] | None = None
    with quiet_logs(), tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        data_dir = Path(tmp) / "chdb"
        if not args.skip_sink:
            sink = measure_sink(args.events, data_dir, args.profile)
            lines += [*report_sink(sink), ""]
            stages = {"consume_only": sink.consume, "decode_only": sink.decode, "wire_decode": sink.wire,
                      "row_building": sink.rows, "insert_only": sink.insert, "sink": sink.sink.total}
            summary["sink"] = {
                "events": sink.events, "records": sink.records, "partitions": sink.partitions,
                "publish_s": sink.publish_s,
                "stages": {k: {**asdict(v), "events_per_s": v.per_s, "events_per_cpu_s": v.per_cpu_s,
                               "sink_over_stage": sink.sink.total.per_s / v.per_s} for k, v in stages.items()},
                "sink_first_block_s": sink.sink.first_block_s,
                "sink_events_per_s_after_first_block": sink.sink.after_first,
                "sink_seconds_in_flush": sink.sink.flush_s, "sink_flushes": sink.sink.flushes,
                "aim_events_per_s": AIM_EVENTS_PER_S,
                "profile": {k: v for k, v in sink.profile.items() if k != "text"},
            }
        if not args.skip_queries:
            say(f"[questions] filling {args.query_events:,} request events over {args.days} days inside ClickHouse "
                f"(chunks of {args.chunk:,}; both rollup MVs fire) ...")
            store, _ = fresh_store(data_dir, "bench_questions")
            base_ms, fill_s = fill(store, args.query_events, args.days, args.chunk)
            before = parts(store)
            say("  OPTIMIZE FINAL (30 days of history would have been merged in the background) ...")
            optimize_s = optimize(store)
            after = parts(store)
            columns = column_bytes(store, "request_events")
            params = question_params(store, base_ms, args.days)
            say(f"  questions: {args.days} days from {params['start']:%Y-%m-%d %H:%M} UTC, tenant "
                f"{params['tenant']}, refused request {params['request_id']}; {load_avg()}")
            figures = measure_questions(store, params, args.runs)
            lines += [*questions_report(figures, args.query_events, args.runs), ""]
            lines += bytes_report(before, after, args.query_events, columns)
            summary["questions"] = {
                "events": args.query_events, "days": args.days, "runs": args.runs,
                "params": {k: str(v) for k, v in params.items()},
                "fill_seconds": {**fill_s, "optimize_final": optimize_s},
                "results": [{**asdict(f), "ratio": f.ratio} for f in figures],
                "aims": {"ratio": AIM_RATIO, "rollup_ms": AIM_ROLLUP_MS},
            }
            summary["bytes"] = {"events": args.query_events, "before_optimize": before, "after_optimize": after,
                                "request_events_columns": [{"column": n, "compressed": c, "uncompressed": u}
                                                           for n, c, u in columns],
                                "request_events_bytes_per_event": after["request_events"]["bytes_on_disk"]
                                / args.query_events,
                                "rollups_bytes_per_event": (after["request_rollup_1m"]["bytes_on_disk"]
                                                            + after["request_rollup_1h"]["bytes_on_disk"])
                                / args.query_events}
    summary["seconds_total"] = time.perf_counter() - began
    summary["machine"]["load_average_at_end"] = os.getloadavg()[0]
    say("")
    for line in lines:
        say(line)
    if sink is not None and sink.profile:
        prof = sink.profile
        say(f"\nProfile: HistorySink.flush (plan, decode, insert; what the sink's worker thread runs) on "
            f"{prof['events']:,} events, {prof['seconds_under_profile']:.1f} s under cProfile. Cumulative:")
        flush_s = prof["cumulative_s"]["HistorySink.flush"] or 1.0
        for label, seconds in prof["cumulative_s"].items():
            if seconds <= 0:
                continue
            say(f"  {label:<52} {seconds:6.2f} s  {100 * seconds / flush_s:5.1f} %")
        say("By own time:")
        say(prof["text"])
    if str(args.out) != "-":
        write_results(args.out, summary, lines, figures, sink, args.query_events)
        say(f"\nwrote {args.out}/summary.json, table.md" + (", history_bench.png" if figures else ""))
    say(f"total {summary['seconds_total']:.0f} s; {load_avg()}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
