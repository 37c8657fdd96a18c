"""Loading base models and tokenizers: family detection, task head, device and dtype."""
from __future__ import annotations

import contextlib
import contextvars
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

DECODER, ENCODER, SEQ2SEQ = "decoder", "encoder", "seq2seq"
HEADS = {
    "causal_lm": AutoModelForCausalLM,
    "sequence_classification": AutoModelForSequenceClassification,
    "seq2seq_lm": AutoModelForSeq2SeqLM,
}


# The training options `place` resolves (a spec stored before one existed leaves it out).
PLACEMENT_KEYS = ("device", "dtype", "frozen_dtype", "trainable_dtype", "attn_implementation", "device_map")


@dataclass(frozen=True)
class Placement:
    """Where a run computes and in which dtype each kind of weight is kept (precision by role)."""

    device: str  # "cpu" or "cuda"
    dtype: str  # compute dtype: "float32", "bfloat16" or "float16"
    frozen_dtype: str = "float32"  # the weights that do not train
    trainable_dtype: str = "float32"  # the weights that train (master weights / adapters)
    attn_implementation: str | None = None  # transformers' kernel choice; None: the model's default
    device_map: str | dict | None = None  # a quantized model's placement; None: all on `device`

    def load_kwargs(self) -> dict:
        """from_pretrained arguments every method's model is loaded with."""
        return {"attn_implementation": self.attn_implementation} if self.attn_implementation else {}


def autocast(device: str, dtype):
    """Mixed precision for `dtype` (a torch dtype; None or float32: none). Needed over weights of
    mixed dtypes too: a bf16 frozen base feeds float32 adapters and trained blocks."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=dtype)


def place(device: str = "auto", dtype: str = "auto", *, frozen_dtype: str = "float32",
          trainable_dtype: str = "float32", attn_implementation: str | None = None,
          device_map=None) -> Placement:
    """Resolve 'auto' from the hardware: CUDA + bf16 (fp16 on GPUs without bf16), else CPU fp32;
    `frozen_dtype` / `trainable_dtype` "compute" mean the resolved compute dtype."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but torch sees no CUDA device")
    if dtype == "auto":
        if device == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "float32"
    if device == "cpu" and dtype == "float16":
        raise RuntimeError("training.dtype float16 needs CUDA; use bfloat16 or float32 on the CPU")
    if trainable_dtype == "compute" and dtype == "float16":
        raise RuntimeError("training.trainable_dtype compute resolves to float16 on this GPU (no bf16): pure "
                           "float16 training is refused; use trainable_dtype: float32")
    if attn_implementation == "flash_attention_2" and device != "cuda":
        raise RuntimeError("training.attn_implementation flash_attention_2 needs CUDA; use sdpa or eager")
    _check_device_map(device_map, device)
    frozen = dtype if frozen_dtype == "compute" else frozen_dtype
    trainable = dtype if trainable_dtype == "compute" else trainable_dtype
    return Placement(device, dtype, frozen, trainable, attn_implementation, device_map)


def _check_device_map(device_map, device: str) -> None:
    gpus = [v for v in (device_map or {}).values() if v != "cpu"] if isinstance(device_map, dict) else []
    if gpus and device != "cuda":
        raise RuntimeError(f"training.device_map places modules on {gpus[0]!r}, but this run computes on {device}")
    count = torch.cuda.device_count() if device == "cuda" else 0
    missing = [v for v in gpus if _gpu_index(v) >= count]
    if missing:
        raise RuntimeError(f"training.device_map names {missing[0]!r}, but torch sees {count} GPU(s)")


def _gpu_index(device) -> int:
    if isinstance(device, int):
        return device
    return int(device.split(":")[1]) if ":" in device else 0


def cast_by_role(model, placement: Placement) -> None:
    """Keep each floating-point parameter in its role's dtype: frozen weights in
    `placement.frozen_dtype`, trainable ones in `placement.trainable_dtype` (float32 by default:
    what peft's autocast_adapter_dtype does for adapters, done here for every method, so full
    fine-tuning keeps float32 master weights and transfer's trained blocks stay float32).
    Called after the method has decided what trains; quantized (integer) weights are left alone.
    A frozen output head also gets a contiguous input (`_contiguous_head_input`)."""
    frozen, trainable = getattr(torch, placement.frozen_dtype), getattr(torch, placement.trainable_dtype)
    for param in model.parameters():
        target = trainable if param.requires_grad else frozen
        if param.is_floating_point() and param.dtype != target:
            param.data = param.data.to(target)
    _contiguous_head_input(model)


