"""Named plug-ins (methods, tasks, probes) and the matrix entries that name them.

A `Registry` maps names to plug-ins: `register` refuses a second plug-in under a taken name
(as peft's `register_peft_method` does), and `unknown` words the error for a name it lacks,
with the closest known name when there is one (as lm-eval's registry does). Imports nothing
heavy.
"""
from __future__ import annotations

import difflib
from typing import Any, Generic, Iterable, TypeVar

from harness.messages import quote

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """{name: plug-in}; `kind` names what it holds in messages ("method", "task", "probe")."""

    def __init__(self, kind: str, items: Iterable[tuple[str, T]] = ()):
        super().__init__()
        self.kind = kind
        for name, item in items:
            self.register(name, item)

    def register(self, name: str, item: T) -> T:
        if name in self:
            raise ValueError(f"a {self.kind} named {name!r} is already registered ({self[name]!r})")
        self[name] = item
        return item

    def suggestion(self, name: Any) -> str | None:
        """The known name closest to `name`, if any is close."""
        if not isinstance(name, str):
            return None
        close = difflib.get_close_matches(name, list(self), n=1, cutoff=0.6)
        return close[0] if close else None

    def unknown(self, name: Any) -> str:
        """`unknown <kind> 'x': expected one of a, b, c (did you mean 'y'?)`."""
        hint = self.suggestion(name)
        return (f"unknown {self.kind} {quote(name)}: expected one of {', '.join(self)}"
                + (f" (did you mean {hint!r}?)" if hint else ""))


def split_entry(entry: Any) -> tuple[Any, Any] | None:
    """A matrix list item `name` or `{name: options}` -> (name, options or {}); None when it is
    neither (a mapping of several names, a number, ...)."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and len(entry) == 1:
        name, options = next(iter(entry.items()))
        return name, options or {}
    return None


def entry_problem(entry: Any, kind: str) -> str:
    """Why `entry` is neither a name nor one name with its options."""
    got = f"got keys {quote(sorted(map(str, entry)))}" if isinstance(entry, dict) else f"got {quote(entry)}"
    return f"expected a {kind} name, or one {kind} name with its options ({got})"
