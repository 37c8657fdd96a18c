"""`prefix`: prefix tuning (Li & Liang 2021) - learned key/value vectors prepended to every
attention layer, optionally produced by a reparametrization MLP. Decoders go through peft;
encoders through harness.methods.encoder_prefix (peft's encoder path relies on an argument
transformers 5.24 renamed: see that module)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from harness.methods.common import TrainedOptions, peft_task_type, save_pretrained

NAME = "prefix"
TRAINS = True
PEFT_ADAPTER = True  # on decoders (see harness.methods.Method)
LM_HEADS = ("causal_lm", "seq2seq_lm")  # peft's past_key_values path works for these


class Options(TrainedOptions):
    """peft PrefixTuningConfig; encoders also train their classification head."""

    lr: float = Field(1e-2, gt=0, le=1, description="peak learning rate (usual: 1e-3 to 3e-2)")
    num_virtual_tokens: int = Field(16, gt=0, le=512, description="prefix length")
    prefix_projection: bool = Field(
        False, description="produce the prefix through a 2-layer MLP (the paper's reparametrization)"
    )
    projection_hidden_size: int = Field(512, gt=0, description="hidden size of that MLP")


def apply(model, options: dict, family: str, head: str):
    if head not in LM_HEADS:
        from harness.methods import encoder_prefix  # imports torch: not at validation time

        return encoder_prefix.apply(model, options)
    from peft import PrefixTuningConfig, get_peft_model

    config = PrefixTuningConfig(
        num_virtual_tokens=options["num_virtual_tokens"],
        prefix_projection=options["prefix_projection"],
        encoder_hidden_size=options["projection_hidden_size"],
        task_type=peft_task_type(head),
    )
    return get_peft_model(model, config)


def save(model, path: Path) -> None:
    """peft's adapter folder for decoders; the prefix and head tensors for encoders."""
    prefix = getattr(model, "harness_prefix", None)
    if prefix is None:
        save_pretrained(model, path)
    else:
        from harness.methods import encoder_prefix

        encoder_prefix.save(model, path, prefix.options)


def load(model, path: Path):
    """The tuned model from a saved artifact and a fresh base model with the same head."""
    from harness.methods import encoder_prefix

    if (Path(path) / encoder_prefix.CONFIG_FILE).exists():
        return encoder_prefix.load(model, path)
    from peft import PeftModel

    return PeftModel.from_pretrained(model, path)
