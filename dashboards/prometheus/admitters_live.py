"""The admitters now: requests by outcome, decision latency, queues, spool, limit staleness, upstream errors,
preemptions.

Every metric is the admitter's own (``admitter/metrics.py``, listed in docs/observability.md). Rates are
summed over the admitters first and only then divided, so a ratio is the fleet's, not a sum of per-admitter
ratios; ages, staleness and 0/1 states are taken with ``max``/``min`` (the worst admitter is what pages).
"""

from __future__ import annotations

from dashboards.spec import Dashboard, Panel, Row, Source, Target, Variable, Viz

# Grafana widens $__rate_interval to at least four scrape intervals, so a rate never spans a single sample.
_R = "$__rate_interval"
_POOL = 'pool=~"$pool", instance=~"$instance"'
_INSTANCE = 'instance=~"$instance"'
_M = "tokenpools_admitter_"


def _rate(metric: str, selector: str = _POOL) -> str:
    return f"rate({_M}{metric}{{{selector}}}[{_R}])"


def _quantile(q: float, histogram: str, by: str = "le") -> str:
    return f"histogram_quantile({q}, sum by ({by}) ({_rate(histogram + '_bucket')}))"


REQUESTS = Row("Requests", (
    Panel(
        title="Admission decisions",
        answers="How many requests per second are admitted, made to wait, and refused (by the dimension that "
                "was short)?",
        viz=Viz.TIMESERIES, unit="reqps",
        targets=(
            Target(f"sum({_rate('admitted_total')})", "A", "admitted"),
            Target(f"sum({_rate('queued_total')})", "B", "queued"),
            Target(f"sum by (dimension) ({_rate('refused_total')})", "C", "refused: {{dimension}}"),
        ),
    ),
    Panel(
        title="Refused share",
        answers="What share of decisions were refusals (429), over all admitters?",
        viz=Viz.TIMESERIES, unit="percentunit",
        targets=(
            Target(f"sum({_rate('refused_total')}) / (sum({_rate('admitted_total')}) + sum({_rate('refused_total')}))",
                   "A", "refused"),
        ),
    ),
    Panel(
        title="Finished requests by outcome",
        answers="How did admitted requests end, per second, by outcome?",
        viz=Viz.TIMESERIES, unit="reqps", stack=True,
        targets=(Target(f"sum by (outcome) ({_rate('finished_total')})", "A", "{{outcome}}"),),
    ),
    Panel(
        title="Preemptions",
        answers="How many running spot requests per second are preempted, per pool?",
        viz=Viz.TIMESERIES, unit="reqps",
        targets=(Target(f"sum by (pool) ({_rate('preempted_total')})", "A", "{{pool}}"),),
    ),
))

LATENCY = Row("Latency and queues", (
    Panel(
        title="Decision latency",
        answers="How much latency does the admitter add before the first byte (p50, p99), streaming or not?",
        viz=Viz.TIMESERIES, unit="s",
        targets=(
            Target(_quantile(0.5, "added_latency_seconds", "le, stream"), "A", "p50 stream={{stream}}"),
            Target(_quantile(0.99, "added_latency_seconds", "le, stream"), "B", "p99 stream={{stream}}"),
        ),
    ),
    Panel(
        title="Queue depth",
        answers="How many requests are waiting for room right now, per pool (all admitters together)?",
        viz=Viz.TIMESERIES, unit="short",
        targets=(Target(f"sum by (pool) ({_M}queue_length{{{_POOL}}})", "A", "{{pool}}"),),
    ),
    Panel(
        title="Queue wait",
        answers="How long did admitted requests wait in the queue (p50, p99), per tier?",
        viz=Viz.TIMESERIES, unit="s",
        targets=(
            Target(_quantile(0.5, "queue_wait_seconds", "le, tier"), "A", "p50 {{tier}}"),
            Target(_quantile(0.99, "queue_wait_seconds", "le, tier"), "B", "p99 {{tier}}"),
        ),
    ),
    Panel(
        title="Upstream errors by kind",
        answers="How often do replica calls fail, per second, by kind of failure?",
        viz=Viz.TIMESERIES, unit="ops", stack=True,
        targets=(Target(f"sum by (kind) ({_rate('upstream_errors_total')})", "A", "{{kind}}"),),
    ),
))

