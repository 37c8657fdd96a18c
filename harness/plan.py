"""`harness plan`: a dry run that loads no weights. For every run of a matrix: trainable and
total parameters (exactly what peft reports for the real model), and an estimate of the
training memory, with whether it fits a GPU of a given size.

How the model is built
----------------------
Only the model's config is read: the packaged copy under harness/catalog_configs/<name>/ for
catalog models (so nothing is fetched), `AutoConfig.from_pretrained` for `hf:` ids (needs the
hub), and the folder's config.json for local paths (a folder holding only config.json is
enough; the tokenizer is never needed). The task head is chosen as in a real run
(`tasks.REGISTRY[task].head_for(family)`, num_labels for classifiers), the model is
instantiated from the config on the meta device (shapes, no storage: a 7B model builds in about
a second) and the run's method is applied to it, as harness.runner does. Parameters are then
counted with harness.methods.common.count_parameters (peft's get_nb_trainable_parameters), the
function the runner records.

Quantized methods (qlora) are NOT quantized on meta: the unquantized skeleton is counted,
which equals peft's count of the 4-bit model (peft counts a bitsandbytes Params4bit at its
unpacked size, so the 4-bit total is the unquantized total plus the LoRA parameters). Which
weights would be quantized is decided as transformers does it (every nn.Linear / Conv1D not
skipped by the method's quantization config, its tied and output-embedding modules and the
model's fp32 modules); that set is used for the memory estimate below.

Memory estimate (bytes; shown in GiB)
-------------------------------------
    estimate = max(training peak, scoring peak)
    training peak = weights + gradients + optimizer states + activations
    scoring peak  = weights + inference activations at training.eval_batch_size

- weights: every parameter in its role's dtype, as harness.models.cast_by_role keeps it:
  frozen ones in training.frozen_dtype (`compute`: the compute dtype), trained ones in
  training.trainable_dtype (float32 unless pure bf16); buffers as built. Quantized linear weights instead:
  4-bit = 0.5 B/param plus the quantization constants: one absmax per 64-value block, stored
  as float32 (4 B per block, +0.0625 B/param) or, with double quantization, as one byte per
  block plus one float32 per 256 blocks (+~0.0159 B/param), plus the 16- and 256-entry lookup
  tables per tensor; 8-bit = 1 B/param plus one float32 scale per output row. Everything not
  quantized (embeddings, norms, heads, biases, LoRA) is in its role's dtype.
- gradients: trainable parameters x their dtype's bytes (4 B float32, 2 B pure bf16).
- optimizer states: twice that (AdamW's two moments, in the parameters' dtype).
- activations (what autograd keeps for backward), with b = training.batch_size and
  s = training.max_length, or the task's option that replaces it (SEQUENCE_LENGTH_OPTION:
  preference's max_length) (capped at the model's max_position_embeddings; plus the virtual
  tokens for `prompt`), i.e. the worst case of every example at full length. Autograd keeps
  only what the gradients it must compute need (a frozen linear keeps its weight, to pass the
  gradient to its input, but not its input). Per transformer block, per token:
      norms:        4h bytes per norm (its float32 input: RMSNorm casts up itself, CUDA autocast
                    casts LayerNorm's; CPU autocast keeps LayerNorm's input in the residual
                    stream's dtype r), + rh for an RMSNorm whose weight trains (its normalised input)
      attention:    (2q + 2kv) x c   (rotated queries and keys, values, output: fused attention)
      MLP:          3i x c gated (gate, act(gate), up), 1i x c otherwise (the activation's input)
      linear inputs, trained linears only (LoRA's A and B, adapters, everything in `full`):
                    autocast (c < 4): every linear's own cast copy, sum of in_features x c;
                    float32: linears reading the same tensor (q/k/v, gate/up) share it
      LoRA dropout > 0: its mask (1 byte; float32: + the dropped-out copy, 4 bytes) per input
  and per block, under autocast: a c-byte copy of every non-quantized linear weight stored
  wider than c (the cast that the matmul keeps for backward; a weight already in the compute
  dtype and 4-bit layers keep themselves). `attn_implementation: eager` adds the s x s
  probabilities of every head per token (float32 softmax output + its c-byte copy; c alone for
  LayerNorm models on the CPU). After the blocks: the final norm, as a block's. The residual
  stream's dtype r is the input embeddings' (bf16 for a bf16 frozen base; float32 when they
  train or float32 soft prompts join them). With h = hidden
  size, q = heads x head_dim, kv = key/value heads x head_dim, i = the MLP's intermediate size,
  c = the compute dtype's bytes. Blocks count from the first one that backward must reach:
  every block when anything before the blocks trains (embeddings in `full`, soft prompts,
  prefixes) or when the first block has trainable weights (LoRA, IA3, adapters), the last N
  for `transfer`, none when only the head trains. With gradient checkpointing
  (training.gradient_checkpointing, or qlora's option) every block's input (r bytes) is kept -
  the frozen blocks' too, as measured - plus one block's activations while it is recomputed. Plus the logits: b x k x vocab x (c + 4 for the float32 loss), k = the positions
  the task scores (its SCORED_POSITIONS: 1 for `sentiment`, which asks the LM for the last
  position only; every position otherwise). A task whose example is several sequences
  (SEQUENCES_PER_EXAMPLE: a preference pair's chosen and rejected answers, 2) multiplies b. The fused attention of the GPU (SDPA) never stores the s x s score
  matrix, so none is counted.
  Checked against the bytes autograd really saves (tests/test_plan.py, CPU, float32, bf16
  autocast over float32 weights and a bf16 frozen base, encoder and decoder,
  full/lora/transfer/adapter; checkpointing and eager attention on the decoder): within 30%;
  the first block of LoRA/adapter runs keeps less than counted (its input needs no gradient).
  Inference activations: one block's worth at the eval batch size (nothing is kept between
  blocks), plus the logits.
- reference: a task whose objective compares with the untrained model (NEEDS_REFERENCE:
  `preference`, DPO) keeps a frozen float32 copy of the base for methods that change weights in
  place (full, transfer, adapter): one more `weights` term, unquantized (SmolLM2-135M: 0.50 GiB).
  peft methods disable their adapter instead and the `base` row is its own reference: 0. The
  reference's forward runs without gradients, so it adds no activations kept for backward.
- compute dtype: training.dtype; `auto` is taken as bfloat16 unless training.device is `cpu`
  (float32), i.e. the plan assumes the GPU it is checked against supports bf16; qlora's
  compute_dtype wins when set. docs/precision.md works the Llama-2-7B LoRA figure out by hand.
- device_map: the estimate is the total over the devices a qlora run's map spreads it on.

Not counted: the CUDA context and the allocator's slack. `fits` therefore keeps a reserve:
a run fits when estimate + 1 GiB <= --gpu-mem. The parts are summed with no overlap, so real
peaks are usually a little lower (backward frees activations as it goes). Treat the figure as
an estimate good to roughly +-25%, not a guarantee.

Why over 400 lines: one estimate (parameters, then memory term by term, then the table), each
term documented where it is computed; the pieces are not used apart.
"""
from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import catalog, methods, tasks
from harness.matrix import Matrix, RunSpec

