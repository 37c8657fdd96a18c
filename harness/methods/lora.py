"""`lora`: low-rank adapters through peft (LoRA; DoRA with `use_dora`)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.methods.common import NotApplicable, TrainedOptions, peft_task_type
from harness.methods.common import save_pretrained as save  # noqa: F401 (the method interface)

NAME = "lora"
TRAINS = True
MERGES_FOR_SCORING = True
PEFT_ADAPTER = True  # on decoders (see harness.methods.Method)


class Options(TrainedOptions):
    """peft LoraConfig; encoders also train their classification head (peft modules_to_save)."""

    lr: float = Field(2e-4, gt=0, le=1, description="peak learning rate (usual: 1e-4 to 2e-3)")
    r: int = Field(8, gt=0, description="rank of the update matrices")
    alpha: float = Field(16, gt=0, description="scaling: the update is multiplied by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear", description="'all-linear' or module name suffixes, e.g. [q_proj, v_proj]"
    )
    use_dora: bool = Field(False, description="weight-decomposed LoRA (DoRA)")


def apply(model, options: dict, family: str, head: str):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=options["r"],
        lora_alpha=options["alpha"],
        lora_dropout=options["dropout"],
        target_modules=options["target_modules"],
        use_dora=options["use_dora"],
        task_type=peft_task_type(head),
    )
    model = get_peft_model(model, config)
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

