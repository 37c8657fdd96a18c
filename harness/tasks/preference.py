"""`preference`: preference tuning of decoders with DPO (trl's DPOTrainer), scored on held-out
preference pairs, with every method.

Objective: Direct Preference Optimization (Rafailov et al. 2023) through trl's DPOTrainer, with
its `beta`, `loss_type` and `label_smoothing`, and TR-DPO's `sync_ref_model`. The reference model
is the untrained base (harness.reference): peft methods disable their adapter (no second copy;
for qlora that is the 4-bit base), full/transfer/adapter get a frozen float32 copy loaded once
(SmolLM2-135M: +0.54 GB; `harness plan` counts it), the `base` row is its own reference.

Tokenization is the harness's, shared by training and scoring (trl's own is bypassed so that the
two see the same tokens): the prompt is rendered with the model's chat template when it has one
(generation prompt included) and the answers are followed by the end-of-sequence token; without
a template the prompt is the user text and the answer follows after a space. Prompts longer than
`max_prompt_length` tokens keep their end (the answer cue); prompt + answer is cut to
`max_length` keeping the start, as trl does.

Metrics on held-out pairs (validation, test), each pair scored under the tuned policy and the
reference: `preference_accuracy` (the implicit reward beta * (log pi - log pi_ref) ranks chosen
above rejected; a tie counts one half, so the untrained `base` row is exactly 0.5), `reward_margin`
(the mean reward difference), `chosen_logp`/`rejected_logp` (the policy's summed log-probabilities
of the answers), `likelihood_accuracy` (the policy alone gives the chosen answer the higher
log-probability: meaningful for `base` too) and `kl_to_reference` (per answer token,
KL(pi || pi_ref) over the whole vocabulary, teacher-forced on the held-out answers). Item-level
outcomes: one per pair (preference accuracy; confidence sigmoid(margin), the Bradley-Terry
probability the policy gives its own ranking).

Sentiment control (`dataset: rotten_tomatoes`): per movie, a fresh snippet (chosen) and a rotten
one (rejected) for the prompt "Write a short positive review of {movie}:", split by movie as the
sentiment task does. With a `classifier` (a local sequence-classification folder, or
`run:<run_id>`: that run's saved artifact, e.g. the default sweep's MiniLM full run), the test
prompts are also answered greedily and `positive_rate` is the share the classifier calls
positive, stored as the split `generation` (leaderboard column `generation_positive_rate`).

Data: `dpo_en_demo` (the catalog's 300 LLaMA-Factory pairs, conversations of 1-7 turns, split
by pair), `rotten_tomatoes`, or a local csv/jsonl/json/parquet file or `hf:` dataset with
`prompt`/`chosen`/`rejected` columns (strings, or conversational: the prompt a list of
{role, content} messages, the answers a message or a list ending with the answer).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness import catalog
from harness.items import Outcomes
from harness.tasks import tables

NAME = "preference"
PRIMARY_METRIC = "preference_accuracy"
METRICS = ("preference_accuracy", "reward_margin", "chosen_logp", "rejected_logp", "likelihood_accuracy",
           "kl_to_reference", "positive_rate")
METRIC_MODULES = ()
HIGHER_IS_BETTER = {"preference_accuracy": True, "reward_margin": True, "chosen_logp": True, "rejected_logp": False,
                    "likelihood_accuracy": True, "kl_to_reference": False, "positive_rate": True}
NEEDS_REFERENCE = True
SEQUENCES_PER_EXAMPLE = 2  # a pair trains as its chosen and its rejected sequence
SEQUENCE_LENGTH_OPTION = "max_length"  # replaces training.max_length (harness.plan sizes by it)
GENERATION_SPLIT = "generation"
RUN_PREFIX = "run:"
SENTIMENT_CONTROL = "rotten_tomatoes"
# trl 1.16 DPOConfig.loss_type values that need nothing but a preference pair
LOSS_TYPES = Literal["sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair", "aot", "aot_unpaired",
                     "apo_zero", "apo_down", "discopop", "sigmoid_norm"]


class Options(BaseModel):
    """DPO on prompt/chosen/rejected pairs (trl DPOConfig defaults where trl has the option)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field("dpo_en_demo", description="dpo_en_demo, rotten_tomatoes (sentiment control pairs), "
                         "hf:org/name, or a csv/jsonl/json/parquet file with prompt/chosen/rejected columns")
    prompt_column: str = Field("prompt", description="files and hub data: the prompt (text or messages)")
    chosen_column: str = Field("chosen", description="files and hub data: the preferred answer")
    rejected_column: str = Field("rejected", description="files and hub data: the dispreferred answer")
    group_column: str = Field("group", description="rows of one group never straddle splits (default column "
                              "'group'; the prompt where absent)")
    prompt: str = Field("Write a short positive review of {movie}:",
                        description="rotten_tomatoes: the sentiment-control prompt; {movie} is replaced")
    pairs_per_movie: int = Field(1, gt=0, description="rotten_tomatoes: pairs per movie (fresh and rotten "
                                 "snippets paired in file order)")
    chat_template: bool = Field(True, description="render the prompt with the model's chat template when it has one")
    beta: float = Field(0.1, gt=0, description="DPO's beta: higher keeps the policy closer to the reference "
                        "(trl default 0.1; for ipo its tau)")
    loss_type: LOSS_TYPES = Field("sigmoid", description="trl DPOConfig.loss_type (default sigmoid: DPO)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="robust DPO: the assumed share of flipped "
                                   "preference labels (trl default 0)")
    max_length: int = Field(1024, ge=8, le=32768, description="tokens of prompt + answer (trl default 1024); "
                            "longer sequences keep their start. Replaces training.max_length for this task")
    max_prompt_length: int = Field(512, gt=0, description="tokens of the prompt (trl < 1.0's default 512; trl "
                                   "1.16 has no such option: the harness cuts the prompt, keeping its end)")
    sync_ref_model: bool = Field(False, description="TR-DPO: move the reference towards the policy every "
                                 "ref_model_sync_steps (needs a separate reference: full, transfer, adapter)")
    ref_model_mixup_alpha: float = Field(0.6, ge=0, le=1, description="TR-DPO's alpha (trl default 0.6)")
    ref_model_sync_steps: int = Field(512, gt=0, description="TR-DPO's tau (trl default 512)")
    classifier: str | None = Field(None, description="sentiment control: a local sequence-classification "
                                   "folder, or run:<run_id> (that run's saved artifact), judging generations")
    positive_label: int = Field(1, ge=0, description="the classifier's index of the positive class "
                                "(the sentiment task's label_names: 1 = positive)")
    max_new_tokens: int = Field(32, gt=0, le=1024, description="sentiment control: generation length limit")
    train_size: int = Field(128, gt=0, description="training pairs (sampled from the train split)")
    val_size: int = Field(24, gt=0, description="validation pairs")
    test_size: int = Field(48, gt=0, description="test pairs (the reported scores)")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of groups in the test split")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of groups in the validation split")
    split_seed: int = Field(0, ge=0, description="seed of the split and of the subsampling (not the run seed)")
    num_samples: int = Field(20, ge=0, description="test pairs (and generations) stored as samples")

    @model_validator(mode="after")
    def _check(self):
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError("test_fraction + val_fraction must leave room for a train split")
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be below max_length "
                             f"({self.max_length}), or no answer token is left")
        if "{movie}" not in self.prompt:
            raise ValueError("prompt must contain {movie}")
        return self