CATALOG_CONFIGS = Path(__file__).parent / "catalog_configs"
GIB = 2**30
RESERVE = GIB  # CUDA context + allocator slack, kept free when deciding `fits`
FP32 = 4
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
FOUR_BIT_BLOCK = 64  # bitsandbytes' 4-bit blocksize
NESTED_BLOCK = 256  # double quantization: absmax values per second-level block
GATE_NAMES = ("gate_proj", "w1", "gate_up_proj", "gate", "wi_0")
TRAINING_KEYS = ("batch_size", "eval_batch_size", "max_length", "device", "dtype", "frozen_dtype", "trainable_dtype",
                 "gradient_checkpointing", "attn_implementation")
SIZE_UNITS = {"m": 2**20, "mb": 2**20, "mib": 2**20, "g": 2**30, "gb": 2**30, "gib": 2**30,
              "t": 2**40, "tb": 2**40, "tib": 2**40}


class PlanError(ValueError):
    """A model's config cannot be read, or a plan option is invalid."""


def parse_size(text: str) -> int:
    """'24GB', '24GiB', '24G', '80 GB', '512MB', '1TB' -> bytes. GPU memory is quoted in binary
    units (a '24GB' card has 24 GiB), so GB, G and GiB all mean 2^30 bytes."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = found.group(2).lower() if found else ""
    if not found or unit not in SIZE_UNITS or float(found.group(1)) <= 0:
        raise PlanError(f"--gpu-mem {text!r}: expected a size with a unit, e.g. 24GB, 24GiB, 80G or 512MB "
                        "(GB, G and GiB all mean 2^30 bytes, as GPU memory is quoted)")
    return int(float(found.group(1)) * SIZE_UNITS[unit])


@dataclass
class Memory:
    weights: int
    gradients: int
    optimizer: int
    activations: int  # kept for backward while training
    eval_activations: int  # working set while scoring
    reference: int = 0  # a frozen copy of the base, for objectives that need a reference (DPO)

    @property
    def training_peak(self) -> int:
        return self.weights + self.reference + self.gradients + self.optimizer + self.activations

    @property
    def total(self) -> int:
        return max(self.training_peak, self.weights + self.reference + self.eval_activations)


@dataclass
class Counted:
    """What one (model, method, options, task, training shape) plans to; shared by seeds and rates."""

    trainable: int
    total: int
    memory: Memory
    batch: int
    seq: int
    compute_dtype: str
    weight_format: str
    layers: int
    backward_layers: int
    recomputed: int = 0  # with gradient checkpointing: the one block's activations rebuilt in backward


@dataclass
class PlanRow:
    spec: RunSpec
    counted: Counted | None = None
    note: str | None = None  # "not applicable: ..." or "error: ..."
    failed: bool = False

    @property
    def trainable_pct(self) -> float | None:
        return 100.0 * self.counted.trainable / self.counted.total if self.counted and self.counted.total else None

    def fits(self, gpu_mem: int | None) -> bool | None:
        if gpu_mem is None or self.counted is None:
            return None
        return self.counted.memory.total + RESERVE <= gpu_mem


def plan(matrix: Matrix) -> list[PlanRow]:
    """One row per run of the matrix; loads no weights."""
    planner = Planner()
    return [planner.row(spec) for spec in matrix.runs]


def families(matrix: Matrix) -> dict[str, str]:
    """{model: decoder, encoder or seq2seq} from the models' configs (those that can be read)."""
    from harness import models

    planner, found = Planner(), {}
    for spec in matrix.runs:
        if spec.model not in found:
            try:
                found[spec.model] = models.family_of_config(planner.config(spec))
            except Exception:  # noqa: BLE001 - the plan table already reports a model it cannot read
                pass
    return found


