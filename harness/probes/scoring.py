"""Scoring a model on probes: lm-eval on the in-memory model (HFLM wraps the model object
itself), the frozen-feature linear probe, and the logits guard that refuses to probe a model
whose trained weights are not in it."""
from __future__ import annotations

import contextlib
import io
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from harness.items import Outcomes
from harness.probes import user_tasks
from harness.probes.data import ProbeError, read_jsonl
from harness.probes.registry import FEATURES, LM_EVAL, PERPLEXITY_METRIC, ProbeConfig

GUARD_TEXT = "The capital of France is Paris. Water boils at 100 degrees Celsius at sea level."
GUARD_ATOL = 1e-4  # logits of a model that trained move far more; float noise across devices far less


class ModelUnchanged(ProbeError):
    """A method that trained something left the model's logits exactly as the base model's."""


@dataclass
class Score:
    value: float
    stderr: float | None
    items: Outcomes | None = None  # one outcome per probe item, when the scorer gives them


# --------------------------------------------------------------------------- the logits guard

def fingerprint(model, tokenizer):
    """The model's output logits on a fixed input (float32, on the CPU), computed without
    touching any random-number state (so a run's training is unchanged by taking it)."""
    import torch

    device = next(model.parameters()).device
    encoded = tokenizer(GUARD_TEXT, return_tensors="pt")
    encoded = {k: v.to(device) for k, v in encoded.items()}
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        logits = model(**encoded).logits.detach().float().cpu()
    model.train(was_training)
    return logits


def logits_change(before, after) -> float:
    """Largest absolute logit difference; prompt-tuned models return extra (virtual-token)
    positions first, so the last positions are compared."""
    if before.dim() == 3 and after.dim() == 3 and after.shape[1] > before.shape[1]:
        after = after[:, -before.shape[1]:]
    if before.shape != after.shape:
        return float("inf")
    return float((after - before).abs().max())


def check_changed(before, after, what: str = "the tuned model") -> float:
    change = logits_change(before, after)
    if not change > GUARD_ATOL:
        raise ModelUnchanged(
            f"{what} gives the same logits as the base model on a fixed input (largest change "
            f"{change:.2e} <= {GUARD_ATOL:g}): the trained weights are not in the probed model "
            f"(adapter not applied?) or training did not change anything; probes would measure the base model")
    return change


# --------------------------------------------------------------------------- lm-eval

def _quiet_lm_eval() -> None:
    for name in ("lm_eval", "lm-eval", "lm_eval.models.huggingface", "lm_eval.evaluator"):
        logging.getLogger(name).setLevel(logging.ERROR)


def make_lm(model, tokenizer, dtype: str):
    """lm-eval's HFLM around the in-memory model (nothing is reloaded from disk)."""
    from lm_eval.models.huggingface import HFLM

    _quiet_lm_eval()
    mixed = None if dtype == "float32" else dtype
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=16, mixed_precision_dtype=mixed)


def lm_eval_score(lm, config: ProbeConfig | dict, folder: Path) -> tuple[Score, str, bool]:
    """(score, metric, higher_is_better) of one lm-eval probe on an HFLM."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    config = ProbeConfig.of(config)
    probe, options = config.probe, config.options
    lm.batch_size_per_gpu = options.batch_size
    user_task = probe.builtin and options.include_path
    if probe.builtin and not user_task:  # only now pay for indexing lm-eval's bundled tasks
        manager = TaskManager()
    else:
        manager = TaskManager(include_path=str(folder), include_defaults=False)
    extra = {"limit": options.limit, "num_fewshot": options.num_fewshot} if probe.builtin else {}
    task = probe.task_name
    if task not in manager.all_tasks:
        raise ProbeError(f"probe {probe.name}: lm-eval has no task {task!r}")
    with user_tasks.in_task_folder(manager, task) if user_task else contextlib.nullcontext(), _without_env_report():
        out = simple_evaluate(model=lm, tasks=[task], task_manager=manager, log_samples=True,
                              bootstrap_iters=1000, verbosity="ERROR", **extra)
    results = out["results"][task]
    metrics = [k.split(",")[0] for k in results if "," in k and "_stderr" not in k]
    metric = probe.metric or getattr(options, "metric", None) or next(
        (m for m in ("acc_norm", "acc", "exact_match", PERPLEXITY_METRIC, "word_perplexity") if m in metrics), None)
    if metric not in metrics:
        raise ProbeError(f"probe {probe.name}: lm-eval reported no metric {metric!r} (it has {', '.join(metrics)})")
    key = next(k for k in results if k.split(",")[0] == metric)
    stderr = results.get(key.replace(metric, f"{metric}_stderr", 1))
    higher = out.get("higher_is_better", {}).get(task, {}).get(metric, probe.higher_is_better)
    items = sample_outcomes(out.get("samples", {}).get(task, []), metric)
    return Score(float(results[key]), _number(stderr), items), metric, bool(higher)


@contextlib.contextmanager
def _without_env_report():
    """simple_evaluate ends by adding torch's environment report to its results (`add_env_info`:
    torch.utils.collect_env runs `pip list` and a dozen other commands, about 1.5-3 s per call
    here) and offers no switch; the harness never reads it (a run records its own versions,
    harness.provenance), so it is skipped while the harness calls the evaluator. Scores do not
    depend on it (tests/test_probes.py)."""
    from unittest import mock

    from lm_eval import evaluator

    with mock.patch.object(evaluator, "add_env_info", lambda results: None):
        yield


def sample_outcomes(samples: list[dict], metric: str) -> Outcomes | None:
    """Item outcomes from lm-eval's logged samples: for a (loglik, bytes) metric such as bits
    per byte the document's log-likelihood (value) and byte count (weight); otherwise the
    per-document metric (acc, acc_norm: 0/1), the chosen answer index and, for `acc`, the
    probability the choice's log-likelihoods give it."""
    import numpy as np

    if not samples or any(metric not in s for s in samples):
        return None
    samples = sorted(samples, key=lambda s: s["doc_id"])
    inputs = [str(s["arguments"][0][0]) if s.get("arguments") else str(s["doc"]) for s in samples]
    references = [str(s["target"]) for s in samples]
    if isinstance(samples[0][metric], (list, tuple)):
        return Outcomes(metric=metric, values=[float(s[metric][0]) for s in samples],
                        weights=[float(s[metric][1]) for s in samples], predictions=[""] * len(samples),
                        inputs=inputs, references=references)
    predictions, confidences = [], []
    for s in samples:
        logliks = np.array([float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in s["filtered_resps"]])
        probs = np.exp(logliks - logliks.max())
        probs /= probs.sum()
        predictions.append(str(int(logliks.argmax())))
        confidences.append(float(probs.max()))
    return Outcomes(metric=metric, values=[float(s[metric]) for s in samples], predictions=predictions,
                    confidences=confidences if metric == "acc" else None, inputs=inputs, references=references)


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None  # lm-eval says "N/A" where it has no stderr (perplexities)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- frozen features