def head_for(family: str) -> str:
    if family == "decoder":
        return "causal_lm"
    raise ValueError(f"task {NAME} tunes decoders (causal LMs) on their answers' log-probabilities, not an {family}")


def check_options(options: dict, method, base_dir: Path) -> list[tuple[str, str]]:
    """Options that cannot work, or cannot work with the run's method (harness.methods.MethodInfo)."""
    problems = []
    if options["sync_ref_model"] and method.trains and method.peft_adapter:
        problems.append(("sync_ref_model", (
            f"task {NAME} with sync_ref_model: true cannot work with method {method.name}: TR-DPO moves a separate "
            f"reference model towards the policy, and a peft adapter's reference is the adapter disabled (trl "
            "refuses it); use full, transfer or adapter, or sync_ref_model: false")))
    reason = catalog.eval_only_reason(options["dataset"])
    if method.trains and reason:
        problems.append(("dataset", f"{options['dataset']!r} is evaluation-only ({reason}): it cannot be training "
                                    f"data for method {method.name}"))
    classifier = options["classifier"]
    if classifier and not classifier.startswith(RUN_PREFIX):
        problem = catalog.check_ref(classifier, "model", base_dir)
        if problem:
            problems.append(("classifier", problem))
    return problems


# --------------------------------------------------------------------------- data

