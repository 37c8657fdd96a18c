"""`ia3`: (IA)^3 - learned rescaling of keys, values and feed-forward activations (peft)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.methods.common import TrainedOptions, peft_task_type
from harness.methods.common import save_pretrained as save  # noqa: F401 (the method interface)

NAME = "ia3"
TRAINS = True
MERGES_FOR_SCORING = True
PEFT_ADAPTER = True  # on decoders (see harness.methods.Method)


class Options(TrainedOptions):
    """peft IA3Config; encoders also train their classification head."""

    lr: float = Field(3e-3, gt=0, le=1, description="peak learning rate (usual: 1e-3 to 1e-2)")
    target_modules: Literal["auto"] | list[str] = Field(
        "auto", description="modules to rescale; auto: peft's default for the architecture "
        "(Llama: k_proj, v_proj, down_proj; BERT: key, value, output.dense; GPT-2: c_attn, mlp.c_proj)"
    )
    feedforward_modules: Literal["auto"] | list[str] = Field(
        "auto", description="which of target_modules are feed-forward (scaled on their input)"
    )


def apply(model, options: dict, family: str, head: str):
    from peft import IA3Config, get_peft_model

    auto = lambda key: None if options[key] == "auto" else options[key]  # noqa: E731
    config = IA3Config(
        target_modules=auto("target_modules"),
        feedforward_modules=auto("feedforward_modules"),
        task_type=peft_task_type(head),
    )
    return get_peft_model(model, config)

