"""The named questions: parameterised SQL files that analysts, the HTTP endpoint and tenants share.

Each file in ``streams/history/questions`` is ``NN_name.sql``, starting with a comment header::

    -- title: Usage per tenant per day
    -- param: start DateTime64(3, 'UTC')   first instant included
    -- param: tenant String                (optional lines like these, one per parameter)
    SELECT ... WHERE ts >= {start:DateTime64(3, 'UTC')} ...

A parameter's type is a ClickHouse type name with its arguments, which may hold spaces, quotes and
nested parentheses (``DateTime64(3, 'UTC')``, ``Array(Tuple(String, UInt32))``); the help follows it.
Time parameters name UTC so that a time given as text is read as UTC whatever the server's time zone.

Parameters use ClickHouse's server-side syntax ``{name:Type}``, so values never become SQL text (both
chDB and a server bind them). ``docs/analytics.md`` shows the same files; a test keeps them equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

_FILE = re.compile(r"^(\d{2})_([a-z0-9_]+)\.sql$")
_PARAM = re.compile(r"^--\s*param:\s*([a-z_][a-z0-9_]*)\s+([A-Za-z_][A-Za-z0-9_]*)(.*)$")
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
            args, help_text = _arguments(name, m.group(3))
            if help_text[:1] not in ("", " ", "\t"):
                raise ValueError(f"question {name}: '{stripped}': the type must end before the help")
            params.append(Param(m.group(1), m.group(2) + args, help_text.strip()))
    if not title:
        raise ValueError(f"question {name}: the header needs a '-- title:' line")
    declared = {p.name: p.type for p in params}
    for used, typ in _USED.findall(text):
        if declared.get(used) != typ.strip():
            raise ValueError(f"question {name}: {{{used}:{typ}}} is used but declared as {declared.get(used)!r}")
    return Question(number, name, title, tuple(params), text)


def _arguments(name: str, rest: str) -> tuple[str, str]:
    """A type's parenthesised arguments at the start of ``rest`` (nested, quotes respected) and what follows.

    ``"(3, 'UTC')  first instant"`` gives ``("(3, 'UTC')", "  first instant")``; without a ``(`` right
    after the type name, no arguments.
    """
    if not rest.startswith("("):
        return "", rest
    depth, quote, escaped = 0, "", False
    for i, ch in enumerate(rest):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return rest[: i + 1], rest[i + 1 :]
    raise ValueError(f"question {name}: a '-- param:' type's parentheses do not close: {rest!r}")


@cache
def questions() -> dict[str, Question]:
    found: dict[str, Question] = {}
    for entry in resources.files("streams.history.questions").iterdir():
        m = _FILE.match(entry.name)
        if m:
            q = parse(int(m.group(1)), m.group(2), entry.read_text())
            found[q.name] = q
    return dict(sorted(found.items(), key=lambda kv: kv[1].number))