def load_splits(options: dict[str, Any], base_dir: str = ".") -> dict[str, list[dict]]:
    """{split: [{"prompt": [messages], "chosen", "rejected"}]} for train/validation/test, plus
    the test prompts as `generation` when a classifier judges generations."""
    rows = _load_rows(options, base_dir)
    out = {split: [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in chosen]
           for split, chosen in tables.sample_splits(rows, options, f"task {NAME}: pairs").items()}
    if options["classifier"]:
        prompts = list({_key(r["prompt"]): r["prompt"] for r in out["test"]}.values())
        out[GENERATION_SPLIT] = [{"prompt": p, "generate": True} for p in prompts]
    return out


def _key(messages: list[dict]) -> str:
    return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in messages)


def _load_rows(options: dict[str, Any], base_dir: str) -> list[dict]:
    ref = options["dataset"]
    if ref == SENTIMENT_CONTROL:
        return sentiment_control_pairs(catalog.resolve(ref, "dataset"), options["prompt"], options["pairs_per_movie"])
    frame = tables.read_table(catalog.resolve(ref, "dataset", Path(base_dir)), is_hub=catalog.is_hub_ref(ref))
    columns = [options["prompt_column"], options["chosen_column"], options["rejected_column"]]
    for col in columns:
        if col not in frame.columns:
            raise ValueError(f"dataset {ref}: no column {col!r} (columns: {', '.join(map(str, frame.columns))})")
    group = options["group_column"] if options["group_column"] in frame.columns else None
    rows = []
    for i, record in enumerate(frame.to_dict("records")):
        prompt = as_messages(record[columns[0]], f"dataset {ref}: row {i}: {columns[0]}")
        rows.append({"prompt": prompt, "chosen": answer_text(record[columns[1]], f"dataset {ref}: row {i}: {columns[1]}"),
                     "rejected": answer_text(record[columns[2]], f"dataset {ref}: row {i}: {columns[2]}"),
                     "group": str(record[group]) if group else _key(prompt)})
    return rows


def sentiment_control_pairs(path: str, template: str, per_movie: int) -> list[dict]:
    """Per movie, its fresh snippets (chosen) paired in file order with its rotten ones
    (rejected), at most `per_movie` pairs; the group is the movie (split by movie). The data's
    movie_name is a Rotten Tomatoes URL slug ("a_night_at_the_golden_eagle"): the prompt gets it
    with spaces. 465 of its movies have both a fresh and a rotten snippet."""
    import pandas as pd

    frame = pd.read_csv(path)
    rows = []
    for movie, snippets in frame.groupby("movie_name", sort=True):
        fresh = snippets.loc[snippets["category"] == "fresh", "text"].tolist()
        rotten = snippets.loc[snippets["category"] == "rotten", "text"].tolist()
        prompt = [{"role": "user", "content": template.format(movie=str(movie).replace("_", " "))}]
        rows += [{"prompt": prompt, "chosen": c, "rejected": r, "group": movie}
                 for c, r in list(zip(fresh, rotten))[:per_movie]]
    return rows


def as_messages(value, where: str) -> list[dict]:
    """A prompt as chat messages: a string is one user turn."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    messages = list(value) if value is not None and not isinstance(value, dict) else None
    if not messages or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages):
        raise ValueError(f"{where}: expected a string or a list of {{role, content}} messages (got {value!r:.80})")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


def answer_text(value, where: str) -> str:
    """An answer as text: a string, a message, or a list of messages ending with the answer."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "content" in value:
        return str(value["content"])
    if value is not None and len(value) and isinstance(value[-1], dict) and "content" in value[-1]:
        return str(value[-1]["content"])
    raise ValueError(f"{where}: expected a string or a {{role, content}} message (got {value!r:.80})")


# --------------------------------------------------------------------------- formulation

def formulation(head: str, tokenizer, options: dict[str, Any], training: dict[str, Any]):
    return PreferencePairs(tokenizer, options)


