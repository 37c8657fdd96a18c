"""`peft`: a peft adapter config applied as it is - an `adapter_config.json` (what peft's
save_pretrained writes, and what peft's method comparison keeps per experiment) or its contents.

    methods:
      - peft: adapters/lora-rslora.json             # a path, relative to the matrix file
      - peft: {config: adapters/vera.json, lr: 1.0e-3}

The file is read when the matrix is validated and the options keep its contents, so the run_id
hashes the configuration, not where the file lies. Fields the harness sets itself (task_type
from the model's head, base_model_name_or_path, inference_mode, ...) are dropped from the file;
every other field is checked by peft's config class for its `peft_type`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from harness.methods import peft_options
from harness.methods.common import TrainedOptions, peft_task_type
from harness.methods.common import save_pretrained as save  # noqa: F401 (the method interface)

NAME = "peft"
TRAINS = True
PEFT_ADAPTER = True  # any peft adapter: disabling it gives the base back (see harness.methods.Method)
SHORTHAND = "config"  # `peft: <path>` means `peft: {config: <path>}`
CONFIG_FILE = "adapter_config.json"


class Options(TrainedOptions):
    """A peft adapter config (adapter_config.json) applied as it is."""

    lr: float = Field(2e-4, gt=0, le=1, description="peak learning rate (default 2e-4: LoRA's)")
    config: dict[str, Any] = Field(
        description="path to a peft adapter_config.json (or a folder holding one), relative to the matrix "
        "file; or the config's fields, with peft_type. Kept as the file's contents (the run_id hashes them)")

    @field_validator("config", mode="before")
    @classmethod
    def _read_and_check(cls, value, info: ValidationInfo):
        if isinstance(value, (str, Path)):
            value = _read(Path(value), (info.context or {}).get("base_dir"))
        if not isinstance(value, dict):
            return value  # pydantic says what was expected
        fields = {k: v for k, v in value.items() if k not in peft_options.SET_BY_HARNESS}
        problems = _problems(value.get("peft_type"), fields)
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, problems)
        return {"peft_type": value["peft_type"], **fields}


def _read(path: Path, base_dir: str | None) -> dict:
    path = path.expanduser()
    if not path.is_absolute() and base_dir:
        path = Path(base_dir) / path
    if path.is_dir():
        path = path / CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path} as a peft adapter config (JSON): {err}") from None


def config_class(peft_type):
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return PEFT_TYPE_TO_CONFIG_MAPPING.get(str(peft_type).upper())


def _problems(peft_type, fields: dict) -> list[InitErrorDetails]:
    if not isinstance(peft_type, str) or config_class(peft_type) is None:
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        known = ", ".join(sorted(str(k.value) for k in PEFT_TYPE_TO_CONFIG_MAPPING))
        message = f"expected one of peft's method types ({known}); got {peft_type!r}"
        return [InitErrorDetails(type=PydanticCustomError("peft_option", "{message}", {"message": message}),
                                 loc=("peft_type",), input=peft_type)]
    fields = {k: v for k, v in fields.items() if k != "peft_type"}
    return peft_options.config_problems(config_class(peft_type), fields, fields)


def apply(model, options: dict, family: str, head: str):
    from peft import get_peft_model

    fields = {k: v for k, v in options["config"].items() if k != "peft_type"}
    config = config_class(options["config"]["peft_type"])(**fields, task_type=peft_task_type(head))
    return get_peft_model(model, config)
