"""The Prometheus alert rules (deploy/prometheus/tokenpools-rules.yaml), checked by a real promtool.

promtool is built from the Prometheus Go module once per version and cached outside the repo
(``tokenpools.infra.promtool.ensure_promtool``); on a cold machine the first test waits minutes for
the build, which prints its progress. Then: ``promtool check rules``, ``promtool test rules`` on the
unit tests beside the rules, a broken file that the check must refuse, and the rules against the
alert table of docs/observability.md (every row has its alerts, every alert its labels,
annotations and a ``for`` of 2 to 5 minutes).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenpools.infra.promtool import BUILD_TAGS, PROMTOOL_VERSION, ensure_promtool, rule_expressions

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "tokenpools-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests" / "tokenpools-rules.test.yaml"
DOC = ROOT / "docs" / "observability.md"
TABLE_HEADING = "## What to alert on"

# The alert table's first column -> the rules that implement that row.
DOC_ROW_ALERTS: dict[str, set[str]] = {
    "limits going stale": {"TokenpoolsLimitsStale"},
    "events not reaching Kafka": {"TokenpoolsEventsNotReachingKafka"},
    "spool filling the disk": {"TokenpoolsSpoolFillingDisk"},
    "bad state records": {"TokenpoolsBadStateRecords"},
    "allocator ticks rejected": {"TokenpoolsAdmitterAllocatorTicksRejected", "TokenpoolsPipelineTicksRejected"},
    "an admitter the pipeline does not see": {"TokenpoolsAdmitterNotSeenByPipeline"},
    "config not applied": {"TokenpoolsConfigRejected", "TokenpoolsConfigNotReady"},
    "bad records in the pipeline": {"TokenpoolsPipelineBadRecords"},
    "history sink lagging": {"TokenpoolsHistorySinkLagging"},
    "history inserts failing": {"TokenpoolsHistoryInsertsFailing"},
    "history sink lost Kafka": {"TokenpoolsHistorySinkKafkaDisconnected"},
}
# Alerts whose `for` may lie outside 2-5 minutes, with the reason (documented in the table). None so far.
FOR_EXCEPTIONS: dict[str, str] = {}

# The whole module shares one promtool build, which a cold machine takes minutes for: the first
# test's budget must cover it (the suite's default is 600 s per test).
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="session")
def promtool(pytestconfig: pytest.Config) -> Iterator[Path]:
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    # Show the build's progress live instead of after minutes of silence.
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        path = ensure_promtool()
    yield path


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def _table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the first markdown table under ``heading`` (header and separator left out)."""
    lines = text.splitlines()
    start = lines.index(heading)
    rows: list[list[str]] = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break  # the table ended
    assert len(rows) > 2, f"no table under {heading!r} in {DOC}"
    return rows[2:]


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _minutes(duration: str) -> float:
    match = re.fullmatch(r"(\d+)([smh])", duration)
    assert match, f"unexpected duration {duration!r}"
    return int(match.group(1)) * {"s": 1 / 60, "m": 1.0, "h": 60.0}[match.group(2)]


# -- promtool ---------------------------------------------------------------------------------------


def test_promtool_is_the_pinned_build(promtool: Path) -> None:
    result = _run(promtool, "--version")
    assert result.returncode == 0, _output(result)
    text = result.stdout + result.stderr
    assert f"version {PROMTOOL_VERSION.removeprefix('v')}" in text, text
    assert BUILD_TAGS in text, text


def test_promtool_check_rules(promtool: Path) -> None:
    result = _run(promtool, "check", "rules", RULES)
    assert result.returncode == 0, _output(result)
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout, _output(result)


def test_promtool_test_rules(promtool: Path) -> None:
    result = _run(promtool, "test", "rules", RULE_TESTS)
    assert result.returncode == 0, _output(result)
    assert "SUCCESS" in result.stdout, _output(result)


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    tested: dict[str, set[str]] = {}
    for case in tests["tests"]:
        for check in case.get("alert_rule_test") or []:
            tested.setdefault(check["alertname"], set()).add("fires" if check.get("exp_alerts") else "silent")
    for name in _alerts():
        assert tested.get(name) == {"fires", "silent"}, f"{name}: needs a case that fires and one that does not"


def test_a_broken_rules_file_fails_the_check(promtool: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken-rules.yaml"
    broken.write_text(
        "groups:\n"
        "  - name: broken\n"
        "    rules:\n"
        "      - alert: Broken\n"
        "        expr: sum by (pool (tokenpools_admitter_state_staleness_seconds) > 30\n"
        "        for: 2m\n"
    )
    result = _run(promtool, "check", "rules", broken)
    assert result.returncode != 0, _output(result)
    assert "Broken" in result.stdout + result.stderr or "parse error" in result.stdout + result.stderr, _output(result)


# -- rules against the doc --------------------------------------------------------------------------


def test_every_row_of_the_alert_table_has_its_rules() -> None:
    rows = [row[0] for row in _table_rows(DOC.read_text(encoding="utf-8"), TABLE_HEADING)]
    assert sorted(rows) == sorted(DOC_ROW_ALERTS), "the table's rows and DOC_ROW_ALERTS disagree"
    alerts = set(_alerts())
    for row, names in DOC_ROW_ALERTS.items():
        assert names <= alerts, f"{row!r}: no rule for {sorted(names - alerts)}"
    mapped = set().union(*DOC_ROW_ALERTS.values())
    assert alerts <= mapped, f"alerts the table does not explain: {sorted(alerts - mapped)}"


def test_every_rule_has_severity_annotations_and_a_for_of_2_to_5_minutes() -> None:
    headings = {
        _slug(line.lstrip("#")) for line in DOC.read_text(encoding="utf-8").splitlines() if line.startswith("#")
    }
    for name, rule in _alerts().items():
        assert rule.get("labels", {}).get("severity") in {"page", "ticket"}, name
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            assert annotations.get(key), f"{name}: no {key}"
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert (ROOT / path).is_file(), f"{name}: runbook {path} does not exist"
        if path == "docs/observability.md":
            assert anchor in headings, f"{name}: no heading #{anchor} in {path}"
        if name not in FOR_EXCEPTIONS:
            assert "for" in rule, f"{name}: no for"
            assert 2 <= _minutes(rule["for"]) <= 5, f"{name}: for {rule['for']} outside 2-5 minutes"


def test_rule_expressions_lists_every_expr() -> None:
    exprs = rule_expressions(RULES)
    assert len(exprs) == len(_rules())
    assert all("tokenpools_" in e for e in exprs)
    names = set(re.findall(r"\btokenpools_[a-z_]+", " ".join(exprs)))
    prefixes = ("tokenpools_admitter_", "tokenpools_streams_", "tokenpools_history_")
    assert names and all(n.startswith(prefixes) for n in names), sorted(names)
