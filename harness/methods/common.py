"""What several methods share: option base classes, parameter accounting, finding blocks."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from harness.schema import Schema


class NotApplicable(ValueError):
    """The method cannot apply to this model or task: the run is skipped with this reason."""


class MethodOptions(Schema):
    pass


class TrainedOptions(MethodOptions):
    lr: float = Field(gt=0, le=1, description="peak learning rate (AdamW)")


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total), counted exactly as peft's get_nb_trainable_parameters does
    (4-bit weights at their unpacked size) so every method is counted the same way."""
    from peft import PeftModel

    return PeftModel.get_nb_trainable_parameters(model)


def freeze(model) -> None:
    for param in model.parameters():
        param.requires_grad_(False)


def unfreeze_encoder_head(model) -> None:
    """An encoder's task head: everything outside the pretrained base model, plus its pooler.
    The pooler belongs to the head: BERT-style classifiers read the pooled [CLS] vector, and in
    sentence-transformers checkpoints (all-MiniLM-L6-v2) that path was never trained, so a
    method that cannot change it stays at the majority class (measured: adapters with a frozen
    pooler 63.5% = majority, with it 70% on sentiment)."""
    prefix = model.base_model_prefix + "."
    for name, param in model.named_parameters():
        if not name.startswith(prefix) or ".pooler." in name:
            param.requires_grad_(True)


def find_blocks(model):
    """The transformer blocks: the longest ModuleList whose items share one class.
    Works for BERT (encoder.layer), Llama (model.layers), GPT-2 (transformer.h), ..."""
    import torch

    best, best_name = None, None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            if len({type(m) for m in module}) == 1 and (best is None or len(module) > len(best)):
                best, best_name = module, name
    if best is None:
        raise ValueError(f"{type(model).__name__}: cannot find its transformer blocks (no ModuleList of layers)")
    return best_name, best


def peft_task_type(head: str):
    from peft import TaskType

    return TaskType.CAUSAL_LM if head == "causal_lm" else TaskType.SEQ_CLS


def save_pretrained(model, path: Path) -> None:
    """Artifact of peft methods (the adapter only) and of full fine-tuning (the whole model)."""
    model.save_pretrained(path)


def save_trainable(model, path: Path) -> None:
    """Save only the parameters that trained (safetensors): the artifact of partial methods."""
    from safetensors.torch import save_file

    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "trainable.safetensors"))
