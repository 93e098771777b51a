"""Every Prometheus metric name the product's dashboards and alert rules read, and where each is read.

The integration tests hold these names to the real ``/metrics`` of running parts (``tests/integration/
test_up.py`` for the admitters, the pipeline worker and the history process that ``tokenpools up`` runs;
``tests/admitter/test_metrics.py`` for what only a standalone admitter exports), so a renamed metric fails
a test instead of leaving a panel or an alert silently empty.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import yaml

from dashboards.catalog import PROMETHEUS
from dashboards.promql import metric_names

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "tokenpools-rules.yaml"

# Exported only by an admitter without Kafka (its in-process allocator): the rules watch them for
# standalone deployments, so the admitters of ``tokenpools up`` (all on Kafka) do not have them.
STANDALONE_ONLY = frozenset({"tokenpools_admitter_allocator_rejected_ticks_total"})


def rule_expressions(path: Path = RULES) -> dict[str, str]:
    """Alert or recording rule name -> its PromQL."""
    doc = yaml.safe_load(path.read_text())
    return {rule.get("alert") or rule["record"]: rule["expr"]
            for group in doc["groups"] for rule in group["rules"]}


def names_used() -> dict[str, set[str]]:
    """Metric name -> the panels and rules that read it."""
    used: dict[str, set[str]] = defaultdict(set)
    for dashboard in PROMETHEUS:
        for panel in dashboard.panels:
            for target in panel.targets:
                for name in metric_names(target.expr):
                    used[name].add(f"dashboard {dashboard.uid}: {panel.title}")
    for rule, expr in rule_expressions().items():
        for name in metric_names(expr):
            used[name].add(f"rule {rule}")
    return dict(used)


def missing(exposed: set[str], *, only: set[str] | None = None) -> dict[str, set[str]]:
    """The names used (all, or those in ``only``) that no exposition has, with their readers."""
    return {name: readers for name, readers in names_used().items()
            if name not in exposed and (only is None or name in only)}
