"""The global loop service's Kafka side: one region's ``RegionalLoop`` per GlobalEntitlement, on real topics.

What it reads, each topic by a ``CompactedReader`` of its own (one waits for its topics to exist, and a
peer's mirrored topic appears only when MirrorMaker first copies to it; topics are looked for every
``topic_poll_s`` and a reader starts once its topic exists, without holding up the others):

- the region's config topic (``schemas.config_view.ConfigView``): GlobalEntitlements, pools, the
  regional shares written before;
- its entitlement-state topic: the latest ``EntitlementState`` per entitlement (the regional share has the
  global entitlement's name), whose ``demand`` and ``usage`` the region reports;
- its own ``region-summaries`` and every peer's mirrored ``<peer>.region-summaries`` (the peers named by
  the GlobalEntitlements that list this region). Every record is decoded with ``schemas.wire.decode``;
  a bad one, or one whose key, id or region does not fit its topic, is counted (``BadRecords``) and skipped.

Every tick (an eighth of the shortest epoch, at least ``min_tick_s``), per GlobalEntitlement listing the
region: feed the reports read into its loop (the verdicts are counted: a report replayed by MirrorMaker
has the id of one already applied and is a ``duplicate``, never applied twice); make the region's report
of the current epoch once per epoch (demand and usage of the regional share, capacity of the region's
one pool of the model at ``replicas.max`` minus its other guarantees, the shares enforced) and publish it
with an idempotent, acks=all producer; step the loop; and when the regional Entitlement the config holds
differs from the one for the loop's shares, write it (``config_key``/``config_value``). Nothing is written
while the shares and the global entitlement are unchanged. A written value overlays the config view
until the reader has read past it, so a write is never repeated while it travels.

**Start and restart.** Nothing is reported, stepped or written before the config and own-summaries
readers (and the entitlement-state reader, if that topic exists) have caught up. A loop then starts at
the shares of the regional share already in the config (a restart neither drops to zero nor jumps up)
and learns its own latest epoch from its own topic, so a restart within an epoch does not report twice.
The first tick writes the regional share if the config does not hold it (zeros for a new region), so the
admitters know the global entitlement's API keys and the pipeline measures its demand from the first
request. Reports this process published are skipped when read back (they were applied as made).

**Removal.** A regional share of this region whose GlobalEntitlement was deleted, or no longer lists the
region, is tombstoned (also one left over while the service was down).

**Failures.** A tick that raises is logged and the next one runs; a produce that fails is retried at the
next tick (reports: at the next epoch), the failure logged once until writes work again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer

from capacity.global_loop import Enforced, RegionalLoop, Report
from capacity.regions import NOTHING
from schemas.config_view import ConfigView
from schemas.loader import PlatformConfig
from schemas.records import EntitlementState, RegionReport
from schemas.regions import GlobalEntitlement
from schemas.specs import Entitlement, Manifest, Triple
from schemas.topics import Topics, config_key, config_value
from schemas.wire import BadRecords, decode, encode
from streams.regional.metrics import RegionalMetrics
from streams.regional.rules import (
    Shown,
    capacity_for,
    check_report,
    desired_share,
    needs_write,
    peers_of,
    placement,
    record_of,
    relevant,
    report_of,
    shown_status,
    stale_shares,
    starting_shares,
    terms_of,
    tick_seconds,
    within_terms,
)
from streams.regional.settings import RegionalSettings
from streams.topics import create_topics
from tokenpools.kafka.connection import bootstrap_of, connection
from tokenpools.kafka.progress import Backoff, Partition
from tokenpools.kafka.reader import CompactedReader, Handler, describe

log = logging.getLogger("tokenpools.regional")
class MetricsUnavailable(Exception):
    """``--metrics-port`` could not be served (taken, or the host cannot be bound)."""


INBOX_MAX = 64  # reports kept per entitlement until its loop takes them (the loop keeps 8 epochs per region)


def _fmt(t: Triple) -> str:
    return "/".join(f"{x:g}" for x in t)


def _entitlement_key(name: str) -> str:
    return f"Entitlement/{name}"


class RegionalService:
    """One region's global loops (see the module doc). ``run(stop)`` until ``stop`` is set."""

    def __init__(self, settings: RegionalSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.region: str = settings.region
        self.topics: Topics = settings.topics
        self.kafka = settings.kafka
        self.clock = clock
        self.bad = BadRecords()
        self.view = ConfigView(self.bad, self.topics.config, self.topics.replicas)
        self.metrics = RegionalMetrics(self.bad)
        self.states: dict[str, EntitlementState] = {}
        self.loops: dict[str, RegionalLoop] = {}
        self.enforced: dict[str, Enforced] = {}
        self.started_from: dict[str, tuple[Triple, Triple]] = {}  # (burst, guarantee) each loop started at
        self.readers: dict[str, CompactedReader] = {}
        self.ready = asyncio.Event()
        self._inbox: dict[str, deque[Report]] = {}
        self._produced: dict[str, int] = {}  # ids of reports published here -> epoch (skipped when read back)
        self._pending: dict[str, tuple[Partition, int, Manifest | None]] = {}
        self._problems: dict[str, str] = {}
        self._shown: dict[str, tuple[Shown, tuple[str, ...]]] = {}
        self._state_topic_absent = False  # the entitlement-state topic did not exist when looked for
        self._looked = False
        self._producer: Any = None
        self._failing = False

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Prepare (topics, producer), then follow and tick until ``stop`` is set."""
        try:
            if not await self._prepare(stop):
                return
            tasks = [asyncio.create_task(self._watch_topics(), name="regional-topics"),
                     asyncio.create_task(self._tick_loop(), name="regional-ticks")]
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in [waiter, *tasks]:
                task.cancel()
            for task in [waiter, *tasks]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for task in done:
                if task is not waiter and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            await self.close()

    async def close(self) -> None:
        for reader in list(self.readers.values()):
            await reader.stop()
        self.readers.clear()
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await producer.stop()

    async def _prepare(self, stop: asyncio.Event) -> bool:
        """Create the topics this service writes (if allowed) and start the producer, retrying until Kafka
        answers; False if ``stop`` came first."""
        backoff = Backoff(initial=0.5, cap=5.0)
        own = [s for s in self.topics.specs() if s.name in (self.topics.config, self.topics.region_summaries)]
        while not stop.is_set():
            try:
                if self.settings.create_topics:
                    created = await create_topics(self.kafka, own, self.settings.replication)
                    if created:
                        log.info("created %s", ", ".join(created))
                producer = AIOKafkaProducer(**connection(self.kafka), acks="all", enable_idempotence=True,
                                            client_id=f"tokenpools-regional-{self.region}")
                try:
                    await producer.start()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    raise
                self._producer = producer
                return True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next()
                log.warning("Kafka at %s not usable yet (%r); retrying in %.1f s", bootstrap_of(self.kafka), exc,
                            delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
        return False

    # -- readers -------------------------------------------------------------------------------

    def wanted_topics(self) -> dict[str, str | None]:
        """The topics to read: config, entitlement state, own summaries, and every peer's mirrored ones (each
        summaries topic with the one region it may carry)."""
        t = self.topics
        peers = peers_of(relevant(self.view.platform.global_entitlements, self.region).values(), self.region)
        return {t.config: None, t.entitlement_state: None, t.region_summaries: self.region,
                **{t.mirrored_region_summaries(p): p for p in peers}}

    async def _watch_topics(self) -> None:
        while True:
            await self.start_readers()
            poll = self.settings.topic_poll_s
            await asyncio.sleep(poll if self.ready.is_set() else min(0.5, poll))

    async def start_readers(self) -> None:
        """Start a reader for every wanted topic that exists and has none yet."""
        wanted = self.wanted_topics()
        missing = [t for t in wanted if t not in self.readers]
        if not missing:
            return
        try:
            parts = await describe(self.kafka, missing, f"tokenpools-regional-{self.region}-metadata")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("looking for %s failed: %r", ", ".join(missing), exc)
            return
        for topic in missing:
            if topic in parts:
                self._start_reader(topic, wanted[topic])
        if self.topics.entitlement_state in missing:
            self._state_topic_absent = self.topics.entitlement_state not in parts
        self._looked = True

    def _start_reader(self, topic: str, region: str | None) -> None:
        t = self.topics
        handler: Handler
        if topic == t.config:
            handler = self.view.apply_config
        elif topic == t.entitlement_state:
            handler = self._on_state
        else:
            assert region is not None
            handler = self._on_report(topic, region)
        reader = CompactedReader(self.kafka, {topic: handler}, bad=self.bad,
                                 client_id=f"tokenpools-regional-{self.region}-{topic}"[:200],
                                 name=f"reader of {topic}",
                                 keeps="keeping the current shares", retry_backoff=0.5, fetch_max_wait_ms=100,
                                 logger=log)
        self.readers[topic] = reader
        asyncio.get_running_loop().create_task(reader.start())
        if topic not in (t.config, t.entitlement_state, t.region_summaries):
            log.info("reading %s", topic)

    def _on_state(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            if key is not None:
                self.states.pop(key.decode("utf-8", "replace"), None)
            return
        state = decode(EntitlementState, value, self.topics.entitlement_state, self.bad)
        if state is None:
            return
        seen = self.states.get(state.id)
        if seen is None or state.ts >= seen.ts:
            self.states[state.id] = state

    def _on_report(self, topic: str, region: str) -> Handler:
        own = topic == self.topics.region_summaries

        def handle(key: bytes | None, value: bytes | None) -> None:
            record = decode(RegionReport, value, topic, self.bad)
            if record is None:
                return
            why = check_report(record, key, region)
            if why is not None:
                self.bad.note(topic, why, f"key {key!r} holds report {record.id!r}")
                return
            if own and self._produced.pop(record.id, None) is not None:
                return  # published by this process: applied when it was made
            box = self._inbox.setdefault(record.entitlement, deque(maxlen=INBOX_MAX))
            box.append(report_of(record))

        return handle

    def caught_up(self) -> bool:
        """The config and own-summaries readers caught up, and the entitlement-state one (if its topic exists)."""
        t = self.topics
        for topic in (t.config, t.region_summaries):
            reader = self.readers.get(topic)
            if reader is None or not reader.caught_up.is_set():
                return False
        state = self.readers.get(t.entitlement_state)
        if state is None:
            return self._looked and self._state_topic_absent
        return state.caught_up.is_set()

    # -- ticks ---------------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while not self.caught_up():  # noqa: ASYNC110 - readers start as their topics appear: nothing to wait on yet
            await asyncio.sleep(0.05)
        globs = relevant(self.view.platform.global_entitlements, self.region)
        log.info("region %s: config and own summaries read; %d global entitlement(s) list this region%s",
                 self.region, len(globs), f": {', '.join(globs)}" if globs else "")
        self.ready.set()
        while True:
            try:
                await self.tick(self.clock())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("regional tick failed; the shares stay as they are and the next tick retries")
            globs = relevant(self.view.platform.global_entitlements, self.region)
            await asyncio.sleep(tick_seconds(globs.values(), self.settings.min_tick_s))

    async def tick(self, now: float) -> None:
        """One pass over the global entitlements listing this region (see the module doc)."""
        self._prune_pending()
        platform = self.view.platform
        wanted = relevant(platform.global_entitlements, self.region)
        for name in [n for n in self.loops if n not in wanted]:
            self._end(name)
        for name in [n for n in self._inbox if n not in wanted and n not in platform.global_entitlements]:
            if name not in self.loops and len(self._inbox[name]) == 0:
                del self._inbox[name]
        await self._tombstone_stale(platform)
        reports: list[tuple[str, RegionReport]] = []
        writes: list[tuple[str, Entitlement]] = []
        for name, glob in wanted.items():
            pool, problem = placement(platform, glob, self.region)
            if pool is None:
                self._problem(name, problem or "no pool")
                continue
            if self._problems.pop(name, None) is not None:
                log.info("global entitlement %s: region %s now has pool %s for it", name, self.region, pool.name)
            loop = self._loop(name, glob, now)
            self._feed(name, loop)
            state = self.states.get(name)
            demand = state.demand.as_tuple() if state is not None else NOTHING
            usage = state.usage.as_tuple() if state is not None else NOTHING
            capacity = capacity_for(pool, platform.entitlements.values(), name)
            report = loop.own_report(now, demand, capacity, usage)
            if report is not None:
                self.metrics.verdict(name, self.region, "applied")
                reports.append((name, record_of(name, report)))
            enforced = loop.step(now)
            self._show(name, loop, enforced)
            desired = desired_share(glob, pool, self.region, loop.burst, loop.guarantee)
            if needs_write(desired, self.held(config_key(desired))):
                writes.append((name, desired))
        await self._publish(reports)
        for name, desired in writes:
            first = self.held(config_key(desired)) is None
            if await self._write(name, config_key(desired), desired) and first:
                log.info("global entitlement %s: regional share on pool %s written (burst %s, guarantee %s)",
                         name, desired.spec.pool, _fmt(desired.spec.burst.as_tuple()),
                         _fmt(desired.spec.guarantee.as_tuple()))

    def _loop(self, name: str, glob: GlobalEntitlement, now: float) -> RegionalLoop:
        terms = terms_of(glob)
        loop = self.loops.get(name)
        if loop is not None and loop.terms == terms:
            return loop
        if loop is None:
            burst, guarantee = starting_shares(self.held(_entitlement_key(name)), glob, self.region)
            new = RegionalLoop(self.region, terms, started=now, burst=burst, guarantee=guarantee)
            self.started_from[name] = (burst, guarantee)
            log.info("global entitlement %s: loop of region %s started over %s (epoch %g s, lost after %g s), "
                     "from burst %s, guarantee %s", name, self.region, ", ".join(terms.regions), terms.epoch_s,
                     terms.lost_after_s, _fmt(burst), _fmt(guarantee))
        else:  # the global entitlement changed: keep what is enforced (within the new figures) and the reports
            burst, guarantee = within_terms(loop.burst, loop.guarantee, terms)
            new = RegionalLoop(self.region, terms, started=loop.started, burst=burst, guarantee=guarantee,
                               reports={r: dict(v) for r, v in loop.reports.items() if r in terms.regions},
                               heartbeats={r: h for r, h in loop.heartbeats.items() if r in terms.regions},
                               counts=dict(loop.counts))
            log.info("global entitlement %s changed; its loop goes on over %s", name, ", ".join(terms.regions))
        self.loops[name] = new
        return new

    def _feed(self, name: str, loop: RegionalLoop) -> None:
        box = self._inbox.get(name)
        while box:
            report = box.popleft()
            self.metrics.verdict(name, report.region, loop.observe(report))

    def _show(self, name: str, loop: RegionalLoop, enforced: Enforced) -> None:
        self.enforced[name] = enforced
        shown = shown_status(enforced, loop.own_epoch())
        self.metrics.enforced(name, enforced, shown)
        before = self._shown.get(name)
        self._shown[name] = (shown, enforced.lost)
        if before is None or before[0] != shown:
            if shown == "split":
                log.info("global entitlement %s: region %s follows the split (epoch %s): burst %s, guarantee %s",
                         name, self.region, enforced.epoch, _fmt(enforced.burst), _fmt(enforced.guarantee))
            elif shown == "holding":
                log.info("global entitlement %s: region %s holds burst %s, guarantee %s until the reports of %s "
                         "arrive", name, self.region, _fmt(enforced.burst), _fmt(enforced.guarantee),
                         ", ".join(enforced.waiting_for) or "its peers")
        if (before is None and enforced.lost) or (before is not None and before[1] != enforced.lost):
            if enforced.lost:
                log.info("global entitlement %s: %s taken for lost (no report for over %g s); splitting over the "
                         "others", name, ", ".join(enforced.lost), loop.terms.lost_after_s)
            else:
                log.info("global entitlement %s: no region lost any more", name)

    def _end(self, name: str) -> None:
        del self.loops[name]
        self.enforced.pop(name, None)
        self._shown.pop(name, None)
        self._inbox.pop(name, None)
        self.metrics.forget(name)
        log.info("global entitlement %s: deleted or no longer lists region %s; its loop ended", name, self.region)

    def _problem(self, name: str, problem: str) -> None:
        if self._problems.get(name) != problem:
            log.warning("global entitlement %s skipped in region %s: %s", name, self.region, problem)
        self._problems[name] = problem

    # -- writes --------------------------------------------------------------------------------

    def held(self, key: str) -> Manifest | None:
        """The config topic's document under ``key``, or the one written here and not read back yet."""
        pending = self._pending.get(key)
        if pending is not None:
            return pending[2]
        return self.view.docs.get(key)

    def _prune_pending(self) -> None:
        reader = self.readers.get(self.topics.config)
        if reader is None:
            return
        for key in [k for k, (tp, offset, _) in self._pending.items() if reader.position(tp) > offset]:
            del self._pending[key]

    async def _tombstone_stale(self, platform: PlatformConfig) -> None:
        for name in stale_shares(platform, self.region):
            key = _entitlement_key(name)
            if key in self._pending and self._pending[key][2] is None:
                continue
            if await self._write(name, key, None):
                log.info("global entitlement %s: deleted or no longer lists region %s; its regional share is "
                         "removed", name, self.region)

    async def _write(self, name: str, key: str, manifest: Manifest | None) -> bool:
        value = None if manifest is None else config_value(manifest)
        try:
            async with asyncio.timeout(self.settings.write_timeout_s):
                meta = await self._producer.send_and_wait(self.topics.config, value, key=key.encode())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(f"writing {key} to {self.topics.config}", exc)
            return False
        self._worked()
        self._pending[key] = (Partition(meta.topic, meta.partition), meta.offset, manifest)
        self.metrics.wrote(name)
        return True

    async def _publish(self, reports: list[tuple[str, RegionReport]]) -> None:
        if not reports:
            return
        topic = self.topics.region_summaries
        for _, record in reports:
            self._produced[record.id] = record.epoch
        try:
            async with asyncio.timeout(self.settings.write_timeout_s):
                futures = [await self._producer.send(topic, encode(record),
                                                     key=RegionReport.key_of(name, self.region).encode())
                           for name, record in reports]
                await asyncio.gather(*futures)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(f"publishing {len(reports)} report(s) to {topic}", exc)
        else:
            self._worked()
        if len(self._produced) > INBOX_MAX * max(1, len(self.loops)):  # reports never read back (a failed send)
            newest = max(self._produced.values())
            self._produced = {i: e for i, e in self._produced.items() if e >= newest - 8}

    def _failed(self, what: str, exc: BaseException) -> None:
        if not self._failing:
            log.warning("%s failed (%r); keeping the current shares and retrying", what, exc)
        self._failing = True

    def _worked(self) -> None:
        if self._failing:
            log.info("writes to Kafka at %s work again", bootstrap_of(self.kafka))
        self._failing = False


async def serve_regional(settings: RegionalSettings, stop: asyncio.Event | None = None) -> None:
    """Run the service until ``stop`` is set or SIGINT/SIGTERM, serving /metrics on ``metrics_port``."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    service = RegionalService(settings)
    server = None
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        try:
            server, _ = start_http_server(settings.metrics_port, addr=settings.metrics_host,
                                          registry=service.metrics.registry)
        except OSError as exc:
            raise MetricsUnavailable(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: "
                                     f"{exc.strerror or exc}") from None
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    log.info("global loop of region %s on Kafka at %s (topic prefix %r)", settings.region,
             bootstrap_of(settings.kafka), settings.kafka.prefix)
    runner = asyncio.create_task(service.run(stop))
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([runner, waiter], return_when=asyncio.FIRST_COMPLETED)
        log.info("stopping")
        stop.set()
        await runner
    finally:
        waiter.cancel()
        if server is not None:
            server.shutdown()
        log.info("stopped")


def run_regional(settings: RegionalSettings) -> None:
    """Blocks until SIGINT/SIGTERM."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve_regional(settings))
