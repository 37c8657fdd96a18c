"""Prefix tuning on encoders (BERT family), injected into the self-attention by the harness.

Why not peft's path: peft 0.21 prefix-tunes a sequence classifier by passing its prefix to the
backbone as `past_key_values` and refuses a backbone whose `forward` has no parameter of that
name. transformers 5.24 renamed it to `cache` in the BERT classes (a deprecation shim maps the old
name until 5.40), so peft raises "Model does not support past key values which are required for
prefix tuning" before the first step. Going through the cache was a decoder mechanism in any case:
the encoder then counts the prefix as already-seen tokens and shifts the real tokens' absolute
position ids by its length (BertModel's `cache_length`), positions the pretrained embeddings
never saw in that place.

Here, as OpenDelta does for BERT, the learned keys and values are joined in front of each layer's
own keys and values inside the attention: the model's attention dispatches through a function
registered with transformers' public AttentionInterface (sdpa underneath), the padding mask
gains always-visible prefix columns, and positions stay 0..n-1. The prefix comes from peft's own
PrefixEncoder (same parameters, same `prefix_projection` MLP, same layout as peft's decoders),
kept as the submodule `harness_prefix`. Only the prefix and the task head train
(common.unfreeze_encoder_head); the artifact is those tensors plus the options.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.methods.common import NotApplicable, find_blocks, freeze, save_trainable, unfreeze_encoder_head

ATTENTION = "harness_prefix_sdpa"
CONFIG_FILE = "prefix_config.json"
WEIGHTS_FILE = "trainable.safetensors"  # written by common.save_trainable


class EncoderPrefix(torch.nn.Module):
    """peft's PrefixEncoder, reshaped per layer into (keys, values) of [batch, heads, tokens, head_dim]."""

    def __init__(self, options: dict, config):
        from peft import PrefixEncoder, PrefixTuningConfig

        super().__init__()
        self.layers, self.heads = config.num_hidden_layers, config.num_attention_heads
        self.head_dim = config.hidden_size // self.heads
        self.tokens = options["num_virtual_tokens"]
        self.options = dict(options)
        self.encoder = PrefixEncoder(PrefixTuningConfig(
            num_virtual_tokens=self.tokens, token_dim=config.hidden_size, num_layers=self.layers,
            num_attention_heads=self.heads, encoder_hidden_size=options["projection_hidden_size"],
            prefix_projection=options["prefix_projection"],
        ))
        self.current: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.reached: set[int] = set()

    def prepare(self, batch_size: int) -> None:
        ids = torch.arange(self.tokens, device=self.encoder.embedding.weight.device)
        flat = self.encoder(ids.unsqueeze(0))  # [1, tokens, layers * 2 * hidden]
        per_layer = flat.view(1, self.tokens, self.layers * 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        per_layer = per_layer.expand(-1, batch_size, -1, -1, -1)  # [layers * 2, batch, heads, tokens, dim]
        self.current = [(per_layer[2 * i], per_layer[2 * i + 1]) for i in range(self.layers)]
        self.reached = set()


def apply(model, options: dict):
    _register_attention()
    blocks_name, blocks = find_blocks(model)
    if len(blocks) != model.config.num_hidden_layers:
        raise NotApplicable(f"{type(model).__name__}: found {len(blocks)} blocks at {blocks_name}, "
                            f"its config has {model.config.num_hidden_layers} layers")
    freeze(model)
    model.harness_prefix = EncoderPrefix(options, model.config)
    for index, block in enumerate(blocks):
        for module in block.modules():
            module._harness_prefix_layer = (model.harness_prefix, index)  # plain tuple: not a submodule
    backbone = model.get_submodule(model.base_model_prefix)
    backbone.register_forward_pre_hook(_prepare_prefix(model.harness_prefix), with_kwargs=True)
    model.set_attn_implementation(ATTENTION)
    unfreeze_encoder_head(model)
    _check_every_layer_is_reached(model)
    return model


def save(model, path: Path, options: dict) -> None:
    save_trainable(model, path)
    (path / CONFIG_FILE).write_text(json.dumps({"options": options}, indent=2) + "\n")


def load(model, path: Path):
    """Rebuild the prefix of a saved artifact on a fresh base model (same head) and load the
    trained tensors (the prefix and the head)."""
    from safetensors.torch import load_file

    path = Path(path)
    options = json.loads((path / CONFIG_FILE).read_text())["options"]
    model = apply(model, options)
    tensors = load_file(str(path / WEIGHTS_FILE))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != trainable:
        raise ValueError(f"{path}: the artifact holds {sorted(set(tensors) ^ trainable)[:5]}... "
                         "which this model's prefix and head do not match")
    model.load_state_dict(tensors, strict=False)
    return model


def _prepare_prefix(prefix: EncoderPrefix):
    def hook(module, args, kwargs):
        inputs = kwargs.get("input_ids", args[0] if args else None)
        if inputs is None:
            inputs = kwargs["inputs_embeds"]
        prefix.prepare(inputs.shape[0])
    return hook


def _prefixed_attention(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    owner = getattr(module, "_harness_prefix_layer", None)
    if owner is not None and owner[0].current is not None:
        prefix, layer = owner
        prefix_key, prefix_value = prefix.current[layer]
        key = torch.cat([prefix_key.to(key.dtype), key], dim=2)
        value = torch.cat([prefix_value.to(value.dtype), value], dim=2)
        if attention_mask is not None:  # [batch or 1, 1 or heads, queries, keys]: prefix columns always visible
            visible = torch.ones if attention_mask.dtype == torch.bool else torch.zeros
            columns = visible((*attention_mask.shape[:-1], prefix.tokens), dtype=attention_mask.dtype,
                              device=attention_mask.device)
            attention_mask = torch.cat([columns, attention_mask], dim=-1)
        prefix.reached.add(layer)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register_attention() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(ATTENTION, _prefixed_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def _check_every_layer_is_reached(model) -> None:
    """A model whose attention does not dispatch through AttentionInterface would ignore the
    prefix silently: one forward on two tokens proves every layer received it."""
    prefix = model.harness_prefix
    was_training = model.training
    model.eval()
    with torch.no_grad():
        device = prefix.encoder.embedding.weight.device
        model(input_ids=torch.zeros((1, 2), dtype=torch.long, device=device))
    model.train(was_training)
    missing = set(range(prefix.layers)) - prefix.reached
    if model.config._attn_implementation != ATTENTION or missing:
        raise NotApplicable(f"{type(model).__name__} does not route its attention through transformers' "
                            f"AttentionInterface (layers without the prefix: {sorted(missing)})")
