"""`ia3`: (IA)^3 - learned rescaling of keys, values and feed-forward activations (peft; every other
IA3Config field under peft's name)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.methods import peft_options
from harness.methods.common import save_pretrained as save  # noqa: F401 (the method interface)

NAME = "ia3"
TRAINS = True
MERGES_FOR_SCORING = True
PEFT_ADAPTER = True  # on decoders (see harness.methods.Method)


class Options(peft_options.PeftOptions):
    """peft IA3Config (any other of its fields under peft's name); encoders also train their
    classification head."""

    PEFT_CONFIG = "IA3Config"
    PEFT_FIELDS = {"target_modules": "target_modules", "feedforward_modules": "feedforward_modules"}

    lr: float = Field(3e-3, gt=0, le=1, description="peak learning rate (usual: 1e-3 to 1e-2)")
    target_modules: Literal["auto"] | list[str] = Field(
        "auto", description="modules to rescale; auto: peft's default for the architecture "
        "(Llama: k_proj, v_proj, down_proj; BERT: key, value, output.dense; GPT-2: c_attn, mlp.c_proj)"
    )
    feedforward_modules: Literal["auto"] | list[str] = Field(
        "auto", description="which of target_modules are feed-forward (scaled on their input)"
    )


def apply(model, options: dict, family: str, head: str):
    return peft_options.apply(Options, model, options, head)
