"""`full`: full fine-tuning, every parameter trains."""
from __future__ import annotations

from pydantic import Field

from harness.methods.common import TrainedOptions
from harness.methods.common import save_pretrained as save  # noqa: F401 (the method interface)

NAME = "full"
TRAINS = True


class Options(TrainedOptions):
    """Every weight trains; the artifact is the whole model."""

    lr: float = Field(2e-5, gt=0, le=1, description="peak learning rate (usual: 1e-5 to 1e-4)")


def apply(model, options: dict, family: str, head: str):
    for param in model.parameters():
        param.requires_grad_(True)
    return model

