"""The static report (``dashboards.report``) on the seeded history, looked at in headless Chromium.

The seed (``tests/streams/history/seed.py``, three days) is in a chDB database of the session's (conftest);
the report runs every ClickHouse dashboard's panels over the seed's range through the same read-only path
as ``tokenpools report`` (``store_runner``: the history endpoint's checks) and writes its files. Chromium
(Debian's, installed by ``tokenpools.infra.chromium`` when missing) then loads index.html from disk: the
page's own script marks each figure once its image decoded, and the DOM Chromium dumps says whether every
panel is on screen with data. The screenshot is kept in results/test-artifacts/ to be looked at.

A small dashboard of this file's own covers what the product's dashboards do not use (bar chart, stat,
a panel without data, a panel whose query returns other columns than it declares, variables).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

from dashboards.catalog import CLICKHOUSE
from dashboards.macros import TimeRange
from dashboards.report import MAX_DEFAULT_ENTITLEMENTS, Report, ReportError, Status, run_report, write_report
from dashboards.report.page import HTML_TABLE_ROWS
from dashboards.report.runner import ProgressEvent
from dashboards.spec import Dashboard, Panel, Row, Source, Target, Variable, Viz
from streams.history.settings import StoreSettings
from streams.history.store import HistoryStore
from tests.streams.history import seed
from tokenpools.cli.report import store_runner
from tokenpools.infra.chromium import ensure_chromium

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "results" / "test-artifacts" / "report-screenshot.png"
RANGE = TimeRange.of_epoch(seed.T0_MS / 1000, seed.END_MS / 1000)
MAX_SCREENSHOT_HEIGHT = 40_000  # Chromium's own limit on a window is higher; a PNG this tall is already ~10 MB


@pytest.fixture(scope="session")
def chromium() -> Path:
    return ensure_chromium()


@pytest.fixture(scope="module")
def store(seeded_history: tuple[HistoryStore, StoreSettings]) -> HistoryStore:
    """The session's seeded database (tests/conftest.py): these tests only read it."""
    return seeded_history[0]


@dataclass
class Made:
    out: Path
    report: Report
    progress: list[ProgressEvent]


@pytest.fixture(scope="module")
def made(store: HistoryStore, tmp_path_factory: pytest.TempPathFactory, shared_renders: None) -> Made:
    out = tmp_path_factory.mktemp("report")
    events: list[ProgressEvent] = []
    report = run_report(store_runner(store), RANGE, progress=events.append)
    write_report(report, out)
    return Made(out, report, events)


