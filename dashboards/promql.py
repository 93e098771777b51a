"""What a PromQL expression reads, and whether it adds up things that do not add up.

``metric_names`` is held against a real ``/metrics`` (``exposed_names``) by the tests, so a panel can
never chart a metric the code does not export. The PromQL is tokenized, not matched with a regex over the
whole text: a label value (``kind="sum"``), a function (``rate``), an aggregation and its grouping labels
(``sum by (le)``), a range (``[5m]``, ``[$__rate_interval]``) or a number is not a metric name.

``summed_ratios`` flags the two ways a fleet-wide panel lies: ``sum(a / b)`` (a sum of per-instance
ratios: 3 admitters at 50 % refused show 150 %) and ``sum(<gauge that is a ratio, an age, a staleness or a
0/1 state>)``. A ratio is ``sum(rate(a)) / sum(rate(b))``; an age or a state is ``max``/``min``/``avg``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# Aggregation operators: keywords, never metric names, whether followed by ``(`` or by ``by``/``without``.
AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                          "bottomk", "topk", "quantile", "limitk", "limit_ratio"})
# Keywords whose parenthesised list holds label names, not expressions.
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = AGGREGATIONS | GROUPING | frozenset({"and", "or", "unless", "atan2", "offset", "bool", "inf", "nan"})

# Gauges whose sum across instances means nothing: ratios, ages and durations held in a gauge, 0/1 states.
# Histogram series end in _bucket/_sum/_count and counters in _total, so ``_seconds`` here is a gauge.
RATIO_SUFFIXES = ("_ratio", "_percent", "_seconds", "_connected", "_ready", "_caught_up")
RATIO_NAMES = frozenset({"up"})

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<selector>\{(?:[^{}"'`]|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)*\})
  | (?P<variable>\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<duration>(?:[0-9]+(?:ms|[smhdwy]))+(?![A-Za-z0-9_:]))
  | (?P<number>0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
  | (?P<op>==|!=|<=|>=|=~|!~|[-+*/%^<>@])
""", re.VERBOSE)

_MATCHER = re.compile(r"""\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*
                          ("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)\s*,?""", re.VERBOSE)
_LABEL_VALUES = re.compile(r"\s*label_values\s*\((?P<args>.*)\)\s*", re.DOTALL)


class PromQLError(ValueError):
    """The text is not PromQL this module can read; the message says where."""


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str
    pos: int


