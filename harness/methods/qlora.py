"""`qlora`: LoRA over a base model quantized by bitsandbytes (4-bit NF4/FP4 with optional
double quantization, or 8-bit), prepared with peft's prepare_model_for_kbit_training.

Quantization happens while loading, so this method also supplies `load_kwargs`. It trains on
the CPU too (bitsandbytes >= 0.50), with one workaround applied while loading - see
harness.models.keep_4bit_trainable_on_cpu - which `scoring_layout` lifts while the trained model
is scored.
"""
from __future__ import annotations

import contextlib
import copy
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
    return {"quantization_config": config, "device_map": placement.device_map or {"": device}}


def apply(model, options: dict, family: str, head: str):
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=options["gradient_checkpointing"])
    return peft_options.apply(Options, model, options, head)


# bitsandbytes' fused bf16 kernel for its CPU inference layout (without the `kernels` package)
# beats de-quantizing to fp32 only for few tokens per forward: one layer 576 -> 1536 on this
# 2-core machine (under load), ms per forward, training layout / inference layout / fp32 dense:
# 1 token 0.24 / 0.075 / 0.048, 64 tokens 4.5 / 3.0 / 1.7, 1,280 tokens (a scoring batch) 65 / 100 / 45.
# So it serves generation steps only (one new token per sequence, at most this many sequences).
FAST_LAYOUT_MAX_TOKENS = 64


@contextlib.contextmanager
def scoring_layout(model):
    """While the trained model is scored and probed: each 4-bit layer also holds its weight in
    bitsandbytes' fast CPU inference layout (AVX512-BF16 CPUs; made at the layer's first
    generation step; the run keeps bitsandbytes' own repacking off,
    harness.models.keep_4bit_trainable_on_cpu), and a forward uses it when it
    is a generation step (one new token per sequence, at most FAST_LAYOUT_MAX_TOKENS of them)
    that needs no gradients; any other forward runs on the training layout, so no gradient is
    ever computed through the inference layout (it has no backward), and scoring whole prompts
    (classification, log-likelihoods, prefill) stays bit-identical. The inference layout
    multiplies in bf16: generated tokens may differ from the training layout's by bf16 rounding
    (tests/test_qlora.py states the tolerance on logits). On exit every layer has its exact
    training weight and state back. A no-op on GPUs and on CPUs without AVX512-BF16."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import has_avx512bf16

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit) and _repackable(m)]
    if not layers or not has_avx512bf16():
        yield model
        return
    layouts = {m: _Layouts(m) for m in layers}
    hooks = [m.register_forward_pre_hook(layouts[m].choose) for m in layers]
    try:
        yield model
    finally:
        for hook in hooks:
            hook.remove()
        for layout in layouts.values():
            layout.use(layout.training)


class _Layouts:
    """One 4-bit layer's weight in its training layout and in the inference layout, and which
    of them its next forward uses. The inference layout is made at the layer's first generation
    step, so scoring that never generates (classification, log-likelihood probes) repacks nothing."""

    def __init__(self, layer):
        self.layer = layer
        self.training = (layer.weight.data, layer.weight.quant_state)
        self._inference = None

    @property
    def inference(self):
        if self._inference is None:
            from bitsandbytes.functional import _convert_weight_packed_for_cpu

            data, state = self.training
            packed_state = copy.copy(state)  # the conversion rewrites the state it is given
            self._inference = _convert_weight_packed_for_cpu(data, packed_state)
        return self._inference

    @property
    def repacked(self) -> bool:
        return self._inference is not None

    def use(self, layout) -> None:
        self.layer.weight.data, self.layer.weight.quant_state = layout

    def choose(self, layer, args) -> None:
        import torch

        x = args[0]
        generation_step = x.dim() >= 2 and x.shape[-2] == 1 and x.numel() // x.shape[-1] <= FAST_LAYOUT_MAX_TOKENS
        fast = generation_step and not layer.training and not (torch.is_grad_enabled() and x.requires_grad)
        if fast or self.repacked:
            self.use(self.inference if fast else self.training)


def _repackable(layer) -> bool:
    """What bitsandbytes' CPU repacking asserts: a 2-D 4-bit weight on the CPU, out_features a
    multiple of its 32-row blocks, in_features a multiple of the quantization block."""
    state = layer.weight.quant_state
    return (state is not None and layer.weight.device.type == "cpu" and len(state.shape) == 2
            and state.shape[0] % 32 == 0 and state.shape[1] % state.blocksize == 0)