def pooled_features(model, tokenizer, texts: list[str], max_length: int, batch_size: int, dtype: str):
    """Mean over real tokens of the last hidden state, one row per text (float32 numpy)."""
    import numpy as np
    import torch

    from harness.models import autocast

    device = next(model.parameters()).device
    model.eval()
    rows = []
    with torch.inference_mode(), autocast(device.type, getattr(torch, dtype)):
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            enc = {k: v.to(device) for k, v in enc.items()}
            hidden = model(**enc, output_hidden_states=True).hidden_states[-1].float()
            mask = enc["attention_mask"]
            hidden = hidden[:, -mask.shape[1]:]  # prompt tuning prepends virtual tokens
            mask = mask.unsqueeze(-1).to(hidden.dtype)
            rows.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy())
    return np.concatenate(rows)


def feature_score(model, tokenizer, config: ProbeConfig | dict, folder: Path, dtype: str) -> Score:
    """Accuracy of a logistic regression fitted on the model's frozen features."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    options = ProbeConfig.of(config).options
    rows = read_jsonl(folder / "rows.jsonl")
    split = {s: [r for r in rows if r["split"] == s] for s in ("train", "test")}
    feats = {s: pooled_features(model, tokenizer, [r["text"] for r in split[s]], options.max_length,
                                options.batch_size, dtype) for s in split}
    labels = {s: np.array([r["label"] for r in split[s]]) for s in split}
    scaler = StandardScaler().fit(feats["train"])
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(feats["train"]), labels["train"])
    probabilities = clf.predict_proba(scaler.transform(feats["test"]))
    predicted = clf.classes_[probabilities.argmax(1)]
    correct = (predicted == labels["test"]).astype(float)
    acc = float(correct.mean())
    items = Outcomes(metric="acc", values=correct.tolist(), predictions=[str(p) for p in predicted],
                     confidences=probabilities.max(1).tolist(), inputs=[r["text"] for r in split["test"]],
                     references=[str(r["label"]) for r in split["test"]])
    return Score(acc, math.sqrt(acc * (1 - acc) / len(labels["test"])), items)


class Scorer:
    """Scores probes on one model, making its HFLM once (only if an lm-eval probe needs it).
    `progress=False` swallows lm-eval's and datasets' progress bars (they write to stderr)."""

    def __init__(self, model, tokenizer, dtype: str, progress: bool = True):
        self.model, self.tokenizer, self.dtype, self.progress = model, tokenizer, dtype, progress
        self._lm = None

    def _quiet(self):
        return contextlib.nullcontext() if self.progress else contextlib.redirect_stderr(io.StringIO())

    @property
    def lm(self):
        if self._lm is None:
            with self._quiet():
                self._lm = make_lm(self.model, self.tokenizer, self.dtype)
        return self._lm

    def probed_model(self, configs: list[ProbeConfig]):
        """The model object the probes evaluate (lm-eval's own handle when lm-eval runs)."""
        return self.lm.model if any(ProbeConfig.of(c).probe.kind == LM_EVAL for c in configs) else self.model

    def score(self, config: ProbeConfig | dict, folder: Path) -> tuple[Score, str, bool, float]:
        start = time.perf_counter()
        config = ProbeConfig.of(config)
        probe = config.probe
        if probe.kind == FEATURES:
            score, metric, higher = feature_score(self.model, self.tokenizer, config, folder, self.dtype), \
                probe.metric, probe.higher_is_better
        else:
            lm = self.lm
            with self._quiet():
                score, metric, higher = lm_eval_score(lm, config, folder)
        return score, metric, higher, time.perf_counter() - start