class PreferencePairs:
    """Tokenized pairs, the DPO trainer, and the reference it is scored against."""

    head = "causal_lm"

    def __init__(self, tokenizer, options: dict):
        self.tokenizer = tokenizer
        self.options = options
        self.use_chat = bool(options["chat_template"] and getattr(tokenizer, "chat_template", None))
        self.context = None  # harness.reference.RunContext, from bind()

    def bind(self, context) -> None:
        self.context = context

    def prompt_text(self, messages: list[dict]) -> str:
        if self.use_chat:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] if m["role"] == "user" else f"{m['role']}: {m['content']}" for m in messages)

    def features(self, row: dict) -> dict:
        """prompt_ids, chosen_ids, rejected_ids: what trl's preference collator takes."""
        tok = self.tokenizer
        prompt_ids = tok(self.prompt_text(row["prompt"]), add_special_tokens=not self.use_chat)["input_ids"]
        prompt_ids = prompt_ids[-self.options["max_prompt_length"]:]
        room = self.options["max_length"] - len(prompt_ids)
        lead = "" if self.use_chat else " "

        def answer(text: str) -> list[int]:
            return (tok(lead + text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])[:room]

        return {"prompt_ids": prompt_ids, "chosen_ids": answer(row["chosen"]), "rejected_ids": answer(row["rejected"])}

    def encode(self, rows: list[dict]) -> list[dict]:
        """prompt + chosen answer as plain causal-LM features (the runner's one-batch check)."""
        out = []
        for row in rows:
            f = self.features(row)
            ids = f["prompt_ids"] + f["chosen_ids"]
            out.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
        return out

    def trainer(self, model, train_rows: list[dict], val_rows: list[dict] | None, setup):
        return dpo_trainer(model, self, train_rows, val_rows, setup)


def dpo_trainer(model, form: PreferencePairs, train_rows, val_rows, setup):
    """trl's DPOTrainer on the harness's tokenized pairs, against the run's reference."""
    from datasets import Dataset, disable_progress_bars
    from trl import DPOConfig, DPOTrainer

    from harness.train import in_random_groups

    disable_progress_bars()
    options = form.options
    config = DPOConfig(
        **setup.arguments(), beta=options["beta"], loss_type=[options["loss_type"]],
        label_smoothing=options["label_smoothing"], max_length=options["max_length"],
        sync_ref_model=options["sync_ref_model"], ref_model_mixup_alpha=options["ref_model_mixup_alpha"],
        ref_model_sync_steps=options["ref_model_sync_steps"],
        dataset_num_proc=None,
    )

    class _DPOTrainer(in_random_groups(DPOTrainer)):
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset  # tokenized by the formulation, as scoring sees it

    reference = form.context.reference
    trainer = _DPOTrainer(
        model=model, ref_model=reference.frozen_copy(), args=config, processing_class=form.tokenizer,
        train_dataset=Dataset.from_list([form.features(r) for r in train_rows]),
        eval_dataset=Dataset.from_list([form.features(r) for r in val_rows]) if val_rows else None,
    )
    if reference.by_disabling and "ref" in model.peft_config:
        # trl copied the fresh adapter as a "ref" adapter; the base (adapter disabled) is the
        # reference instead: the same for lora/ia3, not for a randomly initialised prompt or prefix.
        model.delete_adapter("ref")
    return trainer


# --------------------------------------------------------------------------- scoring

def score(form: PreferencePairs, model, examples: list[dict], batch_size: int, device: str, autocast_dtype=None,
          label: str | None = None):
    if examples and examples[0].get("generate"):
        return _score_generations(form, model, examples, batch_size, device, autocast_dtype, label)
    return _score_pairs(form, model, examples, batch_size, device, autocast_dtype, label)