def _contiguous_head_input(model) -> None:
    """A frozen output head gets its input made contiguous first. Decoders slice the last
    position (`logits_to_keep`, as scoring and generation ask) before the head, and torch's
    matmul then multiplies that non-contiguous (batch, 1, hidden) slice with a frozen weight by
    expanding the weight to the batch (aten::bmm): at batch 32, 32 copies of SmolLM2's
    49,152 x 576 head per forward (bf16: +1.4 GB and 6x slower scoring on the CPU; fp32: one
    batch-32 forward 1.27 s against 1.03 s). Contiguous, it is one matmul, as for a trained head:
    bf16 logits bit-identical, fp32 within float rounding of the batched product (4e-5 on
    SmolLM2's logits; tests/test_precision.py)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is None or weight.requires_grad:
        return
    if not getattr(head, "_harness_contiguous_input", False):
        head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
        head._harness_contiguous_input = True


# Whether loaders may run code shipped with a model (hub `auto_map` classes). Off unless a
# matrix sets `trust_remote_code`; the runner turns it on around one run with `remote_code`.
_TRUST_REMOTE_CODE = contextvars.ContextVar("trust_remote_code", default=False)


@contextlib.contextmanager
def remote_code(trusted: bool):
    """Loaders inside this block pass trust_remote_code=`trusted` (unless told otherwise)."""
    token = _TRUST_REMOTE_CODE.set(bool(trusted))
    try:
        yield
    finally:
        _TRUST_REMOTE_CODE.reset(token)


def _trusted(explicit: bool | None) -> bool:
    return _TRUST_REMOTE_CODE.get() if explicit is None else explicit


def family(path: str, trust_remote_code: bool | None = None) -> str:
    """decoder, encoder or seq2seq, from the model's config."""
    config = AutoConfig.from_pretrained(path, trust_remote_code=_trusted(trust_remote_code))
    return family_of_config(config)


def family_of_config(config) -> str:
    if getattr(config, "is_encoder_decoder", False):
        return SEQ2SEQ
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return DECODER
    if getattr(config, "is_decoder", False):
        return DECODER
    return ENCODER


def load_tokenizer(path: str, fam: str, trust_remote_code: bool | None = None):
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=_trusted(trust_remote_code))
    if fam == DECODER:
        # Left padding keeps every sequence's last token at position -1 (scoring and generation).
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, head: str, *, num_labels: int | None = None, tokenizer=None, **extra):
    """The pretrained model with the task's head, in float32 (cast_by_role then keeps what stays
    frozen in the compute dtype, once the method has decided what trains); `extra`
    from_pretrained arguments come from the placement (the attention kernel) and the method (e.g.
    a quantization config)."""
    kwargs = {"dtype": torch.float32, "trust_remote_code": _trusted(None), **extra}
    if head == "sequence_classification":
        kwargs["num_labels"] = num_labels
    model = HEADS[head].from_pretrained(path, **kwargs)
    if "quantization_config" in kwargs:
        keep_4bit_trainable_on_cpu(model)
    if tokenizer is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def pretrained_weights(path: str, head: str, *, num_labels: int | None = None) -> dict:
    """The checkpoint's parameters named as a model with this head names them (float32, CPU):
    what harness.updates compares a trained model with, read once after the run is scored. Not
    a model to score, so not `load_model` (whose calls the probe tests count)."""
    kwargs = {"dtype": torch.float32, "trust_remote_code": _trusted(None)}
    if head == "sequence_classification":
        kwargs["num_labels"] = num_labels
    return HEADS[head].from_pretrained(path, **kwargs).state_dict()


def keep_4bit_trainable_on_cpu(model) -> int:
    """bitsandbytes >= 0.49 on CPUs with AVX512-BF16 repacks 4-bit weights into an
    inference-only layout on the first eval-mode forward; training the same instance afterwards
    fails in backward or silently computes wrong gradients. Turning the repacking off before any
    forward keeps the model trainable after an evaluation (and scores the same). It is an
    internal attribute, guarded by tests/test_qlora.py. Returns how many layers were changed."""
    import bitsandbytes as bnb

    changed = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


# --------------------------------------------------------------------------- GGUF -> checkpoint

def convert_gguf_entry(entry: Path) -> None:
    """Asset build step: entry/gguf/*.gguf -> entry/model (a normal float32 checkpoint)."""
    ggufs = sorted((entry / "gguf").glob("*.gguf"))
    if len(ggufs) != 1:
        raise RuntimeError(f"expected one .gguf file under {entry / 'gguf'}, found {len(ggufs)}")
    convert_gguf(ggufs[0], entry / "model")
    shutil.rmtree(entry / "gguf")


def convert_gguf(gguf_file: Path, out_dir: Path) -> None:
    """De-quantize a GGUF model into a checkpoint transformers can save and reload quickly.

    A GGUF-loaded model refuses save_pretrained ("quantized with gguf"), so the weights are
    copied into a clean model built from the same config.
    """
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict(), strict=True)
    clean.tie_weights()
    out_dir.mkdir(parents=True, exist_ok=True)
    clean.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
