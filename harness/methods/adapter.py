"""`adapter`: bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021), hand-written.

Why hand-written: peft has no bottleneck adapters (its ADAPTION_PROMPT is LLaMA-Adapter, a
prompt method), and AdapterHub's `adapters` package pins transformers 4.x (1.3.0 needs
transformers~=4.57), so it cannot be installed beside the transformers 5 this project uses.

An adapter is down-projection -> non-linearity -> up-projection, added residually to a sublayer's
output: h + up(act(down(h))). It sits on the output projection of the attention and/or the FFN
of every block, i.e. BEFORE the block's own residual add and layer norm (BERT: on
`attention.output.dense` and `output.dense`, inside LayerNorm(h + input); Llama: on
`self_attn.o_proj` and `mlp.down_proj`, i.e. the outputs of `self_attn` and `mlp`; GPT-2: on
`attn.c_proj` and `mlp.c_proj`). `houlsby` adapts both sublayers, `pfeiffer` only the FFN.

The output projection is replaced by a small wrapper module (`base` = the original module,
`adapter` = the bottleneck), so adapter parameters have plain names such as
`...layer.0.output.dense.adapter.down.weight` (the wrapped weight becomes `...dense.base.weight`).
The up-projection starts at zero, so the adapted model computes exactly what its base did until
it trains. Only the adapters train, plus the task head on encoders (the fresh classifier and
the pooler it reads: see common.unfreeze_encoder_head). A decoder's LM head stays frozen:
SmolLM2 and GPT-2 tie it to the input embeddings.

The artifact (`save`) is the trained tensors plus `adapter_config.json`; `load` rebuilds the
structure on a fresh base model and loads them.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from harness.methods.common import (
    NotApplicable,
    TrainedOptions,
    find_blocks,
    freeze,
    save_trainable,
    unfreeze_encoder_head,
)

NAME = "adapter"
TRAINS = True
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "trainable.safetensors"  # written by common.save_trainable
LM_HEADS = ("causal_lm", "seq2seq_lm")  # pretrained (often tied) heads: frozen

# (attention output, FFN output) module paths inside one block; the first pair present wins.
SUBLAYERS = (
    ("attention.output.dense", "output.dense"),  # BERT, RoBERTa, XLM-R, ELECTRA, DeBERTa
    ("attention.attn.o", "output.dense"),  # MPNet
    ("attention.out_lin", "ffn.lin2"),  # DistilBERT
    ("self_attn.o_proj", "mlp.down_proj"),  # Llama, Mistral, Qwen2, Gemma, Phi-3
    ("attn.c_proj", "mlp.c_proj"),  # GPT-2
    ("self_attn.out_proj", "fc2"),  # OPT
    ("attention.dense", "mlp.dense_4h_to_h"),  # GPT-NeoX, Pythia
    ("self_attention.dense", "mlp.dense_4h_to_h"),  # Falcon, Bloom
)


class Options(TrainedOptions):
    """Bottleneck adapters after the attention and FFN outputs (houlsby) or the FFN only (pfeiffer)."""

    lr: float = Field(
        1e-3, gt=0, le=1,
        description="peak learning rate (default 1e-3: a starting point, adapters usually want 1e-4 to "
        "1e-3; not yet calibrated on sentiment)",
    )
    kind: Literal["houlsby", "pfeiffer"] = Field(
        "pfeiffer", description="houlsby: adapters after attention and FFN of every block; pfeiffer: after the FFN only"
    )
    reduction_factor: int = Field(
        16, gt=0, description="hidden size / bottleneck size (the bottleneck is hidden // reduction_factor, at least 1)"
    )
    non_linearity: Literal["relu", "gelu", "silu", "tanh"] = Field(
        "relu", description="activation between the down- and up-projection"
    )


def apply(model, options: dict, family: str, head: str):
    opts = Options.model_validate(options)
    freeze(model)
    _insert(model, opts)
    if head not in LM_HEADS:
        unfreeze_encoder_head(model)
    return model


def save(model, path: Path) -> None:
    config = getattr(model, "_harness_adapter", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no adapters to save (apply the adapter method first)")
    save_trainable(model, path)
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def load(model, path: Path):
    """Rebuild the adapters of a saved artifact on a fresh base model (with the same head) and load
    the trained tensors; the tensors in the artifact are the ones left trainable."""
    from safetensors.torch import load_file

    path = Path(path)
    config = json.loads((path / CONFIG_FILE).read_text())
    freeze(model)
    modules = _insert(model, Options.model_validate(config["options"]))
    if modules != config["modules"]:
        raise ValueError(f"{type(model).__name__} does not match the saved adapters: it has adapters on "
                         f"{len(modules)} modules, the artifact on {len(config['modules'])}")
    tensors = load_file(str(path / WEIGHTS_FILE))
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    prefixes = tuple(f"{m}.adapter." for m in modules)
    missing = sorted(n for n in params if n.startswith(prefixes) and n not in tensors)
    if unknown or missing:
        raise ValueError(f"adapter artifact {path} does not fit {type(model).__name__}: "
                         f"unknown tensors {unknown[:5]}, missing tensors {missing[:5]}")
    for name, tensor in tensors.items():
        params[name].data.copy_(tensor)
        params[name].requires_grad_(True)
    return model


def _insert(model, opts: Options) -> list[str]:
    """Wrap the chosen sublayer outputs of every block with a fresh adapter; returns their names."""
    bottleneck_cls, adapted_cls = _classes()
    blocks_name, blocks = find_blocks(model)
    targets = []
    for i, block in enumerate(blocks):
        attention, ffn = _sublayers(model, blocks_name, block)
        for path in ((attention, ffn) if opts.kind == "houlsby" else (ffn,)):
            targets.append((block, path, f"{blocks_name}.{i}.{path}"))
    hidden = model.config.hidden_size
    bottleneck = hidden // opts.reduction_factor
    if bottleneck < 1:
        raise ValueError(f"adapter.reduction_factor={opts.reduction_factor} leaves no bottleneck for "
                         f"{type(model).__name__} (hidden size {hidden}); use reduction_factor <= {hidden}")
    for block, path, full_name in targets:
        parent_path, _, leaf = path.rpartition(".")
        parent = block.get_submodule(parent_path)
        original = getattr(parent, leaf)
        if isinstance(original, adapted_cls):
            raise ValueError(f"{full_name} already has an adapter (the adapter method was applied twice)")
        ref = next(original.parameters(), None)
        device = ref.device if ref is not None else None
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else None  # 4-bit weights: float32
        adapter = bottleneck_cls(hidden, bottleneck, opts.non_linearity).to(device=device, dtype=dtype)
        setattr(parent, leaf, adapted_cls(original, adapter))
    model._harness_adapter = {"method": NAME, "options": opts.model_dump(), "modules": [n for _, _, n in targets]}
    return [n for _, _, n in targets]


def _sublayers(model, blocks_name: str, block) -> tuple[str, str]:
    for attention, ffn in SUBLAYERS:
        if _has(block, attention) and _has(block, ffn):
            return attention, ffn
    looked_for = "; ".join(f"{a} + {f}" for a, f in SUBLAYERS)
    raise NotApplicable(f"adapter: cannot find the attention and FFN output modules of {type(model).__name__} "
                     f"(its blocks {blocks_name}.* are {type(block).__name__}); looked for {looked_for}")


def _has(module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


@functools.cache
def _classes():
    """The torch modules, built on first use: importing this module must not import torch."""
    import torch
    from torch import nn

    activations = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}

    class Bottleneck(nn.Module):
        """h + up(act(down(h))); up starts at zero, so it starts as the identity."""

        def __init__(self, hidden: int, bottleneck: int, non_linearity: str):
            super().__init__()
            self.down = nn.Linear(hidden, bottleneck)  # Kaiming-uniform, as nn.Linear (and LoRA's A)
            self.act = activations[non_linearity]()
            self.up = nn.Linear(bottleneck, hidden)
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            return hidden_states + self.up(self.act(self.down(hidden_states)))

    class Adapted(nn.Module):
        """Calls the wrapped module and adapts its output (the first item when it returns a tuple,
        as attention modules do)."""

        def __init__(self, base: nn.Module, adapter: nn.Module):
            super().__init__()
            self.base = base
            self.adapter = adapter

        def forward(self, *args, **kwargs):
            out = self.base(*args, **kwargs)
            if isinstance(out, tuple):
                return (self.adapter(out[0]), *out[1:])
            return self.adapter(out)

        def __getattr__(self, name: str):
            """Attributes the model may read from the wrapped module (weight, in_features, ...)."""
            try:
                return super().__getattr__(name)
            except AttributeError:
                base = self._modules.get("base")
                if base is None:
                    raise
                return getattr(base, name)

    return Bottleneck, Adapted