class _Dom(HTMLParser):
    """The attributes of every ``figure.panel`` and of ``body`` in a DOM Chromium dumped."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: list[dict[str, str]] = []
        self.body: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "figure" and "panel" in values.get("class", "").split():
            self.figures.append(values)
        elif tag == "body":
            self.body = values


def _chromium(binary: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args],
        capture_output=True, text=True, timeout=180, check=False)


def _dump(binary: Path, page: Path, tmp_path: Path) -> _Dom:
    # The screenshot's width: images scale with it, so the page height the script reports is the one to shoot.
    result = _chromium(binary, tmp_path / "profile-dom", "--window-size=1400,1000", "--dump-dom", page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    dom = _Dom()
    dom.feed(result.stdout)
    return dom


def test_every_panel_is_on_screen_with_data_in_chromium(made: Made, chromium: Path, tmp_path: Path) -> None:
    page = made.out / "index.html"
    dom = _dump(chromium, page, tmp_path)
    assert dom.body.get("data-checked") == "true", "the page's script did not run"
    entitlement_sections = {f["data-dashboard"] for f in dom.figures if f["data-uid"] == "tokenpools-entitlement"}
    assert len(entitlement_sections) == MAX_DEFAULT_ENTITLEMENTS
    seen = Counter((f["data-uid"], f["data-title"]) for f in dom.figures)
    for dashboard in CLICKHOUSE:
        times = MAX_DEFAULT_ENTITLEMENTS if dashboard.variables else 1
        for panel in dashboard.panels:
            assert seen[(dashboard.uid, panel.title)] == times, f"{dashboard.uid} / {panel.title} not on the page"
    assert len(dom.figures) == sum(len(d.panels) * (MAX_DEFAULT_ENTITLEMENTS if d.variables else 1)
                                   for d in CLICKHOUSE)
    for figure in dom.figures:
        where = f"{figure['data-dashboard']} / {figure['data-title']}"
        table = figure["data-viz"] == "table"
        assert figure.get("data-rendered") == ("table" if table else "image"), f"{where}: not rendered in Chromium"
        if table:
            assert int(figure["data-table-rows"]) == min(int(figure["data-rows"]), HTML_TABLE_ROWS), where
        assert int(figure["data-rows"]) > 0, f"{where}: no rows"
        assert figure["data-status"] == "ok", f"{where}: {figure['data-status']}"
    assert int(dom.body["data-panels-rendered"]) == len(dom.figures)
    assert "no data in this range" not in page.read_text(encoding="utf-8")

    height = min(int(dom.body.get("data-height") or 20_000) + 40, MAX_SCREENSHOT_HEIGHT)
    shot = tmp_path / "report.png"
    result = _chromium(chromium, tmp_path / "profile-shot", f"--screenshot={shot}", f"--window-size=1400,{height}",
                       "--hide-scrollbars", page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT)
    print(f"report screenshot (1400x{height}): {SCREENSHOT}")


def test_the_page_is_self_contained(made: Made) -> None:
    text = (made.out / "index.html").read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    hrefs = [chunk.split('"', 1)[0] for chunk in text.split(' href="')[1:]]
    assert hrefs and all(h.startswith("#") for h in hrefs), "a link that leaves the page"
    assert "<link" not in text and "<script src" not in text and "url(" not in text
    sources = [chunk.split('"', 1)[0] for chunk in text.split(' src="')[1:]]
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    tables = sum(1 for r in made.report.panels if r.panel.viz is Viz.TABLE and r.rows)  # shown as HTML tables
    assert tables > 0 and len(sources) == len(made.report.panels) - tables


def test_report_json_pngs_and_progress(made: Made) -> None:
    summary = json.loads((made.out / "report.json").read_text(encoding="utf-8"))
    assert summary["from"] == RANGE.start.isoformat() and summary["to"] == RANGE.end.isoformat()
    assert summary["interval_s"] == 900  # three days over 300 points, rounded up to a nice step
    assert summary["errors"] == []
    panels = [p for s in summary["sections"] for p in s["panels"]]
    assert len(panels) == len(made.report.panels) == len(made.progress)
    assert [e.done for e in made.progress] == list(range(1, len(panels) + 1))
    for p in panels:
        png = made.out / p["png"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p["png"]
        assert p["rows"] > 0 and p["status"] == "ok"
        assert p["sql"] and all("$__" not in sql and "${" not in sql for sql in p["sql"])
    assert {s["uid"] for s in summary["sections"]} == {d.uid for d in CLICKHOUSE}


def test_the_entitlements_shown_are_the_busiest_and_the_page_says_why(made: Made, history_seed: seed.Seed) -> None:
    seeded = history_seed
    counts = Counter(e.entitlement for e in seeded.events if RANGE.start.timestamp() <= e.ts <= RANGE.end.timestamp())
    busiest = sorted(counts, key=lambda name: (-counts[name], name))[:MAX_DEFAULT_ENTITLEMENTS]
    sections = [s for s in made.report.sections if s.dashboard.uid == "tokenpools-entitlement"]
    assert [s.variables["entitlement"] for s in sections] == busiest
    pools = {e.entitlement: e.pool for e in seeded.events}
    assert [s.variables["pool"] for s in sections] == [pools[name] for name in busiest]
    text = (made.out / "index.html").read_text(encoding="utf-8")
    for name in busiest:
        assert f"entitlement {name} in pool {pools[name]}: #" in text
        assert f"{counts[name]:,} events" in text


# -- a dashboard of this file's own: the visualisations and failures the product's dashboards do not show

_TIERS = """\
SELECT tier, countIf(phase = 'decision') AS decisions, countIf(outcome = 'refused') AS refusals
FROM request_events WHERE $__timeFilter(ts) AND pool = ${pool:sqlstring} GROUP BY tier ORDER BY tier"""
OWN = Dashboard(
    uid="test-own", title="Own", description="A dashboard of the test's own.", source=Source.CLICKHOUSE,
    variables=(Variable("pool", "Pool", "SELECT DISTINCT pool FROM pool_specs ORDER BY pool"),),
    rows=(Row("All of them", (
        Panel("By tier", "Decisions and refusals by tier", Viz.BARCHART, (Target(_TIERS),),
              columns=("tier", "decisions", "refusals")),
        Panel("Refused share", "Refused share", Viz.STAT, (Target(
            "SELECT countIf(outcome = 'refused') / count() AS refused, count() AS events FROM request_events "
            "WHERE $__timeFilter(ts)"),), unit="percentunit", columns=("refused", "events")),
        Panel("Output per tier", "TTFT", Viz.TIMESERIES, (Target(
            "SELECT $__timeInterval(ts) AS t, tier, sum(output_tokens) AS output FROM request_events "
            "WHERE $__timeFilter(ts) GROUP BY t, tier ORDER BY t, tier"),), columns=("t", "tier", "output")),
        Panel("Nothing", "Nothing", Viz.TIMESERIES, (Target(
            "SELECT $__timeInterval(ts) AS t, count() AS n FROM request_events WHERE $__timeFilter(ts) "
            "AND tenant = 'nobody' GROUP BY t ORDER BY t"),), columns=("t", "n")),
        Panel("Wrong columns", "A query that drifted from its panel", Viz.TABLE, (Target(
            "SELECT tenant AS who FROM request_events WHERE $__timeFilter(ts) LIMIT 3"),), columns=("tenant",)),
        Panel("Tenants", "Tenants", Viz.TABLE, (Target(
            "SELECT tenant, count() AS events, max(ts) AS last FROM request_events WHERE $__timeFilter(ts) "
            "GROUP BY tenant ORDER BY tenant"),), columns=("tenant", "events", "last")),
    )),))


def test_own_dashboard_every_visualisation_and_the_failures(store: HistoryStore, tmp_path: Path,
                                                            chromium: Path) -> None:
    report = run_report(store_runner(store), RANGE, dashboards=(OWN,))
    results = {p.panel.title: p for p in report.panels}
    assert report.sections[0].variables == {"pool": "pool-a"}
    assert "Pool: pool-a (the first of 2 listed)" in report.sections[0].note
    assert [r[0] for r in results["By tier"].rows] == ["elastic", "guaranteed", "spot"]
    assert results["Refused share"].status is Status.OK and len(results["Refused share"].rows) == 1
    assert results["Nothing"].status is Status.NO_DATA
    wrong = results["Wrong columns"]
    assert wrong.status is Status.ERROR
    assert wrong.error == ("Own / panel 'Wrong columns': query A returned columns (who) but the panel declares "
                           "(tenant)")
    assert report.errors == (wrong.error,)
    write_report(report, tmp_path / "own")
    dom = _dump(chromium, tmp_path / "own" / "index.html", tmp_path)
    figures = {f["data-title"]: f for f in dom.figures}
    assert all(f.get("data-rendered") in ("image", "table") for f in dom.figures)
    assert figures["Nothing"]["data-status"] == "nodata" and figures["Nothing"]["data-rows"] == "0"
    assert figures["Wrong columns"]["data-status"] == "error"
    assert {t: f["data-status"] for t, f in figures.items() if t not in ("Nothing", "Wrong columns")} == dict.fromkeys(
        ("By tier", "Refused share", "Output per tier", "Tenants"), "ok")
    text = (tmp_path / "own" / "index.html").read_text(encoding="utf-8")
    assert "no data in this range" in text and "<td>acme</td>" in text


ENTITLEMENT_LIKE = Dashboard(
    uid="test-entitlement", title="Per entitlement", description="d", source=Source.CLICKHOUSE,
    variables=(Variable("pool", "Pool", "SELECT DISTINCT pool FROM pool_specs ORDER BY pool"),
               Variable("entitlement", "Entitlement", "SELECT DISTINCT entitlement FROM entitlement_specs "
                                                      "WHERE pool = ${pool:sqlstring} ORDER BY entitlement")),
    rows=(Row("r", (Panel("Events", "e", Viz.STAT, (Target(
        "SELECT count() AS events FROM request_events WHERE $__timeFilter(ts) AND pool = ${pool:sqlstring} "
        "AND entitlement = ${entitlement:sqlstring}"),), columns=("events",)),)),))


def test_named_entitlements_find_their_pool_and_an_unknown_one_is_refused(store: HistoryStore,
                                                                         history_seed: seed.Seed) -> None:
    report = run_report(store_runner(store), RANGE, dashboards=(ENTITLEMENT_LIKE,),
                        entitlements=["initech-gold", "acme-gold"])
    assert [dict(s.variables) for s in report.sections] == [{"entitlement": "initech-gold", "pool": "pool-b"},
                                                            {"entitlement": "acme-gold", "pool": "pool-a"}]
    assert all("named on the command line" in s.note for s in report.sections)
    seeded = history_seed
    assert report.panels[0].rows[0][0] == sum(1 for e in seeded.events if e.entitlement == "initech-gold")
    with pytest.raises(ReportError, match="'nobody-here' has no events") as refused:
        run_report(store_runner(store), RANGE, dashboards=(ENTITLEMENT_LIKE,), entitlements=["nobody-here"])
    assert refused.value.bad_input


def test_units_read_as_grafana_shows_them() -> None:
    from dashboards.report.units import cell, format_value

    assert [format_value(v, u) for v, u in [(0.5, "percentunit"), (0.25, "s"), (7200, "s"), (1234.5, "reqps"),
                                           (12_345_678, "short"), (2048, "bytes"), (1500, "ms")]] == \
        ["50%", "250 ms", "2 h", "1.23k req/s", "12.3M", "2 KiB", "1.5 s"]
    # An endpoint's JSON times and the store's native values read the same in a table.
    assert cell("2026-12-03T21:29:32.000Z", "short") == "2026-12-03 21:29:32"
    assert cell(RANGE.start, "short") == cell(RANGE.start.isoformat().replace("+00:00", "Z"), "short")


def test_table_cells_take_their_column_unit(made: Made) -> None:
    text = (made.out / "index.html").read_text(encoding="utf-8")
    title = 'data-title="Guaranteed capacity sold vs used (weighted tokens/s)"'
    figure = text.split(title, 1)[1].split("</figure>", 1)[0]
    header = figure.split("<thead>", 1)[1].split("</thead>", 1)[0]
    share = [h.split("</th>")[0] for h in header.split("<th>")[1:]].index("used_share")
    first_row = figure.split("<tbody><tr>", 1)[1].split("</tr>", 1)[0]
    cells = [c.split("</td>")[0].rsplit(">", 1)[-1] for c in first_row.split("<td")[1:]]
    assert cells[share].endswith("%"), cells  # percentunit, while the sold and used columns stay plain numbers
    assert not cells[share - 1].endswith("%"), cells
