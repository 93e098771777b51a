"""Hardened YAML loading for configs and admin API bodies.

PyYAML's ``safe_load`` is safe against code execution but not against resource exhaustion or silent
mistakes, so everything that reads a config goes through this module instead:

- **Alias bombs.** Aliases are allowed (anchors keep real configs DRY, and merge keys ``<<: *base``
  are common), but the nodes they add by expansion are counted while the document is built, with
  every subtree's expanded size memoised, and a document whose aliases add more than
  ``MAX_ALIAS_NODES`` nodes is refused. Counting is linear in the composed graph, so a 400-byte
  bomb that would expand to billions of nodes is refused after ~10,000 steps. Refusing aliases
  outright would break legitimate anchors; a bound on what they *add* (not on the document's total
  size) keeps large alias-free documents working, whose size is already bounded by the file or body.
- **Duplicate keys** are refused at any depth (YAML requires unique keys; PyYAML keeps the last).
- **Depth** is capped at ``MAX_DEPTH`` nested mappings/sequences: PyYAML's pure-Python composer
  recurses per level and dies with ``RecursionError`` (a traceback) a few hundred levels down.
- **Speed.** ``CSafeLoader`` (libyaml) composes the node graph where it is installed, and one
  iterative-enough Python pass (below) builds the data, counts aliases and checks keys; PyYAML's own
  constructor, with its generator per collection, was half the remaining time.

Both loader classes give the same error messages: construction and checks are this module's code
for both, and a syntax error found by libyaml (whose wording differs from PyYAML's) is re-parsed
with the pure-Python loader from the start of the failing document to report PyYAML's wording,
which is what ``config check`` has always printed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, cast

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.error import Mark, MarkedYAMLError
from yaml.events import MappingStartEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import ParserError
from yaml.reader import Reader
from yaml.scanner import ScannerError

if TYPE_CHECKING:
    from yaml._yaml import Mark as CMark

    # Where a parser says a node or an event is: PyYAML's ``Mark``, or libyaml's (same fields).
    AnyMark: TypeAlias = Mark | CMark

from schemas.echo import echo, echo_str
from schemas.errors import TokenPoolsError

MAX_ALIAS_NODES = 10_000  # nodes aliases may add to one document by expansion
MAX_DEPTH = 64  # nested mappings/sequences per document (configs need fewer than 10)
MAX_PROBLEM = 200  # characters of a YAML problem text (it can quote a tag or a key)

_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_INT = "tag:yaml.org,2002:int"
_MAP = "tag:yaml.org,2002:map"
_SET = "tag:yaml.org,2002:set"
_OMAP = "tag:yaml.org,2002:omap"
_PAIRS = "tag:yaml.org,2002:pairs"
_MERGE = "tag:yaml.org,2002:merge"
_VALUE = "tag:yaml.org,2002:value"
_COLLECTION_TAGS = {_SEQ: "sequence", _OMAP: "sequence", _PAIRS: "sequence", _MAP: "mapping", _SET: "mapping"}

DEPTH_PROBLEM = f"mappings and sequences are nested more than {MAX_DEPTH} levels deep; flatten the document"
ALIAS_PROBLEM = (
    f"aliases expand this document by more than {MAX_ALIAS_NODES} nodes (an alias bomb?); "
    "write the repeated values out or use fewer aliases"
)
RECURSIVE_PROBLEM = "an alias refers to a node that contains it; a config cannot be recursive"


class YAMLInputError(TokenPoolsError, ValueError):
    """A document that is not acceptable YAML; ``str()`` is one short line.

    ``document`` is 1-based, or 0 when the problem is in the file as a whole (an unacceptable
    character is found before any parsing, as PyYAML's reader does).
    """

    def __init__(self, problem: str, document: int, line: int | None = None, column: int | None = None) -> None:
        self.problem = echo_str(problem, MAX_PROBLEM)
        self.document = document
        self.line = line
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" at line {self.line}, column {self.column}" if self.line is not None else ""
        return f"invalid YAML{where}: {self.problem}"


class _Refused(MarkedYAMLError):
    """A problem this module found (not a parser's), so it is never re-parsed for wording."""

    def __init__(self, problem: str, mark: AnyMark | None) -> None:
        # The stubs take only PyYAML's Mark; libyaml's is read the same way (line, column).
        super().__init__(problem=problem, problem_mark=cast("Mark | None", mark))


class _Builder:
    """Builds Python data from a composed node graph: the checks above, in one recursive pass.

    Recursion is bounded: a collection is descended into only on its first occurrence (aliases are
    memoised) and only ``MAX_DEPTH`` levels deep. Mixed into a PyYAML loader so it can use the safe
    constructors for scalars (ints, floats, booleans, timestamps, binary).
    """

    yaml_constructors: ClassVar[dict[str | None, Any]]
    _memo: dict[Node, tuple[Any, int | None]]
    _added: int  # nodes added by alias expansion so far in this document
    _nodes: int  # nodes built so far in this document, aliases expanded

    _resolved: dict[tuple[str, tuple[bool, bool]], str]

    def __init__(self, stream: str) -> None:
        super().__init__(stream)  # type: ignore[call-arg]
        self._resolved = {}

    def resolve(self, kind: type, value: Any, implicit: Any) -> str:
        # Called for every node by both composers; a plain scalar's tag depends only on its text,
        # and configs repeat the same few ('elastic', '1', 'true'), so resolve each text once.
        if kind is not ScalarNode or implicit is None:
            return super().resolve(kind, value, implicit)  # type: ignore[misc,no-any-return]
        key = (value, implicit)  # both composers pass implicit as a (plain, quoted) tuple
        tag = self._resolved.get(key)
        if tag is None:
            if len(self._resolved) > 50_000:  # unique values (keys' digests) must not grow it without bound
                self._resolved.clear()
            tag = self._resolved[key] = super().resolve(kind, value, implicit)  # type: ignore[misc]
        return tag

    def construct_document(self, node: Node) -> Any:
        self._memo, self._added, self._nodes = {}, 0, 0
        try:
            return self._build(node, 0)
        finally:
            self._memo = {}

    def _build(self, node: Node, depth: int) -> Any:
        if node.__class__ is ScalarNode:
            self._nodes += 1
            tag = node.tag
            if tag == _STR:
                return node.value
            if tag in _COLLECTION_TAGS:
                raise ConstructorError(None, None, f"expected a {_COLLECTION_TAGS[tag]} node, but found scalar",
                                       node.start_mark)
            if tag == _INT and node.value.isdigit() and (node.value[0] != "0" or node.value == "0"):
                return int(node.value)  # the common case, without PyYAML's sign/base/sexagesimal parsing
            ctor = self.yaml_constructors.get(tag)
            if ctor is None:
                raise ConstructorError(None, None, f"could not determine a constructor for the tag {echo(tag)}",
                                       node.start_mark)
            try:
                return ctor(self, node)
            except yaml.YAMLError:
                raise
            except (ValueError, KeyError, AttributeError, TypeError, OverflowError):
                # PyYAML's scalar constructors trust the resolver; an explicit tag on garbage
                # ('!!int 0x', a 13th month) fails inside them with a plain Python error.
                raise ConstructorError(None, None, f"cannot read {echo(node.value)} as {echo(tag)}",
                                       node.start_mark) from None
        hit = self._memo.get(node)
        if hit is not None:  # an alias: its subtree again, counted but not rebuilt
            data, size = hit
            if size is None:
                raise _Refused(RECURSIVE_PROBLEM, node.start_mark)
            self._nodes += size
            self._added += size
            if self._added > MAX_ALIAS_NODES:
                raise _Refused(ALIAS_PROBLEM, None)  # the innermost collection being built adds its mark
            return data
        depth += 1
        if depth > MAX_DEPTH:
            raise _Refused(DEPTH_PROBLEM, node.start_mark)
        self._memo[node] = (None, None)  # in progress: an alias to it from inside is recursion
        before = self._nodes
        try:
            data = (self._sequence(node, depth) if node.__class__ is SequenceNode
                    else self._mapping(node, depth))  # type: ignore[arg-type]
        except _Refused as exc:
            if exc.problem_mark is None:
                exc.problem_mark = node.start_mark
            raise
        self._nodes += 1
        self._memo[node] = (data, self._nodes - before)
        return data

    def _sequence(self, node: SequenceNode, depth: int) -> Any:
        tag = node.tag
        items = [self._build(child, depth) for child in node.value]
        if tag == _SEQ:
            return items
        if tag in (_OMAP, _PAIRS):
            pairs: list[tuple[Any, Any]] = []
            for child, item in zip(node.value, items, strict=True):
                if not isinstance(item, dict) or len(item) != 1:
                    raise ConstructorError("while constructing an ordered map", node.start_mark,
                                           "expected a mapping of length 1", child.start_mark)
                pairs.extend(item.items())
            return pairs
        if tag in _COLLECTION_TAGS:
            raise ConstructorError(None, None, f"expected a {_COLLECTION_TAGS[tag]} node, but found sequence",
                                   node.start_mark)
        raise ConstructorError(None, None, f"could not determine a constructor for the tag {echo(tag)}",
                               node.start_mark)

    def _mapping(self, node: MappingNode, depth: int) -> Any:
        tag = node.tag
        if tag not in (_MAP, _SET):
            problem = (f"expected a {_COLLECTION_TAGS[tag]} node, but found mapping" if tag in _COLLECTION_TAGS
                       else f"could not determine a constructor for the tag {echo(tag)}")
            raise ConstructorError(None, None, problem, node.start_mark)
        own: dict[Any, Any] = {}
        merges: list[dict[Any, Any]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merges.extend(self._merge(node, value_node, depth))
                continue
            if key_node.__class__ is ScalarNode and key_node.tag == _VALUE:  # PyYAML reads a '=' key as a string
                self._nodes += 1
                key: Any = key_node.value
            else:
                key = self._build(key_node, depth)
            try:
                seen = key in own
            except TypeError:
                raise ConstructorError("while constructing a mapping", node.start_mark, "found unhashable key",
                                       key_node.start_mark) from None
            if seen:
                raise _Refused(f"duplicate key {echo(key)} (first at line {self._first_line(node, key, depth)}); "
                               "keep one of them", key_node.start_mark)
            own[key] = self._build(value_node, depth)
        if merges:  # YAML merge keys: own keys win, then earlier merged mappings win over later ones
            merged: dict[Any, Any] = {}
            for mapping in reversed(merges):
                merged.update(mapping)
            merged.update(own)
            own = merged
        return set(own) if tag == _SET else own

    def _merge(self, node: MappingNode, value_node: Node, depth: int) -> list[dict[Any, Any]]:
        subnodes: list[Any] = value_node.value if value_node.__class__ is SequenceNode else [value_node]
        if value_node.__class__ is ScalarNode:
            raise ConstructorError("while constructing a mapping", node.start_mark,
                                   f"expected a mapping or list of mappings for merging, but found {value_node.id}",
                                   value_node.start_mark)
        out = []
        for sub in subnodes:
            if sub.__class__ is not MappingNode:
                raise ConstructorError("while constructing a mapping", node.start_mark,
                                       f"expected a mapping for merging, but found {sub.id}", sub.start_mark)
            data = self._build(sub, depth)
            out.append(data if isinstance(data, dict) else dict.fromkeys(data))
        return out

    def _first_line(self, node: MappingNode, key: Any, depth: int) -> int:
        """Line of a key's first occurrence (error path only, so rebuilding scalar keys is fine).

        Only scalar keys can repeat: a mapping or sequence as a key is unhashable and refused.
        """
        for key_node, _ in node.value:
            if key_node.__class__ is ScalarNode and key_node.tag != _MERGE:
                with contextlib.suppress(yaml.YAMLError):
                    if self._build(key_node, depth) == key:
                        return int(key_node.start_mark.line) + 1
        return int(node.start_mark.line) + 1


class SafeConfigLoader(_Builder, yaml.SafeLoader):
    """PyYAML's pure-Python safe loader, hardened (the reference for error wording)."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        # The pure-Python composer recurses per level: stop at the depth the builder allows, at
        # the same node, before RecursionError does.
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        if not isinstance(event, MappingStartEvent | SequenceStartEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(DEPTH_PROBLEM, event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


CConfigLoader: type | None = None
if hasattr(yaml, "CSafeLoader"):

    class _CConfigLoader(_Builder, yaml.CSafeLoader):
        """libyaml's parser and composer (C), with this module's builder."""

    CConfigLoader = _CConfigLoader

#: What configs and admin bodies are read with: the C loader where libyaml is installed.
LOADER: type = CConfigLoader or SafeConfigLoader


def load_all(text: str | bytes, loader: type = LOADER) -> Iterator[tuple[int, Any]]:
    """``(document index, data)`` for each document (1-based; empty documents give None).

    Raises ``YAMLInputError`` at the first document that is not acceptable; documents before it
    have been yielded.
    """
    text = _decode(text)
    _check_characters(text)
    stream = loader(text)
    index = 0
    try:
        while True:
            index += 1  # the document being read, also while its start is parsed
            if not stream.check_node():
                break
            yield index, stream.construct_document(stream.get_node())
    except yaml.YAMLError as exc:
        if loader is not SafeConfigLoader and isinstance(exc, ScannerError | ParserError | ComposerError):
            exc = _pure_wording(text, index, exc)
        raise _input_error(exc, index) from None
    finally:
        stream.dispose()


def load_one(text: str | bytes, loader: type = LOADER) -> Any:
    """One document (an admin API body); a second document is an error, as with ``yaml.safe_load``."""
    data = None
    for index, doc in load_all(text, loader):
        if index > 1:
            raise YAMLInputError("expected a single document, but found another document", index)
        data = doc
    return data


def _decode(text: str | bytes) -> str:
    if isinstance(text, str):
        return text
    try:
        if text.startswith((b"\xff\xfe", b"\xfe\xff")):  # a UTF-16 BOM, as PyYAML's reader accepts
            return text.decode("utf-16")
        return text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YAMLInputError(f"not valid UTF-8 (byte {exc.start})", 0) from None


def _check_characters(text: str) -> None:
    """PyYAML's reader refuses these for the whole stream up front; libyaml only when it gets there.

    Checked here, for both loaders, so the answer is the same and names the line.
    """
    found = Reader.NON_PRINTABLE.search(text)
    if found is None:
        return
    pos = found.start()
    line_start = text.rfind("\n", 0, pos) + 1
    raise YAMLInputError(f"unacceptable character #x{ord(found.group()):04x}: special characters are not allowed",
                         0, text.count("\n", 0, pos) + 1, pos - line_start + 1)


def _pure_wording(text: str, index: int, exc: yaml.YAMLError) -> yaml.YAMLError:
    """The pure-Python loader's error for document ``index``, parsed from that document's start.

    Only the failing document onwards is re-read, so a bad line at the end of a 50 MB file does not
    cost the pure-Python parse of the whole file. Falls back to libyaml's error if the start cannot
    be found or the pure-Python loader does not fail in the same document.
    """
    found = _document_start(text, index)
    if found is None:
        return exc
    start, first = found
    tail = " " * start.column + text[start.index:]  # same columns, so indentation means the same
    stream = SafeConfigLoader(tail)
    number = first - 1
    try:
        while True:
            number += 1
            if not stream.check_node():
                break
            stream.construct_document(cast(Node, stream.get_node()))  # check_node(): there is one
    except MarkedYAMLError as pure:
        if number != index:
            return exc  # the two parsers disagree on where the error is: keep libyaml's
        for mark in {id(m): m for m in (pure.problem_mark, pure.context_mark) if m is not None}.values():
            mark.line += start.line  # once per mark: both can be the same object
        return pure
    except yaml.YAMLError as pure:
        return pure if number == index else exc
    finally:
        stream.dispose()
    return exc


def _document_start(text: str, index: int) -> tuple[AnyMark, int] | None:
    """Where document ``index`` starts and its number, from libyaml's events (only on the error path).

    When its own start is what fails to parse (a bad directive, or a document that ends where the
    next cannot start), the start of the document before it.
    """
    if index <= 1:
        return Mark("<unicode string>", 0, 0, 0, None, 0), 1  # no buffer: the pointer is never read
    seen = 0
    previous: AnyMark | None = None
    try:
        for event in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if isinstance(event, yaml.DocumentStartEvent):
                seen += 1
                if seen == index and event.start_mark is not None:  # libyaml marks every event
                    return event.start_mark, index
                previous = event.start_mark
    except yaml.YAMLError:
        pass
    return (previous, index - 1) if previous is not None and seen == index - 1 else None


def _input_error(exc: yaml.YAMLError, index: int) -> YAMLInputError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None:
        return YAMLInputError(problem, index)
    return YAMLInputError(problem, index, mark.line + 1, mark.column + 1)