SPOOL = Row("Events to Kafka (spool)", (
    Panel(
        title="Spool backlog (events)",
        answers="How many decision and end events wait in each admitter's spool for Kafka's acknowledgement?",
        viz=Viz.TIMESERIES, unit="short", width=8,
        targets=(Target(f"sum by (instance) ({_M}kafka_spool_backlog_records{{{_INSTANCE}}})", "A",
                        "{{instance}}"),),
    ),
    Panel(
        title="Spool backlog (bytes)",
        answers="How much disk does the unacknowledged spool take on each admitter?",
        viz=Viz.TIMESERIES, unit="bytes", width=8,
        targets=(Target(f"sum by (instance) ({_M}kafka_spool_backlog_bytes{{{_INSTANCE}}})", "A",
                        "{{instance}}"),),
    ),
    Panel(
        title="Oldest unsent event",
        answers="How old is the oldest event not yet acknowledged by Kafka, on the worst admitter?",
        viz=Viz.TIMESERIES, unit="s", width=8,
        targets=(Target(f"max by (instance) ({_M}kafka_spool_oldest_age_seconds{{{_INSTANCE}}})", "A",
                        "{{instance}}"),),
    ),
    Panel(
        title="Events emitted and acknowledged",
        answers="Do acknowledgements by Kafka keep up with the events the admitters emit, and how often do "
                "sends fail?",
        viz=Viz.TIMESERIES, unit="ops",
        targets=(
            Target(f"sum({_rate('kafka_events_emitted_total', _INSTANCE)})", "A", "emitted"),
            Target(f"sum({_rate('kafka_events_sent_total', _INSTANCE)})", "B", "acknowledged"),
            Target(f"sum({_rate('kafka_send_errors_total', _INSTANCE)})", "C", "send errors"),
        ),
    ),
    Panel(
        title="Producer connected",
        answers="Is every admitter's Kafka producer acknowledged (1), or is at least one failing (0)?",
        viz=Viz.TIMESERIES, unit="bool",
        targets=(Target(f"min({_M}kafka_producer_connected{{{_INSTANCE}}})", "A", "all connected"),),
    ),
))

LIMITS = Row("Limits from the pipeline", (
    Panel(
        title="Limit staleness",
        answers="How long since each pool's admitters applied a new state from the pipeline (the event-to-limit "
                "lag as the edge sees it), on the worst admitter?",
        viz=Viz.TIMESERIES, unit="s",
        targets=(Target(f"max by (pool) ({_M}state_staleness_seconds{{{_POOL}}})", "A", "{{pool}}"),),
    ),
    Panel(
        title="State link",
        answers="Is every admitter reading the state topics (connected) and caught up with them (1), or not (0)?",
        viz=Viz.TIMESERIES, unit="bool",
        targets=(
            Target(f"min({_M}state_connected{{{_INSTANCE}}})", "A", "connected"),
            Target(f"min({_M}state_caught_up{{{_INSTANCE}}})", "B", "caught up"),
        ),
    ),
    Panel(
        title="Bad state and config records",
        answers="Are admitters skipping state or config records they cannot read (version skew), per second?",
        viz=Viz.TIMESERIES, unit="ops",
        targets=(
            Target(f"sum by (reason) ({_rate('state_bad_records_total', _INSTANCE)})", "A", "state: {{reason}}"),
            Target(f"sum by (reason) ({_rate('config_bad_records_total', _INSTANCE)})", "B", "config: {{reason}}"),
        ),
    ),
    Panel(
        title="Shares the record does not name",
        answers="How often do admitters apply an entitlement state that does not list them (unlisted) or lists "
                "no admitter (empty)?",
        viz=Viz.TIMESERIES, unit="ops",
        targets=(Target(f"sum by (pool, kind) ({_rate('state_fallback_shares_total')})", "A", "{{pool}} {{kind}}"),),
    ),
))

DASHBOARD = Dashboard(
    uid="tokenpools-admitters",
    title="Token pools: admitters (live)",
    description="The admitters now: requests by outcome, decision latency, queues, spool, limit staleness, "
                "upstream errors, preemptions.",
    source=Source.PROMETHEUS,
    rows=(REQUESTS, LATENCY, SPOOL, LIMITS),
    variables=(
        # queue_length is exported for every pool an admitter serves from its first scrape, unlike the
        # counters, which appear only once a request has gone through.
        Variable("pool", "Pool", f"label_values({_M}queue_length, pool)", include_all=True),
        Variable("instance", "Admitter", f"label_values({_M}queue_length, instance)", include_all=True),
    ),
    time_from="now-1h",
    refresh="30s",
    links=("tokenpools-pipeline", "tokenpools-pools"),
)
