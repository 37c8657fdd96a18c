"""How error messages quote a user's value: bounded in size and in the work it takes, so a huge
or deeply nested value (a YAML bomb, a megabyte of text) gives a short message at once."""
from __future__ import annotations

import reprlib

MAX_QUOTE = 200  # characters of a quoted value in a message


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()  # Python 3.11's Repr takes no keyword arguments
    short.maxlevel, short.maxstring, short.maxother, short.maxlong = 3, 80, 80, 40
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 8
    return short


_SHORT = _short_repr()


def quote(value: object) -> str:
    """repr(value), cut to at most MAX_QUOTE characters (reprlib's '...' where it was shortened)."""
    try:
        text = _SHORT.repr(value)
    except ValueError:  # an integer beyond Python's int-to-text digit limit
        return f"<a {type(value).__name__} too large to show>"
    return text if len(text) <= MAX_QUOTE else text[:MAX_QUOTE - 3] + "..."


def cut(text: str) -> str:
    """A message line cut to a readable length (the last guard: quote() bounds what goes in)."""
    limit = 4 * MAX_QUOTE
    return text if len(text) <= limit else text[:limit - 3] + "..."
