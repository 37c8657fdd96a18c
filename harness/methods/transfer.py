"""`transfer`: freeze the pretrained network except its last N blocks and the task head.

Decoders score sentiment through their LM head, which SmolLM2 and GPT-2 tie to the input
embeddings: training "the head" would silently train the embeddings too. By default the LM
head stays frozen (the last blocks and the final norm train); `train_lm_head: true` unties it
first, so only a copy trains and the embeddings stay frozen. The trainable count reported is
the true one either way.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from harness.methods.common import TrainedOptions, find_blocks, freeze, save_trainable, unfreeze_encoder_head

NAME = "transfer"
TRAINS = True
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f")


class Options(TrainedOptions):
    """Train the task head and the last `train_last_layers` blocks; everything else frozen."""

    lr: float = Field(
        5e-4, gt=0, le=1,
        description="peak learning rate (measured on sentiment: 5e-4 works for MiniLM and SmolLM2 with "
        "2 blocks; 2e-3 collapsed MiniLM to the majority class)",
    )
    train_last_layers: int = Field(1, ge=0, description="how many of the last transformer blocks train")
    train_lm_head: bool = Field(
        False, description="decoders: also train the LM head (untied from the embeddings first)"
    )


def apply(model, options: dict, family: str, head: str):
    freeze(model)
    blocks_name, blocks = find_blocks(model)
    n = options["train_last_layers"]
    if n > len(blocks):
        raise ValueError(f"transfer.train_last_layers={n}, but the model has only {len(blocks)} blocks")
    for block in list(blocks)[len(blocks) - n:]:
        block.requires_grad_(True)
    if head == "causal_lm":
        _unfreeze_final_norm(model, blocks_name)
        if options["train_lm_head"]:
            _untie_and_unfreeze_lm_head(model)
    else:
        unfreeze_encoder_head(model)
    return model


def _unfreeze_final_norm(model, blocks_name: str) -> None:
    parent = blocks_name.rsplit(".", 1)[0] if "." in blocks_name else ""
    for name, module in model.named_modules():
        owner, _, leaf = name.rpartition(".")
        if owner == parent and leaf in FINAL_NORM_NAMES:
            module.requires_grad_(True)


def _untie_and_unfreeze_lm_head(model) -> None:
    import torch

    head = model.get_output_embeddings()
    if head.weight is model.get_input_embeddings().weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
        model.config.tie_word_embeddings = False
    head.requires_grad_(True)


def save(model, path: Path) -> None:
    save_trainable(model, path)
