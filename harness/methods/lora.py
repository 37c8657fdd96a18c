"""`lora`: low-rank adapters through peft (LoRA; DoRA with `use_dora`; every other LoraConfig field,
e.g. `use_rslora`, `init_lora_weights: pissa`, `layers_to_transform`, under peft's name)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.methods import peft_options
from harness.methods.common import NotApplicable
from harness.methods.common import save_pretrained as save  # noqa: F401 (the method interface)

NAME = "lora"
TRAINS = True
MERGES_FOR_SCORING = True
PEFT_ADAPTER = True  # on decoders (see harness.methods.Method)


class Options(peft_options.PeftOptions):
    """peft LoraConfig (any other of its fields under peft's name); encoders also train their
    classification head (peft modules_to_save)."""

    PEFT_CONFIG = "LoraConfig"
    PEFT_FIELDS = {"r": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "target_modules": "target_modules",
                   "use_dora": "use_dora"}

    lr: float = Field(2e-4, gt=0, le=1, description="peak learning rate (usual: 1e-4 to 2e-3)")
    r: int = Field(8, gt=0, description="rank of the update matrices")
    alpha: float = Field(16, gt=0, description="scaling: the update is multiplied by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear", description="'all-linear' or module name suffixes, e.g. [q_proj, v_proj]"
    )
    use_dora: bool = Field(False, description="weight-decomposed LoRA (DoRA)")


def apply(model, options: dict, family: str, head: str):
    model = peft_options.apply(Options, model, options, head)
    _check_rank(model, options["r"])
    return model


def _check_rank(model, r: int) -> None:
    """A rank-r update of a layer narrower than r still has rank at most its width: the extra
    parameters train nothing, so such an r is refused (the run is skipped, saying why)."""
    from peft.tuners.lora import LoraLayer

    widths = [(min(m.in_features, m.out_features), name, m.in_features, m.out_features)
              for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    width, name, n_in, n_out = min(widths, default=(r, "", 0, 0))
    if r > width:
        raise NotApplicable(f"lora r {r} is larger than layer {name}'s width {width} ({n_in} inputs, {n_out} "
                            f"outputs), which bounds the update's rank: choose r <= {width}")