def tokenize(expr: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise PromQLError(f"cannot read PromQL at {pos}: {expr[pos:pos + 30]!r}")
        kind = match.lastgroup or ""
        if kind not in ("space", "comment"):
            tokens.append(Token(kind, match.group(), pos))
        pos = match.end()
    return tokens


def _unquote(literal: str) -> str:
    body = literal[1:-1]
    return body if literal[0] == "`" else re.sub(r"\\(.)", r"\1", body)


def _selector_name(selector: str) -> str | None:
    """``{__name__="x", ...}`` names metric x; any other matcher on ``__name__`` names no single metric."""
    body, pos, name = selector[1:-1], 0, None
    while pos < len(body.rstrip()):
        match = _MATCHER.match(body, pos)
        if match is None:
            raise PromQLError(f"cannot read the label matchers {selector[:60]!r}")
        if match.group(1) == "__name__" and match.group(2) == "=":
            name = _unquote(match.group(3))
        pos = match.end()
    return name


def _closing(tokens: list[Token], i: int) -> int:
    """The index of the ``)`` that closes the ``(`` at ``tokens[i]``."""
    depth = 0
    for j in range(i, len(tokens)):
        if tokens[j].kind == "lparen":
            depth += 1
        elif tokens[j].kind == "rparen":
            depth -= 1
            if depth == 0:
                return j
    raise PromQLError(f"unbalanced parenthesis at {tokens[i].pos}")


def _label_lists(tokens: list[Token]) -> set[int]:
    """Indices of tokens inside a grouping keyword's label list (``by (le, pool)``, ``on(pool)``)."""
    inside: set[int] = set()
    for i, token in enumerate(tokens):
        if (token.kind == "ident" and token.text.lower() in GROUPING and i + 1 < len(tokens)
                and tokens[i + 1].kind == "lparen"):
            inside.update(range(i + 1, _closing(tokens, i + 1) + 1))
    return inside


def _metric_tokens(tokens: list[Token]) -> Iterator[tuple[int, str]]:
    labels = _label_lists(tokens)
    for i, token in enumerate(tokens):
        if i in labels:
            continue
        if token.kind == "selector":
            if i > 0 and tokens[i - 1].kind == "ident" and i - 1 not in labels:
                continue  # the matchers of the metric just named
            name = _selector_name(token.text)
            if name is not None:
                yield i, name
        elif token.kind == "ident" and token.text.lower() not in KEYWORDS:
            if i + 1 < len(tokens) and tokens[i + 1].kind == "lparen":
                continue  # a function call
            yield i, token.text


def metric_names(expr: str) -> set[str]:
    """The metric names the expression selects (Grafana's ``label_values(selector, label)`` included)."""
    grafana = _LABEL_VALUES.fullmatch(expr)
    if grafana is not None:
        tokens = tokenize(grafana.group("args"))
        commas = [i for i, t in enumerate(tokens) if t.kind == "comma"]
        if not commas:
            return set()  # label_values(label): every series, no metric named
        tokens = tokens[:commas[-1]]
    else:
        tokens = tokenize(expr)
    return {name for _, name in _metric_tokens(tokens)}


def _is_ratio_gauge(name: str, ratio_names: Collection[str], suffixes: Collection[str]) -> bool:
    return name in ratio_names or name in RATIO_NAMES or any(name.endswith(s) for s in suffixes)


def summed_ratios(expr: str, ratio_names: Collection[str] = (),
                  suffixes: Collection[str] = RATIO_SUFFIXES) -> list[str]:
    """Problems: every ``sum`` whose argument divides (by anything but a number), takes a quantile, or
    selects a gauge that is a ratio, an age or a 0/1 state (``ratio_names``, or a name ending in one of
    ``suffixes``). An empty list means the expression adds up only things that add up."""
    tokens = tokenize(expr)
    problems: list[str] = []
    for i, token in enumerate(tokens):
        if not (token.kind == "ident" and token.text.lower() == "sum"):
            continue
        j = i + 1
        if j < len(tokens) and tokens[j].kind == "ident" and tokens[j].text.lower() in ("by", "without"):
            if j + 1 >= len(tokens) or tokens[j + 1].kind != "lparen":
                raise PromQLError(f"{tokens[j].text} without a label list at {tokens[j].pos}")
            j = _closing(tokens, j + 1) + 1
        if j >= len(tokens) or tokens[j].kind != "lparen":
            raise PromQLError(f"sum without an argument at {token.pos}")
        end = _closing(tokens, j)
        argument = tokens[j + 1:end]
        shown = expr[tokens[j].pos:tokens[end].pos + 1]
        for k, t in enumerate(argument):
            if t.kind == "op" and t.text == "/":
                after = argument[k + 1] if k + 1 < len(argument) else None
                if after is None or after.kind != "number":
                    problems.append(f"sum over a division (a sum of ratios): sum{shown}")
                    break
        if any(t.kind == "ident" and t.text.lower() == "histogram_quantile" for t in argument):
            problems.append(f"sum over a quantile: sum{shown}")
        for _, name in _metric_tokens(argument):
            if _is_ratio_gauge(name, ratio_names, suffixes):
                problems.append(f"sum over {name}, a ratio, age or 0/1 gauge (use max, min or avg): sum{shown}")
    return problems


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def exposed_names(text: str) -> set[str]:
    """Every series name a Prometheus text exposition can show, from its families' types: a counter family
    without samples yet (no label values seen) still counts, so a panel on it is not flagged as unknown."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names
