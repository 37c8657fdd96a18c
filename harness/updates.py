"""What a method changed in the weights: per weight matrix, the norm of its update relative to
the base matrix and the update's spectrum (top singular values, and the effective rank: how
many singular directions hold 90% of its energy, the sum of squared singular values). This is
the analysis behind Biderman et al. 2024 ("LoRA Learns Less and Forgets Less": full
fine-tuning learns updates of 10-100x the rank of LoRA's), run on every trained run.

How each method's update is found:
  - LoRA layers (peft, also QLoRA and DoRA's direction): the update is scaling * B A, whose
    spectrum comes from the two thin factors (a QR of each, then the SVD of an r x r matrix:
    exact, and cheap at any layer size); the base matrix is the layer's frozen weight
    (dequantized for 4-bit).
  - Base-model matrices that train themselves (full fine-tuning, transfer learning, an
    encoder's pooler): the update is the trained weight minus the pretrained one, read again
    from the checkpoint after the run is scored (so the copy never counts in the run's peak
    memory, and nothing is copied while it trains).
  - Parameters a method adds and trains (IA3 scales, bottleneck adapters, prefixes, prompts,
    the extra copies of peft's modules_to_save): no base matrix exists, so the row reports the
    parameters' own norm and size (kind `parameters`).
A task head initialised for the task (a classifier) has no pretrained value: its rows are
marked `head` and stay out of the per-run summary.
"""
from __future__ import annotations

from dataclasses import dataclass

ENERGY = 0.9  # the share of an update's energy its effective rank holds
TOP = 8  # singular values kept per matrix
KINDS = ("lora", "delta", "parameters")


@dataclass
class Before:
    """The loaded model's parameters by identity (peft wraps modules but keeps their Parameter
    objects): their names in the checkpoint, and which belong to the task head."""
    names: dict[int, str]
    head: set[int]


def base_parameters(model, *, new_head: bool = True) -> Before:
    """Call on the loaded model before the method changes it. `new_head`: the task put a
    freshly initialised head on the pretrained model (everything outside its base model, e.g.
    a classifier); a language-modelling head is pretrained."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    named = dict(model.named_parameters())
    head = {id(p) for n, p in named.items() if new_head and prefix != "." and not n.startswith(prefix)}
    return Before(names={id(p): n for n, p in named.items()}, head=head)


def analyse(model, before: Before, load_pretrained=None, *, energy: float = ENERGY, top: int = TOP) -> list[dict]:
    """One row per trained weight matrix (or added parameter): module, kind, rows, cols,
    base_norm, update_norm, relative (update / base Frobenius norm), effective_rank,
    singular_values (the `top` largest), head (part of the task head). `load_pretrained()`
    returns the checkpoint's parameters by name; it is called only when a base-model matrix
    trained."""
    import torch

    rows, covered = [], set()
    pretrained = None
    with torch.no_grad():
        for name, module in model.named_modules():
            for adapter, (a, b, scale) in _lora_factors(module).items():
                covered |= {id(a), id(b)}
                values = _factored_singular_values(b.float(), a.float()) * scale
                base = _dense_weight(module.get_base_layer())
                rows.append(_row(f"{name}[{adapter}]", "lora", tuple(base.shape), base, values, energy, top))
        for name, param in model.named_parameters():
            if not param.requires_grad or id(param) in covered:
                continue
            head = id(param) in before.head or ".modules_to_save." in name
            if id(param) in before.names and not head:
                pretrained = load_pretrained() if pretrained is None else pretrained
                start = pretrained[before.names[id(param)]].detach().float().cpu()
                update = param.detach().float().cpu() - start
                if update.ndim == 2:
                    values = torch.linalg.svdvals(update)
                    rows.append(_row(name, "delta", tuple(start.shape), start, values, energy, top))
                else:  # a bias or a norm's scale: its update's norm, no spectrum
                    rows.append({**_row(name, "delta", (start.numel(), 1), start, update.flatten(), energy, 0),
                                 "effective_rank": None})
            else:
                rows.append({"module": name, "kind": "parameters", "rows": int(param.shape[0]) if param.ndim else 1,
                             "cols": int(param[0].numel()) if param.ndim else 1, "base_norm": None,
                             "update_norm": float(param.detach().float().norm()), "relative": None,
                             "effective_rank": None, "singular_values": [], "head": head})
    return rows


def summary(rows: list[dict]) -> dict[str, float]:
    """Per run, over the updates of base weight matrices (2-D) outside the task head: the mean
    relative update, the median effective rank, and how many matrices were analysed."""
    import statistics

    updates = [r for r in rows if r["kind"] in ("lora", "delta") and r["effective_rank"] is not None
               and not r["head"]]
    if not updates:
        return {}
    return {"mean_relative_update": statistics.fmean(r["relative"] for r in updates),
            "median_effective_rank": float(statistics.median(r["effective_rank"] for r in updates)),
            "matrices": float(len(updates))}


def effective_rank(singular_values, energy: float = ENERGY) -> int:
    """The fewest singular directions whose squared singular values reach `energy` of the total
    (0 for a zero update)."""
    import torch

    squares = torch.as_tensor(singular_values, dtype=torch.float64) ** 2
    total = float(squares.sum())
    if total == 0:
        return 0
    reached = torch.cumsum(squares, 0) >= energy * total * (1 - 1e-12)
    return int(torch.nonzero(reached)[0]) + 1


def _row(module, kind, shape, base, values, energy, top, head: bool = False) -> dict:
    base_norm = float(base.float().norm())
    update_norm = float(values.double().pow(2).sum().sqrt())
    return {"module": module, "kind": kind, "rows": int(shape[0]), "cols": int(shape[1]), "base_norm": base_norm,
            "update_norm": update_norm, "relative": update_norm / base_norm if base_norm else None,
            "effective_rank": effective_rank(values, energy), "singular_values": [float(v) for v in values[:top]],
            "head": head}


def _lora_factors(module) -> dict:
    """{adapter: (A weight, B weight, scaling)} of a peft LoRA linear layer (empty otherwise)."""
    lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
    if lora_a is None or lora_b is None or not hasattr(module, "get_base_layer"):
        return {}
    return {name: (lora_a[name].weight, lora_b[name].weight, float(module.scaling[name]))
            for name in lora_a.keys() if name in lora_b and hasattr(lora_a[name], "weight")}


def _factored_singular_values(b, a):
    """Singular values of B @ A (m x r times r x n) from the thin factors: B = Qb Rb and
    A^T = Qa Ra, so B A = Qb (Rb Ra^T) Qa^T and its singular values are those of Rb Ra^T."""
    import torch

    _, r_b = torch.linalg.qr(b)
    _, r_a = torch.linalg.qr(a.T)
    return torch.linalg.svdvals(r_b @ r_a.T)


def _dense_weight(layer):
    """A linear layer's weight as float (4-bit bitsandbytes weights dequantized)."""
    from peft.utils.integrations import dequantize_module_weight

    return dequantize_module_weight(layer).float()
