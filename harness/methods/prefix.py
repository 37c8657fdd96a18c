"""`prefix`: prefix tuning (Li & Liang 2021) through peft - learned key/value vectors
prepended to every attention layer, optionally produced by a reparametrization MLP."""
from __future__ import annotations

from pydantic import Field

from harness.methods.common import TrainedOptions, peft_task_type
from harness.methods.common import save_pretrained as save  # noqa: F401 (the method interface)

NAME = "prefix"
TRAINS = True


class Options(TrainedOptions):
    """peft PrefixTuningConfig; encoders also train their classification head."""

    lr: float = Field(1e-2, gt=0, le=1, description="peak learning rate (usual: 1e-3 to 3e-2)")
    num_virtual_tokens: int = Field(16, gt=0, le=512, description="prefix length")
    prefix_projection: bool = Field(
        False, description="produce the prefix through a 2-layer MLP (the paper's reparametrization)"
    )
    projection_hidden_size: int = Field(512, gt=0, description="hidden size of that MLP")


def apply(model, options: dict, family: str, head: str):
    from peft import PrefixTuningConfig, get_peft_model

    config = PrefixTuningConfig(
        num_virtual_tokens=options["num_virtual_tokens"],
        prefix_projection=options["prefix_projection"],
        encoder_hidden_size=options["projection_hidden_size"],
        task_type=peft_task_type(head),
    )
    return get_peft_model(model, config)