class Planner:
    """Plans runs, building each distinct (model, method, options, shape) once."""

    def __init__(self):
        self._configs: dict[tuple[str, str], Any] = {}
        self._done: dict[str, Counted | Exception] = {}

    def row(self, spec: RunSpec) -> PlanRow:
        from harness.methods.common import NotApplicable

        key = _key(spec)
        if key not in self._done:
            try:
                self._done[key] = self.count(spec)
            except Exception as err:  # one run's problem must not stop the plan
                self._done[key] = err
        found = self._done[key]
        if isinstance(found, NotApplicable):
            return PlanRow(spec, note=f"not applicable: {found}")
        if isinstance(found, PlanError):
            return PlanRow(spec, note=f"error: {found}", failed=True)
        if isinstance(found, Exception):
            return PlanRow(spec, note=f"error: {type(found).__name__}: {found}", failed=True)
        return PlanRow(spec, counted=found)

    def config(self, spec: RunSpec):
        key = (spec.model, spec.base_dir)
        if key not in self._configs:
            try:
                self._configs[key] = read_config(spec.model, spec.base_dir)
            except Exception as err:
                self._configs[key] = err
        found = self._configs[key]
        if isinstance(found, Exception):
            raise found
        return copy.deepcopy(found)  # methods may change a model's config (transfer unties heads)

    def count(self, spec: RunSpec) -> Counted:
        from accelerate import init_empty_weights

        from harness import models
        from harness.methods.common import count_parameters

        task = tasks.REGISTRY[spec.task]
        method = methods.REGISTRY[spec.method]
        options = dict(spec.method_options)
        config = self.config(spec)
        family = models.family_of_config(config)
        head = task.head_for(family)
        if head == "sequence_classification":
            config.num_labels = num_labels(task, spec.task_options)
        compute = compute_dtype(spec.training, options)
        roles = weight_dtypes(spec.training)
        quant = quantization(method, options, compute, spec.training)

        model = skeleton(config, head)
        quantized = quantized_weights(model, quant) if quant else {}
        with init_empty_weights(include_buffers=False):  # what the method adds is on meta too
            model = method.apply(model, options, family, head)
        trainable, total = count_parameters(model)
        reference = weight_bytes(skeleton(self.config(spec), head), None, {}) \
            if needs_reference_copy(model, task, method) else 0

        memory, shape = estimate_memory(model, config, spec, method, options, head, compute, quant, quantized,
                                        reference, roles)
        return Counted(trainable=trainable, total=total, memory=memory, compute_dtype=compute,
                       weight_format=weight_format(model, quant, roles), **shape)


