"""``python -m dashboards``: write dashboards/json/<uid>.json for every dashboard in the catalog and the
generated part of dashboards/README.md; ``--check`` writes nothing, validates, and exits 1 naming every
stale, missing or extra file (and every problem ``dashboards.validate`` finds)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dashboards import catalog, grafana
from dashboards.spec import DATASOURCE_VARIABLE, PLUGIN_ID, Dashboard
from dashboards.validate import validate

HERE = Path(__file__).resolve().parent
JSON_DIR = HERE / "json"
README = HERE / "README.md"
MARKER = "<!-- Generated below by `python -m dashboards` from dashboards/spec.py's catalog: do not edit. -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference(dashboards: tuple[Dashboard, ...]) -> str:
    """Every dashboard, its variables, and every panel with what it answers (the README's second half)."""
    out = [MARKER, "", "## The dashboards", ""]
    for d in dashboards:
        out += [f"### {d.title} (`{d.uid}`)", "", d.description, "",
                f"Data source: `{PLUGIN_ID[d.source]}`, chosen with the `{DATASOURCE_VARIABLE[d.source]}` "
                f"variable. File: `dashboards/json/{d.uid}.json`.", ""]
        if d.variables:
            out += ["| variable | label | query |", "|---|---|---|"]
            out += [f"| `{v.name}` | {_cell(v.label)} | `{_cell(v.query)}`{' (with All)' if v.include_all else ''} |"
                    for v in d.variables]
            out.append("")
        for row in d.rows:
            out += [f"**{row.title}**", "", "| panel | answers | unit |", "|---|---|---|"]
            out += [f"| {_cell(p.title)} | {_cell(p.answers)} | `{p.unit}` |" for p in row.panels]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def expected_files() -> dict[Path, str]:
    titles = {d.uid: d.title for d in catalog.ALL}
    files = {JSON_DIR / f"{d.uid}.json": grafana.to_json(d, titles) for d in catalog.ALL}
    head = README.read_text().split(MARKER)[0] if README.exists() else "# Dashboards\n\n"
    files[README] = head + reference(catalog.ALL)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards", description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if any file is stale")
    args = parser.parse_args(argv)
    files = expected_files()
    problems: list[str] = []
    for path, text in sorted(files.items()):
        if path.suffix == ".json":
            problems += [f"{path.name}: {p}" for p in validate(text)]
    if args.check:
        for path, text in sorted(files.items()):
            if not path.exists():
                problems.append(f"missing: {path.relative_to(HERE.parent)}")
            elif path.read_text() != text:
                problems.append(f"stale: {path.relative_to(HERE.parent)}")
        extra = sorted(set(JSON_DIR.glob("*.json")) - set(files)) if JSON_DIR.exists() else []
        problems += [f"extra: {p.relative_to(HERE.parent)} (no dashboard in the catalog has this uid)" for p in extra]
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run `python -m dashboards` to regenerate", file=sys.stderr)
        return 1 if problems else 0
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1
    JSON_DIR.mkdir(exist_ok=True)
    for path, text in sorted(files.items()):
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(HERE.parent)}")
        else:
            print(f"unchanged {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