def _score_pairs(form, model, examples, batch_size, device, autocast_dtype, label):
    import torch
    from tqdm.auto import tqdm

    from harness.models import autocast

    beta = form.options["beta"]
    features = [form.features(r) for r in examples]
    per_batch = max(1, batch_size // SEQUENCES_PER_EXAMPLE)
    stats = []
    model.eval()
    with torch.inference_mode(), autocast(device, autocast_dtype):
        for start in tqdm(range(0, len(features), per_batch), desc=f"  {label}", unit="batch", leave=False,
                          disable=label is None):
            stats += pair_statistics(model, form.context.reference, features[start:start + per_batch],
                                     form.tokenizer.pad_token_id, device)
    margins = [beta * ((s["chosen"] - s["ref_chosen"]) - (s["rejected"] - s["ref_rejected"])) for s in stats]
    wins = [1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins]
    results = {
        "preference_accuracy": _mean(wins),
        "reward_margin": _mean(margins),
        "chosen_logp": _mean([s["chosen"] for s in stats]),
        "rejected_logp": _mean([s["rejected"] for s in stats]),
        "likelihood_accuracy": _mean([float(s["chosen"] > s["rejected"]) for s in stats]),
        "kl_to_reference": _mean([s["kl"] for s in stats]),
    }
    confidences = [1 / (1 + math.exp(-abs(m))) for m in margins]
    outcomes = Outcomes(metric=PRIMARY_METRIC, values=wins, predictions=[f"margin {m:+.4f}" for m in margins],
                        confidences=confidences, inputs=[_key(r["prompt"]).replace("\x1f", ": ") for r in examples],
                        references=[f"chosen: {r['chosen']}\nrejected: {r['rejected']}" for r in examples])
    return results, margins, outcomes


def _mean(values: list[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def pair_statistics(model, reference, features: list[dict], pad_id: int, device: str) -> list[dict]:
    """Per pair: the policy's and the reference's summed answer log-probabilities (chosen,
    rejected) and the mean per-answer-token KL(policy || reference) over both answers."""
    import torch

    from trl.trainer.dpo_trainer import DataCollatorForPreference

    batch = DataCollatorForPreference(pad_token_id=pad_id)(features)  # [chosen..., rejected...], right-padded
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
    answer = batch["completion_mask"][:, 1:].to(device).float()  # positions predicting an answer token
    targets = inputs["input_ids"][:, 1:].unsqueeze(-1)

    width = inputs["input_ids"].shape[1]

    def log_probs(m):  # prompt tuning prepends virtual positions to the outputs: keep the real ones
        return torch.log_softmax(m(**inputs).logits[:, -width:-1].float(), dim=-1)

    policy = log_probs(model)
    with reference.active() as ref_model:
        ref = log_probs(ref_model)
    logp = (policy.gather(-1, targets).squeeze(-1) * answer).sum(-1)
    ref_logp = (ref.gather(-1, targets).squeeze(-1) * answer).sum(-1)
    kl = ((policy.exp() * (policy - ref)).sum(-1) * answer).sum(-1)
    n = len(features)
    tokens = answer.sum(-1)
    return [{"chosen": float(logp[i]), "rejected": float(logp[n + i]), "ref_chosen": float(ref_logp[i]),
             "ref_rejected": float(ref_logp[n + i]),
             "kl": float((kl[i] + kl[n + i]) / (tokens[i] + tokens[n + i]).clamp(min=1))} for i in range(n)]


def _score_generations(form, model, examples, batch_size, device, autocast_dtype, label):
    """Greedy answers to the prompts, judged by the classifier: the positive rate."""
    from harness.tasks.generation import generate

    prompts = [form.prompt_text(r["prompt"]) for r in examples]
    texts = generate(model, form.tokenizer, prompts, max_new_tokens=form.options["max_new_tokens"], stop=[],
                     batch_size=batch_size, device=device, autocast_dtype=autocast_dtype, label=label)
    labels, confidences = classify(classifier_path(form), texts, batch_size, device)
    positive = [float(y == form.options["positive_label"]) for y in labels]
    outcomes = Outcomes(metric="positive_rate", values=positive, predictions=texts, confidences=confidences,
                        inputs=[_key(r["prompt"]).replace("\x1f", ": ") for r in examples],
                        references=["positive"] * len(examples))
    return {"positive_rate": _mean(positive)}, texts, outcomes


def classifier_path(form: PreferencePairs) -> Path:
    ref = form.options["classifier"]
    if ref.startswith(RUN_PREFIX):
        path = form.context.runs_dir / ref[len(RUN_PREFIX):] / "artifact"
        if not (path / "config.json").is_file():
            raise ValueError(f"task_options.classifier {ref!r}: {path} holds no saved model (the run must be done, "
                             "with keep_artifact, and its method must save a whole model: full)")
        return path
    return Path(catalog.resolve(ref, "model", form.context.base_dir))


def classify(path: Path, texts: list[str], batch_size: int, device: str) -> tuple[list[int], list[float]]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    judge = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
    labels, confidences = [], []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], truncation=True, max_length=128, padding=True,
                              return_tensors="pt").to(device)
            top = judge(**batch).logits.float().softmax(-1).max(-1)
            labels += top.indices.tolist()
            confidences += top.values.tolist()
    return labels, confidences


def sample_rows(options: dict, examples: list[dict], predictions: list) -> list[dict]:
    return [
        {"idx": i, "input": _key(e["prompt"]).replace("\x1f", ": "),
         "reference": f"chosen: {e['chosen']}\nrejected: {e['rejected']}", "prediction": f"margin {m:+.4f}"}
        for i, (e, m) in enumerate(zip(examples, predictions))
    ][: options["num_samples"]]