def _key(spec: RunSpec) -> str:
    """Runs that differ only by seed or learning rate plan to the same numbers."""
    return json.dumps({
        "model": spec.model, "base_dir": spec.base_dir, "method": spec.method,
        "options": {k: v for k, v in spec.method_options.items() if k != "lr"},
        "task": spec.task, "task_options": spec.task_options,
        "training": {k: spec.training.get(k) for k in TRAINING_KEYS},
    }, sort_keys=True, default=str)


# --------------------------------------------------------------------------- the skeleton

def config_source(ref: str, base_dir: str = ".") -> str:
    """Where a model reference's config is read from, fetching nothing: the packaged copy for
    catalog names, the hub id for `hf:` references, the folder for local paths."""
    if catalog.is_hub_ref(ref):
        return ref[len(catalog.HUB_PREFIX):]
    if ref in catalog.CATALOG:
        folder = CATALOG_CONFIGS / ref
        if not (folder / "config.json").is_file():
            raise PlanError(f"catalog model {ref!r} has no packaged config ({folder / 'config.json'} is missing)")
        return str(folder)
    path = Path(catalog.resolve(ref, "model", Path(base_dir)))  # a local path: checked, not loaded
    if not (path / "config.json").is_file():
        raise PlanError(f"model {ref!r}: {path} has no config.json (plan reads only the config)")
    return str(path)


def read_config(ref: str, base_dir: str = "."):
    from transformers import AutoConfig

    source = config_source(ref, base_dir)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=False)
    except OSError as err:
        if catalog.is_hub_ref(ref):
            raise PlanError(f"cannot fetch the config of {ref} from the Hugging Face hub (plan needs the hub "
                            f"for hf: models; offline, use a local folder with its config.json): "
                            f"{str(err).splitlines()[0]}") from err
        raise PlanError(f"cannot read the config of {ref!r} ({source}): {str(err).splitlines()[0]}") from err


def skeleton(config, head: str):
    """The model with its task head, on the meta device: every shape, no storage."""
    import torch

    from harness.models import HEADS

    with torch.device("meta"):
        return HEADS[head].from_config(config, dtype=torch.float32)


def num_labels(task, task_options: dict) -> int:
    hook = getattr(task, "num_labels", None)
    if callable(hook):
        return hook(task_options)
    names = task_options.get("label_names")
    if not names:
        raise PlanError(f"task {task.NAME}: cannot tell how many labels its classifier has")
    return len(names)


def compute_dtype(training: dict, options: dict) -> str:
    dtype = training.get("dtype", "auto")
    if dtype == "auto":
        dtype = "float32" if training.get("device") == "cpu" else "bfloat16"
    method_dtype = options.get("compute_dtype")  # qlora: the de-quantized matmuls' dtype
    return method_dtype if method_dtype and method_dtype != "auto" else dtype


def weight_dtypes(training: dict) -> dict[str, str]:
    """The dtype each role's weights are kept in (harness.models.place): {"frozen", "trained"}."""
    resolved = compute_dtype(training, {})
    return {role: resolved if training.get(key, "float32") == "compute" else training.get(key, "float32")
            for role, key in (("frozen", "frozen_dtype"), ("trained", "trainable_dtype"))}


def weight_format(model, quant: dict | None, roles: dict[str, str]) -> str:
    """The table's weights column: the frozen weights' format (with the trained ones' when not
    float32), or the trained ones' when everything trains (full fine-tuning)."""
    trained = _short(roles["trained"])
    if all(p.requires_grad for p in model.parameters()):
        return trained
    frozen = quant["label"] if quant else _short(roles["frozen"])
    return frozen if roles["trained"] == "float32" else f"{frozen}+{trained} trained"


