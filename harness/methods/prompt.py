"""`prompt`: prompt tuning (Lester et al. 2021) through peft - learned input embeddings
prepended to every example; the model itself stays frozen."""
from __future__ import annotations

from pydantic import Field

from harness.methods.common import TrainedOptions, peft_task_type
from harness.methods.common import save_pretrained as save  # noqa: F401 (the method interface)

NAME = "prompt"
TRAINS = True
PEFT_ADAPTER = True  # on decoders (see harness.methods.Method)


class Options(TrainedOptions):
    """peft PromptTuningConfig (random init); encoders also train their classification head."""

    lr: float = Field(1e-2, gt=0, le=1, description="peak learning rate (usual: 1e-3 to 3e-1)")
    num_virtual_tokens: int = Field(16, gt=0, le=512, description="soft prompt length")


def apply(model, options: dict, family: str, head: str):
    from peft import PromptTuningConfig, get_peft_model

    config = PromptTuningConfig(
        num_virtual_tokens=options["num_virtual_tokens"],
        task_type=peft_task_type(head),
    )
    return get_peft_model(model, config)

