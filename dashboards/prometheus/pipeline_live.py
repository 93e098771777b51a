"""The pipeline now: events/s, consumer lag, ticks, event-to-limit lag, bad records, and the history sink.

The workers export ``tokenpools_streams_*`` (``streams/metrics.py``), the history process
``tokenpools_history_*`` (``streams/history/metrics.py``). The event-to-limit lag is shown in its legs
(docs/pipeline.md#observability): an event's delay to stage 1, the age of the newest summary a tick used,
and, beside them, the limit staleness the admitters report, which is the whole trip seen from the edge.
"""

from __future__ import annotations

from dashboards.spec import Dashboard, Panel, Row, Source, Target, Variable, Viz

_R = "$__rate_interval"
_INSTANCE = 'instance=~"$instance"'
_POOL = 'pool=~"$pool", instance=~"$instance"'
_S = "tokenpools_streams_"
_H = "tokenpools_history_"


def _rate(metric: str, selector: str = _INSTANCE) -> str:
    return f"rate({metric}{{{selector}}}[{_R}])" if selector else f"rate({metric}[{_R}])"


def _quantile(q: float, histogram: str, selector: str = _INSTANCE, by: str = "le") -> str:
    return f"histogram_quantile({q}, sum by ({by}) ({_rate(histogram + '_bucket', selector)}))"


STAGE1 = Row("Stage 1: events", (
    Panel(
        title="Consumer lag",
        answers="How many records on the requests partitions has stage 1 not been delivered yet, per worker?",
        viz=Viz.TIMESERIES, unit="short",
        targets=(Target(f"sum by (instance) ({_S}consumer_lag_records{{{_INSTANCE}}})", "A", "{{instance}}"),),
    ),
    Panel(
        title="Event delay to stage 1",
        answers="How old is the newest new event of a batch when stage 1 applies it (p50, p99): the first leg "
                "of the event-to-limit lag?",
        viz=Viz.TIMESERIES, unit="s",
        targets=(
            Target(_quantile(0.5, _S + "event_delay_seconds"), "A", "p50"),
            Target(_quantile(0.99, _S + "event_delay_seconds"), "B", "p99"),
        ),
    ),
    Panel(
        title="Events by dedup verdict",
        answers="How many request events per second reach the pipeline, and how many of them are new, replays "
                "or duplicates?",
        viz=Viz.TIMESERIES, unit="ops", stack=True,
        targets=(Target(f"sum by (verdict) ({_rate(_S + 'events_total')})", "A", "{{verdict}}"),),
    ),
    Panel(
        title="Bad records",
        answers="Which records does the pipeline skip as undecodable or senseless, per second, by topic and reason?",
        viz=Viz.TIMESERIES, unit="ops",
        targets=(Target(f"sum by (topic, reason) ({_rate(_S + 'bad_records_total')})", "A",
                        "{{topic}}: {{reason}}"),),
    ),
    Panel(
        title="Late events and gap records",
        answers="How many events per second fall outside every window, and how many records did Faust skip that "
                "the worker read back from Kafka?",
        viz=Viz.TIMESERIES, unit="ops",
        targets=(
            Target(f"sum({_rate(_S + 'late_events_total')})", "A", "late events"),
            Target(f"sum({_rate(_S + 'gap_records_total')})", "B", "gap records"),
        ),
    ),
    Panel(
        title="Batch time",
        answers="How long does stage 1 take to process one batch of events (p50, p99)?",
        viz=Viz.TIMESERIES, unit="s",
        targets=(
            Target(_quantile(0.5, _S + "batch_seconds"), "A", "p50"),
            Target(_quantile(0.99, _S + "batch_seconds"), "B", "p99"),
        ),
    ),
    Panel(
        title="Dedup memory",
        answers="How many event ids does each worker remember for deduplication, and did any leave before the "
                "horizon because the memory was full?",
        viz=Viz.TIMESERIES, unit="short",
        targets=(
            Target(f"sum by (instance) ({_S}dedup_ids{{{_INSTANCE}}})", "A", "ids {{instance}}"),
            Target(f"sum by (instance) ({_S}dedup_evicted_early{{{_INSTANCE}}})", "B", "evicted early {{instance}}"),
        ),
    ),
    Panel(
        title="Window summaries",
        answers="Do the window summaries stage 2 receives keep up with those stage 1 sends, per second?",
        viz=Viz.TIMESERIES, unit="ops",
        targets=(
            Target(f"sum({_rate(_S + 'summaries_sent_total')})", "A", "sent"),
            Target(f"sum({_rate(_S + 'summaries_received_total')})", "B", "received"),
        ),
    ),
))

