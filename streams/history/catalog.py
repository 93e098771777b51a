"""The named questions: parameterised SQL files that analysts, the HTTP endpoint and tenants share.

Each file in ``streams/history/questions`` is ``NN_name.sql``, starting with a comment header::

    -- title: Usage per tenant per day
    -- param: start DateTime64(3)   first instant included
    -- param: tenant String         (optional lines like these, one per parameter)
    SELECT ... WHERE ts >= {start:DateTime64(3)} ...

Parameters use ClickHouse's server-side syntax ``{name:Type}``, so values never become SQL text (both
chDB and a server bind them). ``docs/analytics.md`` shows the same files; a test keeps them equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

_FILE = re.compile(r"^(\d{2})_([a-z0-9_]+)\.sql$")
_PARAM = re.compile(r"^--\s*param:\s*([a-z_][a-z0-9_]*)\s+(\S+(?:\([^)]*\))?)\s*(.*)$")
_USED = re.compile(r"\{([a-z_][a-z0-9_]*):([^}]+)\}")


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: str
    help: str


@dataclass(frozen=True, slots=True)
class Question:
    number: int
    name: str
    title: str
    params: tuple[Param, ...]
    sql: str  # the whole file, header included (what the docs show)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)


def parse(number: int, name: str, text: str) -> Question:
    title = ""
    params: list[Param] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("--"):
            break
        if stripped.startswith("-- title:"):
            title = stripped.removeprefix("-- title:").strip()
        elif (m := _PARAM.match(stripped)) is not None:
            params.append(Param(m.group(1), m.group(2), m.group(3).strip()))
    if not title:
        raise ValueError(f"question {name}: the header needs a '-- title:' line")
    declared = {p.name: p.type for p in params}
    for used, typ in _USED.findall(text):
        if declared.get(used) != typ.strip():
            raise ValueError(f"question {name}: {{{used}:{typ}}} is used but declared as {declared.get(used)!r}")
    return Question(number, name, title, tuple(params), text)


@cache
def questions() -> dict[str, Question]:
    found: dict[str, Question] = {}
    for entry in resources.files("streams.history.questions").iterdir():
        m = _FILE.match(entry.name)
        if m:
            q = parse(int(m.group(1)), m.group(2), entry.read_text())
            found[q.name] = q
    return dict(sorted(found.items(), key=lambda kv: kv[1].number))
