"""Every field of a method's peft config, as a method option.

A peft-backed method's Options declare the few fields the harness documents, under its own
names where they differ (LoRA's `alpha` is peft's `lora_alpha`), and accept every other field
of the peft config class under peft's name (`use_rslora`, `init_lora_weights`,
`layers_to_transform`, `rank_pattern`, `modules_to_save`, ...). Those are checked when the
matrix is validated: a field the config class lacks is an unknown field, and the config is then
built, so its own __post_init__ validates the values; either error is located at the field
(`methods[2].lora.init_lora_weights: ...`).

Only the fields a matrix sets become options, so they enter the run_id only when set: the
run_ids of matrices that set none are those from before. peft (and torch with it) is imported
only for a matrix that sets one: `harness validate` of the default matrix stays light.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, ClassVar

from pydantic import ConfigDict, TypeAdapter, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from harness.methods.common import TrainedOptions, peft_task_type

# Fields of every peft config that the harness sets itself (from the model and the run).
SET_BY_HARNESS = ("task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
                  "inference_mode")
AUTO = "auto"  # a declared option's value meaning peft's per-architecture default (None in peft)


class PeftOptions(TrainedOptions):
    """Options of a method built on one peft config class; other fields of that class pass through."""

    model_config = ConfigDict(extra="allow")
    PEFT_CONFIG: ClassVar[str]  # the config class's name in peft, e.g. "LoraConfig"
    PEFT_FIELDS: ClassVar[dict[str, str]] = {}  # declared option -> its peft field

    @model_validator(mode="after")
    def _check_peft_fields(self):
        if self.model_extra:
            problems = peft_problems(type(self), self.model_dump())
            if problems:
                raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self


def config_class(options_cls: type[PeftOptions]):
    import peft

    return getattr(peft, options_cls.PEFT_CONFIG)


def passed_through(options_cls: type[PeftOptions], options: dict) -> dict:
    """The options that are peft fields set under peft's own name (not declared by the method)."""
    return {k: v for k, v in options.items() if k not in options_cls.model_fields}


def peft_arguments(options_cls: type[PeftOptions], options: dict) -> dict:
    """The peft config's keyword arguments for resolved method options."""
    declared = {peft: None if options[name] == AUTO else options[name] for name, peft in options_cls.PEFT_FIELDS.items()}
    return {**declared, **passed_through(options_cls, options)}


def build_config(options_cls: type[PeftOptions], options: dict, head: str):
    """The peft config of a run (its task type from the model's head)."""
    return config_class(options_cls)(**peft_arguments(options_cls, options), task_type=peft_task_type(head))


def apply(options_cls: type[PeftOptions], model, options: dict, head: str):
    from peft import get_peft_model

    return get_peft_model(model, build_config(options_cls, options, head))


def peft_problems(options_cls: type[PeftOptions], options: dict) -> list[InitErrorDetails]:
    """Pydantic error details, located at the option, for passed-through fields the config
    class does not have or whose values its own validation refuses."""
    renamed = {peft: name for name, peft in options_cls.PEFT_FIELDS.items()}
    return config_problems(config_class(options_cls), peft_arguments(options_cls, options),
                           passed_through(options_cls, options), renamed=renamed,
                           declared=set(options_cls.model_fields))


def config_problems(cls, arguments: dict, passed: dict, *, renamed: dict[str, str] | None = None,
                    declared: set[str] = frozenset(), loc: tuple = ()) -> list[InitErrorDetails]:
    """Errors (at `loc` + the field) for the `passed` fields of peft config class `cls` that it
    lacks or that the harness sets, else for what `cls(**arguments)` refuses."""
    renamed = renamed or {}
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    problems = [_error(loc + (key,), value, _field_problem(key, cls.__name__, fields, renamed, declared))
                for key, value in passed.items() if key in SET_BY_HARNESS or key in renamed or key not in fields]
    hints = _type_hints(cls)
    problems += [_error(loc + (key,), value, f"peft's {cls.__name__}.{key} is declared {_type_name(hints[key])}")
                 for key, value in passed.items() if key in fields and key in hints
                 and not _fits(hints[key], value)]
    if problems:
        return problems
    try:
        cls(**arguments)
    except (ValueError, TypeError) as err:
        named = [key for key in passed if key in str(err)]
        key = named[0] if len(named) == 1 else None
        return [_error(loc + ((key,) if key else ()), passed.get(key), f"peft's {cls.__name__} refuses these "
                       f"options: {err}")]
    return []


def _type_hints(cls) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # a forward reference peft does not resolve: its own validation still runs
        return {}


def _fits(hint, value) -> bool:
    """Whether `value` validates as the peft field's declared type. A Literal entry with a
    placeholder (LoraConfig's 'pissa_niter_[number of iters]') accepts what starts like it."""
    try:
        TypeAdapter(hint).validate_python(value)
    except ValidationError:
        return isinstance(value, str) and any(value.startswith(entry.split("[")[0]) for entry in _literals(hint)
                                              if "[" in entry)
    except Exception:  # a type pydantic cannot check (a torch class): left to peft
        return True
    return True


def _literals(hint) -> list[str]:
    if typing.get_origin(hint) is typing.Literal:
        return [a for a in typing.get_args(hint) if isinstance(a, str)]
    return [entry for arg in typing.get_args(hint) for entry in _literals(arg)]


def _type_name(hint) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _field_problem(key: str, class_name: str, fields: set[str], renamed: dict[str, str], declared: set[str]) -> str:
    if key in SET_BY_HARNESS:
        return f"set by the harness (peft's {class_name}.{key} comes from the model and the run)"
    if key in renamed:
        return f"this is the `{renamed[key]}` option here (peft's {class_name}.{key})"
    names = sorted(declared | (fields - set(SET_BY_HARNESS) - set(renamed)))
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    return (f"unknown field (neither an option of this method nor a field of peft's {class_name})"
            + (f"; did you mean {close[0]!r}?" if close else ""))


def _error(loc: tuple, value: Any, message: str) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError("peft_option", "{message}", {"message": message}),
                            loc=loc, input=value)