STAGE2 = Row("Stage 2: ticks and limits", (
    Panel(
        title="Tick rate",
        answers="How many allocator ticks per second does stage 2 run for each pool?",
        viz=Viz.TIMESERIES, unit="ops",
        targets=(Target(f"sum by (pool) ({_rate(_S + 'ticks_total', _POOL)})", "A", "{{pool}}"),),
    ),
    Panel(
        title="Tick time",
        answers="How long does one pool tick (allocate, split, publish) take at p99, per pool?",
        viz=Viz.TIMESERIES, unit="s",
        targets=(Target(_quantile(0.99, _S + "tick_seconds", _POOL, "le, pool"), "A", "p99 {{pool}}"),),
    ),
    Panel(
        title="Rejected ticks",
        answers="Which pools had ticks rejected for non-finite inputs or results (their limits frozen), per second?",
        viz=Viz.TIMESERIES, unit="ops",
        targets=(Target(f"sum by (pool, reason) ({_rate(_S + 'rejected_ticks_total', _POOL)})", "A",
                        "{{pool}}: {{reason}}"),),
    ),
    Panel(
        title="Summary age at publication",
        answers="How old was the newest usage summary a tick used when its limits were published (p99, per "
                "pool): the second leg of the event-to-limit lag?",
        viz=Viz.TIMESERIES, unit="s",
        targets=(Target(_quantile(0.99, _S + "summary_age_seconds", _POOL, "le, pool"), "A", "p99 {{pool}}"),),
    ),
    Panel(
        title="Limit staleness at the admitters",
        answers="How long since the admitters last applied a new state of each pool: the whole event-to-limit "
                "trip as the edge sees it, on the worst admitter?",
        viz=Viz.TIMESERIES, unit="s",
        targets=(Target('max by (pool) (tokenpools_admitter_state_staleness_seconds{pool=~"$pool"})', "A",
                        "{{pool}}"),),
    ),
    Panel(
        title="State records published",
        answers="How many state records per second does stage 2 publish, by kind?",
        viz=Viz.TIMESERIES, unit="ops",
        targets=(Target(f"sum by (kind) ({_rate(_S + 'states_published_total')})", "A", "{{kind}}"),),
    ),
    Panel(
        title="Owned pools and config",
        answers="How many pools do the workers run the allocator for, and has every worker read its config (1)?",
        viz=Viz.TIMESERIES, unit="short",
        targets=(
            Target(f"sum({_S}owned_pools{{{_INSTANCE}}})", "A", "owned pools"),
            Target(f"min({_S}config_ready{{{_INSTANCE}}})", "B", "config ready (all)"),
        ),
    ),
))

HISTORY = Row("History sink (ClickHouse)", (
    Panel(
        title="History sink lag",
        answers="How many records behind the log end is the history sink, per topic?",
        viz=Viz.TIMESERIES, unit="short",
        targets=(Target(f"sum by (topic) ({_H}sink_lag_records)", "A", "{{topic}}"),),
    ),
    Panel(
        title="History rows inserted",
        answers="How many rows per second does the history sink insert into ClickHouse, by table?",
        viz=Viz.TIMESERIES, unit="rowsps", stack=True,
        targets=(Target(f"sum by (table) ({_rate(_H + 'sink_rows_total', '')})", "A", "{{table}}"),),
    ),
    Panel(
        title="History insert time",
        answers="How long does one flush (decode and insert) take (p50, p99)?",
        viz=Viz.TIMESERIES, unit="s",
        targets=(
            Target(_quantile(0.5, _H + "sink_insert_seconds", ""), "A", "p50"),
            Target(_quantile(0.99, _H + "sink_insert_seconds", ""), "B", "p99"),
        ),
    ),
    Panel(
        title="History failures and dead letters",
        answers="Are flushes failing and retried, offset commits failing, or records going to dead_letters, per "
                "second?",
        viz=Viz.TIMESERIES, unit="ops",
        targets=(
            Target(f"sum({_rate(_H + 'sink_insert_failures_total', '')})", "A", "insert failures"),
            Target(f"sum({_rate(_H + 'sink_commit_failures_total', '')})", "B", "commit failures"),
            Target(f"sum by (reason) ({_rate(_H + 'sink_dead_letters_total', '')})", "C", "dead letters: {{reason}}"),
        ),
    ),
    Panel(
        title="History sink connected",
        answers="Does every history sink reach Kafka (1), or is at least one cut off (0)?",
        viz=Viz.TIMESERIES, unit="bool", width=24, height=6,
        targets=(Target(f"min({_H}sink_kafka_connected)", "A", "all connected"),),
    ),
))

DASHBOARD = Dashboard(
    uid="tokenpools-pipeline",
    title="Token pools: pipeline (live)",
    description="The pipeline now: events/s, consumer lag, ticks, event-to-limit lag, bad records, and the history "
                "sink.",
    source=Source.PROMETHEUS,
    rows=(STAGE1, STAGE2, HISTORY),
    variables=(
        Variable("pool", "Pool", f"label_values({_S}ticks_total, pool)", include_all=True),
        # Every worker exports dedup_ids from its start. The history process is one per deployment, so its
        # panels are not filtered by worker.
        Variable("instance", "Worker", f"label_values({_S}dedup_ids, instance)", include_all=True),
    ),
    time_from="now-1h",
    refresh="30s",
    links=("tokenpools-admitters", "tokenpools-pools"),
)
