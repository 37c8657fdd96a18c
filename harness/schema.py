"""The base of every schema a matrix is validated against (the matrix's own sections, method,
task and probe options): pydantic, unknown fields refused, and one rule pydantic lacks: a
boolean where a number is expected is an error (pydantic reads `true` as 1, so `seeds: [true]`
or `batch_size: yes` would run silently with 1)."""
from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator



class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if _boolean_for_number(value, _leaves(cls.model_fields[info.field_name].annotation)):
            raise ValueError("expected a number, not a boolean")
        return value


def _leaves(annotation) -> list:
    """The types a field accepts: unions and Optional flattened, Annotated unwrapped."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return [leaf for arg in typing.get_args(annotation) for leaf in _leaves(arg)]
    if origin is typing.Annotated:
        return _leaves(typing.get_args(annotation)[0])
    return [annotation]


def _boolean_for_number(value: Any, leaves: list) -> bool:
    """True when `value` is, or a list holds, a boolean where the field wants a number and does
    not take a boolean."""
    if isinstance(value, bool):
        return any(t in (int, float) for t in leaves) and not any(map(_takes_boolean, leaves))
    if isinstance(value, list):
        items = [leaf for t in leaves if typing.get_origin(t) in (list, tuple)
                 for arg in typing.get_args(t)[:1] for leaf in _leaves(arg)]
        return bool(items) and any(_boolean_for_number(v, items) for v in value)
    return False


def _takes_boolean(leaf) -> bool:
    return leaf in (bool, Any) or (typing.get_origin(leaf) is Literal and any(
        isinstance(arg, bool) for arg in typing.get_args(leaf)))
