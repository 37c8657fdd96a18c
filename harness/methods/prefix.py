"""`prefix`: prefix tuning (Li & Liang 2021) - learned key/value vectors prepended to every
attention layer, optionally produced by a reparametrization MLP. Decoders go through peft;
encoders through harness.methods.encoder_prefix (peft's encoder path relies on an argument
transformers 5.24 renamed: see that module)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from harness.methods import peft_options
from harness.methods.common import NotApplicable, save_pretrained

NAME = "prefix"
TRAINS = True
PEFT_ADAPTER = True  # on decoders (see harness.methods.Method)
LM_HEADS = ("causal_lm", "seq2seq_lm")  # peft's past_key_values path works for these
# Activation checkpointing turns the cache off, and with it the prefix's past key/values: the
# attention mask keeps the virtual positions and the shapes part (found by bench/gpu_check.py).
GRADIENT_CHECKPOINTING = False


class Options(peft_options.PeftOptions):
    """peft PrefixTuningConfig (on decoders any other of its fields under peft's name); encoders
    also train their classification head."""

    PEFT_CONFIG = "PrefixTuningConfig"
    PEFT_FIELDS = {"num_virtual_tokens": "num_virtual_tokens", "prefix_projection": "prefix_projection",
                   "projection_hidden_size": "encoder_hidden_size"}

    lr: float = Field(1e-2, gt=0, le=1, description="peak learning rate (usual: 1e-3 to 3e-2)")
    num_virtual_tokens: int = Field(16, gt=0, le=512, description="prefix length")
    prefix_projection: bool = Field(
        False, description="produce the prefix through a 2-layer MLP (the paper's reparametrization)"
    )
    projection_hidden_size: int = Field(512, gt=0, description="hidden size of that MLP")


def apply(model, options: dict, family: str, head: str):
    if head in LM_HEADS:
        return peft_options.apply(Options, model, options, head)
    passed = peft_options.passed_through(Options, options)
    if passed:
        raise NotApplicable(f"prefix: peft's PrefixTuningConfig fields ({', '.join(passed)}) apply to decoders; "
                            "encoders are prefix-tuned by the harness's own injection")
    from harness.methods import encoder_prefix  # imports torch: not at validation time

    return encoder_prefix.apply(model, options)


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
