"""`prompt`: prompt tuning (Lester et al. 2021) through peft - learned input embeddings
prepended to every example; the model itself stays frozen."""
from __future__ import annotations

from pydantic import Field

from harness.methods import peft_options
from harness.methods.common import save_pretrained as save  # noqa: F401 (the method interface)

NAME = "prompt"
TRAINS = True
PEFT_ADAPTER = True  # on decoders (see harness.methods.Method)


class Options(peft_options.PeftOptions):
    """peft PromptTuningConfig (random init unless `prompt_tuning_init` says otherwise; any other of
    its fields under peft's name); encoders also train their classification head."""

    PEFT_CONFIG = "PromptTuningConfig"
    PEFT_FIELDS = {"num_virtual_tokens": "num_virtual_tokens"}

    lr: float = Field(1e-2, gt=0, le=1, description="peak learning rate (usual: 1e-3 to 3e-1)")
    num_virtual_tokens: int = Field(16, gt=0, le=512, description="soft prompt length")


def apply(model, options: dict, family: str, head: str):
    return peft_options.apply(Options, model, options, head)
