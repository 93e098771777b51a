"""What a report holds once its queries ran: sections (a dashboard, perhaps for one entitlement) of panels
with their rows, the SQL as run, and whether each had data. Plain data, so the runner, the renderer and
the page each read the same thing."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from dashboards.macros import TimeRange
from dashboards.spec import Dashboard, Panel

# Whoever runs a report hands in the SQL runner: the store in-process, or a history endpoint over HTTP.
# It returns (columns, rows); rows may hold native values (datetime, Decimal) or their JSON forms (ISO
# strings), and the renderer reads both.
RunSql = Callable[[str], tuple[Sequence[str], Sequence[Sequence[Any]]]]


class ReportError(Exception):
    """The report cannot be made as asked; the message is safe to show. ``bad_input``: the caller asked for
    something that does not exist (an unknown entitlement), rather than a query failing."""

    def __init__(self, message: str, *, bad_input: bool = False) -> None:
        super().__init__(message)
        self.bad_input = bad_input


class Status(StrEnum):
    OK = "ok"
    NO_DATA = "nodata"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class PanelResult:
    panel: Panel
    slug: str
    sql: tuple[str, ...]  # per target, as ClickHouse received it
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]  # every target's rows, in target order
    error: str = ""  # names the dashboard and panel
    png: bytes = field(default=b"", repr=False)

    @property
    def status(self) -> Status:
        if self.error:
            return Status.ERROR
        return Status.OK if self.rows else Status.NO_DATA


@dataclass(frozen=True, slots=True)
class Section:
    """One dashboard as rendered: with the variable values it was rendered for (if it has variables)."""

    dashboard: Dashboard
    key: str  # unique in the report; also the PNG folder under png/
    heading: str
    variables: Mapping[str, str]
    panels: tuple[PanelResult, ...]
    note: str = ""  # why these variable values (or why the section is empty)


@dataclass(frozen=True, slots=True)
class Report:
    title: str
    time_range: TimeRange
    interval_s: int
    sections: tuple[Section, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def panels(self) -> tuple[PanelResult, ...]:
        return tuple(p for s in self.sections for p in s.panels)

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(p.error for p in self.panels if p.error)


_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def slugify(text: str, taken: set[str] | None = None) -> str:
    """A file- and attribute-safe name (``a-z0-9-``); ``-2``, ``-3``... when ``taken`` already has it."""
    base = _NOT_SLUG.sub("-", text.lower()).strip("-")[:60].strip("-") or "panel"
    slug, n = base, 1
    while taken is not None and slug in taken:
        n += 1
        slug = f"{base}-{n}"
    if taken is not None:
        taken.add(slug)
    return slug
