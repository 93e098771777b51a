"""Bounded echoes of what a client or a config file sent, for error messages.

An error should show the offending value so the user can find it, but a value can be a 1 MB model
name or an alias bomb that expands to gigabytes when printed. Everything quoted back goes through
``echo``: a ``repr`` cut at a fixed length, computed by ``reprlib`` so nested containers are never
expanded in full (``repr`` of a YAML alias bomb is exponential in its size; this is not).
"""

from __future__ import annotations

import reprlib

MAX_ECHO = 80  # characters of a value quoted back in an error message

_repr = reprlib.Repr()
_repr.maxlevel = 2
_repr.maxdict = 4
_repr.maxlist = 4
_repr.maxtuple = 4
_repr.maxset = 4
_repr.maxfrozenset = 4
_repr.maxdeque = 4
_repr.maxarray = 4
_repr.maxstring = MAX_ECHO
_repr.maxlong = 40
_repr.maxother = MAX_ECHO


def echo(value: object, limit: int = MAX_ECHO) -> str:
    """``repr(value)``, at most ``limit`` characters (longer ones end in '...')."""
    text = _repr.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def echo_str(value: str, limit: int = MAX_ECHO) -> str:
    """A string quoted back without its quotes (names in messages such as "no model 'x'")."""
    text = value if len(value) <= limit else value[: limit - 3] + "..."
    return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
