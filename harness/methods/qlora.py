"""`qlora`: LoRA over a base model quantized by bitsandbytes (4-bit NF4/FP4 with optional
double quantization, or 8-bit), prepared with peft's prepare_model_for_kbit_training.

Quantization happens while loading, so this method also supplies `load_kwargs`. It trains on
the CPU too (bitsandbytes >= 0.50), with one workaround applied while loading - see
harness.models.keep_4bit_trainable_on_cpu.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.methods import lora, peft_options
from harness.methods.common import save_pretrained as save  # noqa: F401 (the method interface)

NAME = "qlora"
TRAINS = True
PEFT_ADAPTER = True  # on decoders (see harness.methods.Method)
# Heads stay in full precision: a quantized classifier could not be trained by peft's
# modules_to_save (and lm_head is never quantized by transformers anyway).
UNQUANTIZED_HEADS = ["classifier", "score", "pooler", "lm_head"]


class Options(lora.Options):
    """LoRA on a 4- or 8-bit base model (QLoRA: Dettmers et al. 2023)."""

    lr: float = Field(2e-4, gt=0, le=1, description="peak learning rate (usual: 1e-4 to 2e-3)")
    bits: Literal[4, 8] = Field(4, description="bits per base weight")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type")
    double_quant: bool = Field(True, description="quantize the quantization constants too (4-bit)")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the de-quantized matmuls; auto: the run's training dtype"
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in backward (less memory, ~30% slower)"
    )


def load_kwargs(options: dict, placement) -> dict:
    import torch
    from transformers import BitsAndBytesConfig

    compute = placement.dtype if options["compute_dtype"] == "auto" else options["compute_dtype"]
    if options["bits"] == 4:
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=options["quant_type"],
            bnb_4bit_use_double_quant=options["double_quant"],
            bnb_4bit_compute_dtype=getattr(torch, compute),
            llm_int8_skip_modules=UNQUANTIZED_HEADS,
        )
    else:
        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=UNQUANTIZED_HEADS)
    device = "cuda:0" if placement.device == "cuda" else "cpu"
    return {"quantization_config": config, "device_map": {"": device}}


def apply(model, options: dict, family: str, head: str):
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=options["gradient_checkpointing"])
    return peft_options.apply(Options, model, options, head)
