"""vLLM's Prometheus metrics of one replica, under vLLM's names and buckets."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from sim.engine import Engine

# vLLM's histogram buckets (vllm/engine/metrics.py), so dashboards built on real replicas work here.
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                240.0, 480.0, 960.0, 1920.0, 7680.0)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000)


class EngineCounters(Collector):
    """Counters the engine already keeps, read at scrape time instead of mirrored."""

    def __init__(self, model: str, engine: Engine) -> None:
        self.model = model
        self.engine = engine

    def collect(self) -> Iterable[CounterMetricFamily]:
        fam = CounterMetricFamily("vllm:num_preemptions", "Cumulative number of preemptions from the engine.",
                                  labels=["model_name"])
        fam.add_metric([self.model], self.engine.preemptions_total)
        yield fam


class ReplicaMetrics:
    """vLLM's Prometheus metrics of one replica, in its own registry (replicas share a process)."""

    def __init__(self, model: str, engine: Engine) -> None:
        self.registry = r = CollectorRegistry()
        lab = ["model_name"]
        Gauge("vllm:num_requests_running", "Number of requests currently running on GPU.", lab,
              registry=r).labels(model).set_function(lambda: engine.num_running)
        Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", lab,
              registry=r).labels(model).set_function(lambda: engine.num_waiting)
        Gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", lab,
              registry=r).labels(model).set_function(lambda: engine.kv_usage)
        # the name vLLM >= 0.10 uses for the same gauge
        Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", lab,
              registry=r).labels(model).set_function(lambda: engine.kv_usage)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", lab,
                                     registry=r).labels(model)
        self.generation_tokens = Counter("vllm:generation_tokens", "Number of generation tokens processed.", lab,
                                         registry=r).labels(model)
        success = Counter("vllm:request_success", "Count of successfully processed requests.",
                          [*lab, "finished_reason"], registry=r)
        self.success = {reason: success.labels(model, reason) for reason in ("stop", "length")}
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              lab, buckets=_TTFT_BUCKETS, registry=r).labels(model)
        self.tpot = Histogram("vllm:time_per_output_token_seconds",
                              "Histogram of time per output token in seconds.", lab, buckets=_TPOT_BUCKETS,
                              registry=r).labels(model)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
                             lab, buckets=_E2E_BUCKETS, registry=r).labels(model)
        self.req_prompt = Histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", lab,
                                    buckets=_TOKEN_BUCKETS, registry=r).labels(model)
        self.req_generation = Histogram("vllm:request_generation_tokens", "Number of generation tokens processed.",
                                        lab, buckets=_TOKEN_BUCKETS, registry=r).labels(model)
        r.register(EngineCounters(model, engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)
