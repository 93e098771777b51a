"""The committed Grafana JSON: fresh, data sources only through variables, true to the SDK's models,
and every panel complete and on the grid."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from dashboards import __main__ as generate
from dashboards import catalog
from dashboards.spec import DATASOURCE_VARIABLE, PLUGIN_ID
from dashboards.validate import validate

FILES = generate.expected_files()
JSONS = {path.stem: text for path, text in FILES.items() if path.suffix == ".json"}
UIDS = [d.uid for d in catalog.ALL]


def _load(uid: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((generate.JSON_DIR / f"{uid}.json").read_text())
    return data


def test_committed_files_are_fresh() -> None:
    stale = [str(p.relative_to(generate.HERE.parent)) for p, text in FILES.items()
             if not p.exists() or p.read_text() != text]
    extra = sorted(p.name for p in generate.JSON_DIR.glob("*.json") if p not in FILES)
    assert not stale and not extra, (f"stale or missing: {stale}, extra: {extra}; "
                                     "run `python -m dashboards` and commit dashboards/json and dashboards/README.md")


def test_check_mode_agrees() -> None:
    assert generate.main(["--check"]) == 0


def _datasources(node: object, path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if isinstance(node.get("datasource"), dict):
            yield f"{path}.datasource", node["datasource"]
        for key, value in node.items():
            yield from _datasources(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _datasources(value, f"{path}[{i}]")


def _uids(node: object, path: str = "$") -> Iterator[tuple[str, object]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "uid" or key.lower().endswith("datasourceuid"):
                yield f"{path}.{key}", value
            yield from _uids(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _uids(value, f"{path}[{i}]")


@pytest.mark.parametrize("uid", UIDS)
def test_data_sources_only_through_the_variable(uid: str) -> None:
    data = _load(uid)
    spec = catalog.by_uid(uid)
    variable, plugin = DATASOURCE_VARIABLE[spec.source], PLUGIN_ID[spec.source]
    declared = [v for v in data["templating"]["list"] if v["type"] == "datasource"]
    assert [(v["name"], v["query"]) for v in declared] == [(variable, plugin)]
    # Every uid in the file is the dashboard's own or the variable; nothing names a data source instance.
    assert {value for path, value in _uids(data) if path != "$.uid"} <= {"${" + variable + "}"}
    refs = list(_datasources(data))
    assert refs, "no datasource reference at all"
    for path, ref in refs:
        assert ref == {"type": plugin, "uid": "${" + variable + "}"}, path
    for panel in data["panels"]:
        if panel["type"] != "row":
            assert "datasource" in panel and all("datasource" in t for t in panel["targets"]), panel["title"]
    for var in data["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"] == {"type": plugin, "uid": "${" + variable + "}"}, var["name"]


@pytest.mark.parametrize("uid", UIDS)
def test_holds_to_the_sdk_models(uid: str) -> None:
    assert validate((generate.JSON_DIR / f"{uid}.json").read_text()) == []


@pytest.mark.parametrize(("plant", "caught"), [
    (lambda d: d["panels"][1].__setitem__("fieldConfg", {}), "fieldConfg: not in the schema"),
    (lambda d: d["panels"][1]["targets"][0].__setitem__("legendFromat", "x"), "legendFromat: not in the schema"),
    (lambda d: d["panels"][1]["gridPos"].__setitem__("h", "8"), "grid_pos.h: '8' where an integer"),
    (lambda d: d.__setitem__("graphTooltip", 7), "7 is not a DashboardCursorSync"),
    (lambda d: d["templating"]["list"][0].__setitem__("type", "datasorce"), "is not a VariableType"),
    (lambda d: d["panels"][1]["fieldConfig"]["defaults"]["custom"].__setitem__("fillOpacty", 5), "fillOpacty"),
    (lambda d: d["panels"][1].__setitem__("transparent", "no"), "where a boolean"),
])
def test_validation_catches_planted_faults(plant: Any, caught: str) -> None:
    data = _load("tokenpools-admitters")
    assert data["panels"][1]["type"] == "timeseries"
    plant(data)
    problems = validate(json.dumps(data))
    assert any(caught in p for p in problems), problems


def test_validation_decodes_clickhouse_targets() -> None:
    """A misspelt field of a ClickHouse target is caught too: the plugin's query model is registered."""
    for uid in UIDS:
        data = _load(uid)
        panels = [p for p in data["panels"] if p.get("targets")]
        if catalog.by_uid(uid).source.value == "clickhouse" and panels:
            panels[0]["targets"][0]["rawSQL"] = panels[0]["targets"][0].pop("rawSql")
            assert any("rawSQL: not in the schema" in p for p in validate(json.dumps(data)))
            return
    pytest.skip("no ClickHouse panel yet")


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


@pytest.mark.parametrize("uid", UIDS)
def test_every_panel_is_complete_and_on_the_grid(uid: str) -> None:
    data = _load(uid)
    spec = catalog.by_uid(uid)
    panels = [p for p in data["panels"] if p["type"] != "row"]
    assert [p["title"] for p in panels] == [p.title for p in spec.panels]
    assert [p["title"] for p in data["panels"] if p["type"] == "row"] == [r.title for r in spec.rows]
    for panel in panels:
        title = panel["title"]
        assert panel.get("description"), title
        assert panel.get("fieldConfig", {}).get("defaults", {}).get("unit"), title
        assert panel.get("datasource"), title
        assert panel.get("targets"), title
    ids = [p["id"] for p in data["panels"]]
    assert len(set(ids)) == len(ids)
    boxes = [p["gridPos"] for p in data["panels"]]
    for box in boxes:
        assert box["x"] >= 0 and box["y"] >= 0 and box["w"] >= 1 and box["h"] >= 1
        assert box["x"] + box["w"] <= 24
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not _overlap(a, b), (a, b)


def test_readme_lists_every_dashboard_and_panel() -> None:
    readme = generate.README.read_text()
    for d in catalog.ALL:
        assert d.uid in readme
        for p in d.panels:
            assert p.title in readme and p.answers in readme
        for v in d.variables:
            assert f"`{v.name}`" in readme


def test_column_units_name_real_columns_and_become_overrides_by_name() -> None:
    declared = [(d, p) for d in catalog.ALL for p in d.panels if p.column_units]
    assert declared, "no panel sets per-column units: this test would check nothing"
    for dashboard, panel in declared:
        assert {c for c, _ in panel.column_units} <= set(panel.columns), (dashboard.uid, panel.title)
        data = json.loads(JSONS[dashboard.uid])
        (made,) = [p for p in data["panels"] if p.get("title") == panel.title]
        overrides = {o["matcher"]["options"]: o["properties"] for o in made["fieldConfig"]["overrides"]
                     if o["matcher"]["id"] == "byName"}
        assert overrides == {c: [{"id": "unit", "value": u}] for c, u in panel.column_units}, panel.title