def quantization(method, options: dict, compute: str, training: dict) -> dict | None:
    """The method's quantization (from its load_kwargs), or None."""
    from harness.models import Placement

    if getattr(method, "load_kwargs", None) is None:
        return None
    device = "cpu" if training.get("device") == "cpu" else "cuda"
    config = methods.load_kwargs(method, options, Placement(device, compute)).get("quantization_config")
    if config is None:
        return None
    if getattr(config, "load_in_4bit", False):
        double = bool(config.bnb_4bit_use_double_quant)
        label = f"{config.bnb_4bit_quant_type}{'+dq' if double else ''}"
        return {"bits": 4, "double": double, "skip": config.llm_int8_skip_modules, "label": label}
    if getattr(config, "load_in_8bit", False):
        return {"bits": 8, "double": False, "skip": config.llm_int8_skip_modules, "label": "int8"}
    raise PlanError(f"method {method.NAME}: plan cannot size its quantization ({type(config).__name__})")


def quantized_weights(model, quant: dict) -> dict[int, Any]:
    """{id(weight): weight} of the layers transformers would quantize (as its bitsandbytes
    integration decides: nn.Linear and Conv1D not skipped by name)."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = HfQuantizer.get_modules_to_not_convert(model, quant["skip"], getattr(model, "_keep_in_fp32_modules", None))
    found = {}
    for name, module in model.named_modules():
        if (type(module) is nn.Linear or isinstance(module, Conv1D)) and should_convert_module(name, skip):
            found[id(module.weight)] = module.weight
    return found


# --------------------------------------------------------------------------- memory

def quantized_bytes(weight, quant: dict) -> int:
    n = weight.numel()
    if quant["bits"] == 8:
        return n + FP32 * weight.shape[0]  # int8 values + one float32 scale per output row
    blocks = math.ceil(n / FOUR_BIT_BLOCK)
    size = math.ceil(n / 2) + 16 * FP32  # packed values + the 16-entry code
    if quant["double"]:
        return size + blocks + FP32 * (math.ceil(blocks / NESTED_BLOCK) + 1) + 256 * FP32
    return size + FP32 * blocks


def weight_bytes(model, quant: dict | None, quantized: dict[int, Any], roles: dict[str, str] | None = None) -> int:
    """Every parameter in its role's dtype (harness.models.cast_by_role; all float32 without
    `roles`, as loaded), quantized weights packed; buffers as built (the rotary tables stay float32)."""
    total = 0
    for param in model.parameters():  # shared (tied) parameters once
        if id(param) in quantized:
            total += quantized_bytes(param, quant)
        else:
            total += param.numel() * role_bytes(param, roles)
    return total + sum(b.numel() * b.element_size() for b in model.buffers())


def role_bytes(param, roles: dict[str, str] | None) -> int:
    if roles is None:
        return FP32
    return DTYPE_BYTES[roles["trained" if param.requires_grad else "frozen"]]


def estimate_memory(model, config, spec: RunSpec, method, options: dict, head: str, compute: str,
                    quant: dict | None, quantized: dict[int, Any], reference: int = 0,
                    roles: dict[str, str] | None = None) -> tuple[Memory, dict]:
    from harness.methods.common import find_blocks

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = text.hidden_size
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    q_width = heads * head_dim
    kv_width = (getattr(text, "num_key_value_heads", None) or heads) * head_dim
    inter = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden
    vocab = getattr(text, "vocab_size", 0) or 0
    cd = DTYPE_BYTES[compute]

    training = spec.training
    task = tasks.REGISTRY[spec.task]
    length = sequence_length(task, spec)
    limit = getattr(text, "max_position_embeddings", None) or length
    seq = min(length, limit) + _virtual_tokens(model)
    residual = residual_bytes(model, roles)
    upcasts = training.get("device") != "cpu" or cd == FP32  # see _norm_bytes

    blocks_name, blocks = find_blocks(model)
    layers = len(blocks)
    per_token, per_block = block_activations(blocks[-1], hidden, q_width, kv_width, inter, cd, quantized, roles,
                                             residual, upcasts)
    if training.get("attn_implementation") == "eager":  # the s x s attention probabilities of every head
        explicit = any("RMS" in type(m).__name__ for m in blocks[-1].modules())  # Llama-style: softmax in float32
        per_token += heads * seq * (cd + (FP32 if cd < FP32 and (upcasts or explicit) else 0))
    after_blocks = sum(_norm_bytes(m, hidden, residual, upcasts) for m in _final_norms(model, blocks_name))
    sequences = getattr(task, "SEQUENCES_PER_EXAMPLE", 1)
    batch, eval_batch = sequences * training["batch_size"], sequences * training["eval_batch_size"]
    positions = getattr(task, "SCORED_POSITIONS", None) or seq
    logits_per_example = positions * vocab * (cd + FP32) if head in ("causal_lm", "seq2seq_lm") else 0

    weights = weight_bytes(model, quant, quantized, roles)
    eval_acts = eval_batch * (seq * per_token + logits_per_example)  # one block at a time, nothing kept
    trained = [p for p in model.parameters() if p.requires_grad]
    trained_bytes = sum(p.numel() * role_bytes(p, roles) for p in trained)
    backward = backward_layers(model, blocks) if method.TRAINS and trained else 0
    if not method.TRAINS:
        memory = Memory(weights, 0, 0, 0, eval_acts, reference)
    else:
        tokens = batch * seq
        recomputed = 0
        if (options.get("gradient_checkpointing") or training.get("gradient_checkpointing")) and backward:
            # every block's input is kept (measured: the frozen blocks' too), one block rebuilt at a time
            recomputed = tokens * per_token + per_block
            kept = layers * tokens * residual * hidden + recomputed
        else:
            kept = backward * (tokens * per_token + per_block)
        kept += tokens * after_blocks if backward else 0
        memory = Memory(weights, trained_bytes, 2 * trained_bytes,  # AdamW's two moments in the weights' dtype
                        kept + batch * logits_per_example, eval_acts, reference)
    return memory, {"batch": batch, "seq": seq, "layers": layers, "backward_layers": backward,
                    "recomputed": recomputed if method.TRAINS else 0}


def sequence_length(task, spec: RunSpec) -> int:
    """Tokens per sequence: training.max_length, or the task's own option where it replaces it
    (SEQUENCE_LENGTH_OPTION: preference's max_length, prompt + answer)."""
    option = getattr(task, "SEQUENCE_LENGTH_OPTION", None)
    if option and spec.task_options.get(option) is not None:
        return spec.task_options[option]
    return spec.training["max_length"]


def needs_reference_copy(model, task, method) -> bool:
    """A task that needs the untrained model as a reference (NEEDS_REFERENCE) gets the tuned
    model with its peft adapter disabled (no copy), or a frozen float32 copy of the base for a
    trained method that changes weights in place (harness.reference)."""
    from harness.reference import has_peft_adapter

    return bool(getattr(task, "NEEDS_REFERENCE", False) and method.TRAINS and not has_peft_adapter(model))


def residual_bytes(model, roles: dict[str, str] | None) -> int:
    """The residual stream's bytes per value: the input embeddings' dtype (a bf16 frozen base
    keeps it in bf16), float32 when they train or soft prompts (float32) are concatenated to them."""
    embeddings = model.get_input_embeddings().weight
    if roles is None or embeddings.requires_grad or _virtual_tokens(model):
        return FP32
    return role_bytes(embeddings, roles)


def block_activations(block, hidden: int, q_width: int, kv_width: int, inter: int, cd: int,
                      quantized: dict[int, Any], roles: dict[str, str] | None = None,
                      residual: int = FP32, upcasts: bool = True) -> tuple[int, int]:
    """(bytes per token, bytes per block) that one block keeps for backward; see the module
    docstring for what each term is. Autograd keeps only what the gradients it must compute
    need: a frozen linear keeps its weight (to pass the gradient to its input) but not its input."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    linears = [(n, m) for n, m in block.named_modules() if isinstance(m, (nn.Linear, Conv1D))]
    trained = [(n, m) for n, m in linears if m.weight.requires_grad]
    gated = any(name.rsplit(".", 1)[-1] in GATE_NAMES for name, _ in block.named_modules())
    dropout_inputs = sum(m.in_features for m in block.modules() if _has_lora_dropout(m))

    per_token = 0
    per_token = sum(_norm_bytes(module, hidden, residual, upcasts) for module in block.modules())
    per_token += cd * (2 * q_width + 2 * kv_width)  # rotated q, k, v and the output (fused attention)
    per_token += cd * (3 if gated else 1) * inter  # gate, act(gate), up / the activation's input
    per_block = 0
    if cd < FP32:  # autocast: every linear casts its own copies of its input and its weight
        per_token += cd * sum(_in_features(m) for _, m in trained)
        per_block = cd * sum(m.weight.numel() for _, m in linears  # no copy of a weight kept in the compute dtype
                             if id(m.weight) not in quantized and role_bytes(m.weight, roles) > cd)
        per_token += dropout_inputs  # the dropout masks (the dropped-out input is cast, counted above)
    else:  # float32: linears that read the same tensor share it (q/k/v, gate/up)
        shared = {(_owner(n), _in_features(m)) for n, m in trained}
        per_token += FP32 * sum(width for _, width in shared)
        per_token += (FP32 + 1) * dropout_inputs  # LoRA's dropped-out copy of the input and its mask
    return per_token, per_block


def _norm_bytes(module, hidden: int, residual: int, upcasts: bool) -> int:
    """Bytes per token a norm keeps: its input in float32 (RMSNorm casts up itself; LayerNorm is
    cast by CUDA autocast, `upcasts`, while CPU autocast keeps the residual's dtype), plus an
    RMSNorm's normalised input when its weight trains. 0 for a module that is no norm."""
    kind = type(module).__name__
    weight = getattr(module, "weight", None)
    if "Norm" not in kind or weight is None:
        return 0
    rms = "RMS" in kind
    kept = (FP32 if rms or upcasts else residual) * hidden
    return kept + (residual * hidden if rms and weight.requires_grad else 0)


def _final_norms(model, blocks_name: str) -> list:
    """The norms right after the blocks (Llama's model.norm, GPT-2's ln_f), siblings of the blocks."""
    parent = blocks_name.rsplit(".", 1)[0] if "." in blocks_name else ""
    prefix = f"{parent}." if parent else ""
    return [m for n, m in model.named_modules() if n.startswith(prefix) and "." not in n[len(prefix):]
            and "Norm" in type(m).__name__ and n.rsplit(".", 1)[-1] in methods.transfer.FINAL_NORM_NAMES]


def _owner(name: str) -> str:
    """The attention or MLP module a linear belongs to (LoRA's inner linears: the adapted one's)."""
    parts = name.split(".")
    for marker in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
        if marker in parts:
            parts = parts[:parts.index(marker)]
    if parts and parts[-1] == "base_layer":
        parts = parts[:-1]
    return ".".join(parts[:-1])


def _in_features(module) -> int:
    return module.in_features if hasattr(module, "in_features") else module.weight.shape[0]  # Conv1D: (in, out)


def backward_layers(model, blocks) -> int:
    """How many blocks backward goes through: from the first block with a trainable parameter,
    or every block when something before the blocks trains (embeddings, soft prompts,
    prefixes), to the last."""
    block_of = {id(p): i for i, block in enumerate(blocks) for p in block.parameters()}
    first = None
    seen_block = False
    for name, param in model.named_parameters():
        index = block_of.get(id(param))
        seen_block = seen_block or index is not None
        if not param.requires_grad:
            continue
        if "prompt_encoder" in name or (index is None and not seen_block):
            return len(blocks)
        if index is not None:
            first = index if first is None else min(first, index)
    return 0 if first is None else len(blocks) - first


def _has_lora_dropout(module) -> bool:
    from torch import nn

    dropouts = getattr(module, "lora_dropout", None)
    if not isinstance(dropouts, nn.ModuleDict) or not hasattr(module, "in_features"):
        return False
    return any(isinstance(d, nn.Dropout) and d.p > 0 for d in dropouts.values())


def _virtual_tokens(model) -> int:
    """Soft-prompt tokens prepended to every example (prompt tuning, p-tuning)."""
    config = getattr(model, "peft_config", {}).get("default")
    if config is None or not getattr(config, "is_prompt_learning", False):
        return 0
    kind = str(getattr(config, "peft_type", ""))
    return config.num_virtual_tokens if ("PROMPT_TUNING" in kind or "P_TUNING" in kind) else 0


# --------------------------------------------------------------------------- output

def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 100 else f"{n / 2**20:.1f} MiB"


def _model_label(ref: str) -> str:
    return Path(ref).name if catalog.looks_like_path(ref) and not catalog.is_hub_ref(ref) else ref


def table(rows: list[PlanRow], gpu_mem: int | None = None, breakdown: bool = False) -> str:
    """One line per run: run_id, model, method, task, seed, lr, trainable, total, trainable %,
    batch x length, compute dtype / weights, est. memory, fits (with --gpu-mem)."""
    header = ["run_id", "model", "method", "task", "seed", "lr", "trainable", "total", "trainable %",
              "batch x len", "dtype/weights"]
    if breakdown:
        header += ["weights", "reference", "gradients", "optimizer", "activations"]
    header += ["est. memory"] + (["fits"] if gpu_mem is not None else [])
    body = []
    for row in rows:
        spec = row.spec
        lr = spec.method_options.get("lr")
        cells = [spec.run_id, _model_label(spec.model), spec.method, spec.task, str(spec.seed),
                 f"{lr:g}" if lr else "-"]
        c = row.counted
        if c is None:
            body.append(cells + [row.note or ""])
            continue
        cells += [f"{c.trainable:,}", f"{c.total:,}", f"{row.trainable_pct:.3g}", f"{c.batch} x {c.seq}",
                  f"{_short(c.compute_dtype)}/{c.weight_format}"]
        if breakdown:
            m = c.memory
            cells += [_gib(m.weights), _gib(m.reference), _gib(m.gradients), _gib(m.optimizer),
                      _gib(m.activations if m.training_peak >= m.weights + m.reference + m.eval_activations
                                else m.eval_activations)]
        cells.append(_gib(c.memory.total))
        if gpu_mem is not None:
            cells.append("yes" if row.fits(gpu_mem) else "no")
        body.append(cells)
    widths = [max([len(header[i])] + [len(r[i]) for r in body if len(r) > i and len(r) == len(header)])
              for i in range(len(header))]
    numeric = {"seed", "lr", "trainable", "total", "trainable %", "weights", "reference", "gradients", "optimizer",
               "activations", "est. memory"}

    def line(cells):
        if len(cells) < len(header):  # a note: written after the run's identity
            fixed = "  ".join(_align(v, widths[i], header[i] in numeric) for i, v in enumerate(cells[:-1]))
            return f"{fixed}  {cells[-1]}"
        return "  ".join(_align(v, widths[i], header[i] in numeric) for i, v in enumerate(cells)).rstrip()

    return "\n".join([line(header)] + [line(r) for r in body])


def _align(value: str, width: int, right: bool) -> str:
    return value.rjust(width) if right else value.ljust(width)


def _short(dtype: str) -> str:
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(dtype, dtype)


def report(matrix: Matrix, rows: list[PlanRow], gpu_mem: int | None = None, breakdown: bool = False,
           seconds: float | None = None) -> str:
    """The `harness plan` output: a summary line, the table, and what the estimate means."""
    lines = [f"{matrix.path}: matrix {matrix.name!r}: {len(rows)} runs (no weights loaded)", "",
             table(rows, gpu_mem, breakdown), ""]
    lines.append("est. memory: weights + gradients + AdamW states + activations at batch x len "
                 "(or scoring, if larger); see `harness plan --help`.")
    if gpu_mem is not None:
        fitting = sum(1 for r in rows if r.fits(gpu_mem))
        sized = sum(1 for r in rows if r.counted is not None)
        lines.append(f"fits: estimate + {RESERVE // GIB} GiB reserve (CUDA context) <= {gpu_mem / GIB:g} GiB: "
                     f"{fitting} of {sized} runs fit.")
    skipped = sum(1 for r in rows if r.note and not r.failed)
    failed = sum(1 for r in rows if r.failed)
    if skipped or failed:
        lines.append(f"{skipped} not applicable, {failed} could not be planned.")
    if seconds is not None:
        lines.append(f"planned in {seconds:.1f} s")
    return "\n".join(lines)
