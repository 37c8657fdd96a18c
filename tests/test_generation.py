"""Text-to-text tasks (summarization, translation, instruction) on tiny models built in code:
prompt formatting, completion-only loss, batched = one-by-one generation, the eval-only guard,
a seq2seq model, and a tiny end-to-end sweep per task."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import catalog, matrix, methods, tasks
from harness.tasks import generation
from tests.conftest import FILLER, NEGATIVE, POSITIVE, _tokenizer, write_matrix

TRAINING = matrix.TrainingConfig(max_length=64, batch_size=4, eval_batch_size=4, device="cpu", dtype="float32",
                                  keep_artifact=False).model_dump()
CHAT_TEMPLATE = ("{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                 "{% if add_generation_prompt %}<s> assistant : {% endif %}")


def write_pairs(path: Path, n: int, seed: int = 0, split: bool = False) -> Path:
    """'Translate' each positive word to the negative word at the same index (a task a tiny
    model can start to learn)."""
    import random

    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(n):
            picks = rng.sample(range(len(POSITIVE)), 3)
            row = {"input": " ".join(POSITIVE[k] for k in picks), "target": " ".join(NEGATIVE[k] for k in picks),
                   "group": f"g{i % 40}", "id": i, "topic": rng.choice(FILLER)}
            if split:
                row["split"] = "test" if i % 5 == 0 else "train"
            fh.write(json.dumps(row) + "\n")
    return path


def options(task: str, dataset: Path, **extra) -> dict:
    values = {"dataset": str(dataset), "train_size": 16, "val_size": 4, "test_size": 8, "max_new_tokens": 6,
              "stop": [], **extra}
    return tasks.REGISTRY[task].Options(**values).model_dump()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", 120)


@pytest.fixture(scope="module")
def decoder(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["decoder"])
    tokenizer.pad_token = tokenizer.pad_token or "[PAD]"
    return AutoModelForCausalLM.from_pretrained(tiny_models["decoder"]), tokenizer


# --------------------------------------------------------------------------- data and prompts

def test_splits_by_group_and_sizes(pairs):
    splits = generation.load_splits(options("translation", pairs), ".", "translation")
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [16, 4, 8]
    groups = {s: {r["group"] for r in splits[s]} for s in ("train", "validation", "test")}
    assert not groups["train"] & groups["test"] and not groups["validation"] & groups["test"]


def test_official_split_kept_and_validation_carved_from_train(tmp_path):
    path = write_pairs(tmp_path / "split.jsonl", 200, split=True)
    splits = generation.load_splits(options("summarization", path, prompt="{input}", val_size=4), ".", "s")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    test_ids = {r["id"] for r in rows if r["split"] == "test"}
    assert all(r["id"] in test_ids for r in splits["test"])
    assert not any(r["id"] in test_ids for r in splits["train"] + splits["validation"])


def test_column_mapping_and_missing_column(tmp_path):
    path = tmp_path / "dialogs.csv"
    path.write_text("dialogue,summary\nhello there,greeting\nbye now,farewell\n")
    rows = generation.load_rows(str(path), "dialogue", "summary", ".")
    assert [(r["input"], r["target"]) for r in rows] == [("hello there", "greeting"), ("bye now", "farewell")]
    with pytest.raises(ValueError, match="no column 'text'"):
        generation.load_rows(str(path), "text", "summary", ".")


def test_prompt_field_missing_from_data_is_a_clear_error(pairs):
    with pytest.raises(ValueError, match=r"uses \['aspect'\] but dataset .* has no such column"):
        generation.load_splits(options("summarization", pairs), ".", "summarization")


def test_plain_prompt_and_completion(decoder, pairs):
    _, tokenizer = decoder
    form = generation.TextToText("causal_lm", tokenizer, options("summarization", pairs, prompt="Sum {topic}: {input}"),
                                 TRAINING)
    row = {"input": "great fun", "target": "awful boring", "topic": "film"}
    assert not form.use_chat  # the tiny tokenizer has no chat template
    assert form.prompt(row) == "Sum film: great fun\nSummary:"
    assert form.completion(row) == " awful boring"


def test_chat_prompt_uses_the_models_template(pairs):
    tokenizer = _tokenizer("decoder")
    tokenizer.chat_template = CHAT_TEMPLATE
    form = generation.TextToText("causal_lm", tokenizer, options("instruction", pairs), TRAINING)
    row = {"input": "great fun", "target": "awful boring"}
    assert form.prompt(row) == "<s> user : great fun </s> <s> assistant : "
    assert form.completion(row) == "awful boring"
    plain = generation.TextToText("causal_lm", tokenizer, options("instruction", pairs, chat_template=False), TRAINING)
    assert plain.prompt(row) == "great fun\n\nResponse:"


def test_long_inputs_are_cut_to_max_input_tokens(decoder, pairs):
    _, tokenizer = decoder
    form = generation.TextToText("causal_lm", tokenizer, options("translation", pairs, max_input_tokens=3,
                                                                 prompt="{input}", response_prefix=""), TRAINING)
    assert form.prompt({"input": "great wonderful moving brilliant fun"}) == "great wonderful moving"


def test_cut_at_stop():
    assert generation.cut_at_stop("a cat.\nnext line", ["\n"]) == "a cat."
    assert generation.cut_at_stop(" both\n\nstops\n", ["\n\n", "\n"]) == "both"
    assert generation.cut_at_stop("no stop here ", []) == "no stop here"


# --------------------------------------------------------------------------- training data

def test_loss_only_on_the_completion_and_eos(decoder, pairs, tmp_path):
    from harness.models import Placement
    from harness.train import build_trainer

    model, tokenizer = decoder
    form = generation.TextToText("causal_lm", tokenizer, options("translation", pairs, prompt="{input}"), TRAINING)
    rows = [{"input": "great fun", "target": "awful boring"}]
    trainer = build_trainer(model, form, rows, None, lr=1e-3, training=TRAINING,
                            placement=Placement("cpu", "float32"), seed=0, work_dir=tmp_path)
    example = trainer.train_dataset[0]
    prompt_ids = tokenizer(form.prompt(rows[0]))["input_ids"]
    completion_ids = tokenizer(" awful boring")["input_ids"] + [tokenizer.eos_token_id]
    assert example["input_ids"] == prompt_ids + completion_ids
    assert example["labels"] == [-100] * len(prompt_ids) + completion_ids
    batch = trainer.data_collator([example])
    assert batch["labels"][0].tolist() == example["labels"]


def test_sft_batches_can_be_grouped_by_length(decoder, pairs, tmp_path):
    from harness.models import Placement
    from harness.train import build_trainer

    model, tokenizer = decoder
    training = {**TRAINING, "group_by_length": True}
    form = generation.TextToText("causal_lm", tokenizer, options("translation", pairs, prompt="{input}"), training)
    rows = [{"input": " ".join(["great"] * (1 + i % 7)), "target": "fun"} for i in range(32)]
    trainer = build_trainer(model, form, rows, None, lr=1e-3, training=training,
                            placement=Placement("cpu", "float32"), seed=0, work_dir=tmp_path)
    sampler = trainer._get_train_sampler()
    assert type(sampler).__name__ == "_ShuffledLengthGroups"
    assert sorted(sampler) == list(range(32))


def test_packing_fills_sequences(decoder, pairs, tmp_path):
    from harness.models import Placement
    from harness.train import build_trainer

    model, tokenizer = decoder
    form = generation.TextToText("causal_lm", tokenizer, options("translation", pairs, packing=True), TRAINING)
    rows = generation.load_rows(str(pairs), "input", "target", ".")[:40]
    trainer = build_trainer(model, form, rows, None, lr=1e-3, training=TRAINING,
                            placement=Placement("cpu", "float32"), seed=0, work_dir=tmp_path)
    lengths = [len(e["input_ids"]) for e in trainer.train_dataset]
    assert len(lengths) < len(rows) and max(lengths) <= TRAINING["max_length"]
    assert sum(lengths) == sum(len(tokenizer(form.prompt(r) + form.completion(r))["input_ids"]) + 1 for r in rows)


# --------------------------------------------------------------------------- generation

def test_batched_generation_equals_one_by_one(decoder):
    model, tokenizer = decoder
    prompts = ["great", "the film was very boring and dull", "fun", "a story with brilliant acting and a plot"]
    args = {"max_new_tokens": 8, "stop": [], "device": "cpu"}
    batched = generation.generate(model, tokenizer, prompts, batch_size=4, **args)
    single = [generation.generate(model, tokenizer, [p], batch_size=1, **args)[0] for p in prompts]
    assert batched == single
    assert any(batched)  # something was generated


def test_generation_stops_at_stop_strings(decoder):
    model, tokenizer = decoder
    free = generation.generate(model, tokenizer, ["great fun"], max_new_tokens=8, stop=[], batch_size=1, device="cpu")[0]
    word = free.split()[1] if len(free.split()) > 1 else free.split()[0]
    cut = generation.generate(model, tokenizer, ["great fun"], max_new_tokens=8, stop=[word], batch_size=1,
                              device="cpu")[0]
    assert word not in cut and free.startswith(cut)


# --------------------------------------------------------------------------- the eval-only guard

def test_training_on_an_eval_only_dataset_is_refused_before_anything_runs(tmp_path, tiny_models):
    text = f"""
models: ["{tiny_models['decoder']}"]
methods: [base, {{lora: {{lr: 1.0e-3}}}}]
tasks:
  - summarization: {{dataset: xsum}}
"""
    with pytest.raises(matrix.MatrixError) as err:
        matrix.load(write_matrix(tmp_path, text))
    assert len(err.value.problems) == 1
    assert "tasks[0].summarization.dataset: 'xsum' is evaluation-only (BIG-bench" in err.value.problems[0]
    assert "method lora trains" in err.value.problems[0]


def test_eval_only_dataset_is_fine_for_base_and_as_an_extra_test_set(tmp_path, tiny_models, pairs):
    text = f"""
models: ["{tiny_models['decoder']}"]
methods: [base]
tasks:
  - summarization: {{dataset: xsum, prompt: "{{input}}"}}
"""
    assert len(matrix.load(write_matrix(tmp_path, text)).runs) == 1
    extra = options("summarization", pairs, prompt="{input}", eval_datasets=[{"dataset": "xsum"}])
    assert generation.check_options(extra, methods.info(methods.REGISTRY["lora"]), tmp_path) == []
    assert catalog.eval_only_reason("xsum") and catalog.eval_only_reason("aclsum") is None


def test_runner_refuses_eval_only_training_data_too(tiny_models):
    from harness import methods
    from harness.runner import _refuse_unusable_options

    spec = type("Spec", (), {"task_options": options("summarization", "xsum", prompt="{input}"), "base_dir": "."})
    with pytest.raises(ValueError, match="evaluation-only"):
        _refuse_unusable_options(tasks.REGISTRY["summarization"], spec, methods.REGISTRY["full"])


# --------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("task,metric", [("summarization", "rougeL"), ("translation", "bleu"),
                                         ("instruction", "rougeL")])
def test_tiny_sweep_per_task(task, metric, tmp_path, tiny_models, pairs):
    from harness import store
    from harness.cli import main

    text = f"""
name: tiny-{task}
models: ["{tiny_models['decoder']}"]
methods: [base, {{lora: {{lr: 1.0e-2, r: 4, alpha: 8}}}}, {{full: {{lr: 1.0e-3}}}}]
tasks:
  - {task}:
      dataset: "{pairs}"
      prompt: "{{input}}"
      train_size: 32
      val_size: 4
      test_size: 8
      max_new_tokens: 6
      num_samples: 3
      eval_datasets: [{{dataset: "{pairs}", name: extra, size: 4}}]
training: {{epochs: 1, batch_size: 8, max_length: 48, eval_batch_size: 8}}
"""
    db = tmp_path / "h.duckdb"
    assert main(["sweep", str(write_matrix(tmp_path, text)), "--db", str(db), "--in-process", "--quiet"]) == 0
    st = store.Store(db)
    runs = st.runs()
    assert sorted(runs["status"]) == ["done"] * 3, runs[["method", "error"]].to_dict("records")
    trained = runs[runs["method"] == "lora"]["run_id"].iloc[0]
    metrics = st.metrics(trained)
    scored = metrics[metrics["name"] == metric]
    assert sorted(scored["split"]) == ["extra", "test", "validation"]
    assert scored["value"].between(0, 100).all()
    samples = st.samples(trained)
    assert len(samples) == 3 and set(samples.columns) >= {"input", "reference", "prediction"}
    assert samples["reference"].iloc[0].split()[0] in NEGATIVE
    board = st.leaderboard(f"tiny-{task}", task)
    assert board.set_index("method").loc["lora", f"extra_{metric}"] == pytest.approx(
        scored.set_index("split").loc["extra", "value"])


def test_seq2seq_model_trains_and_generates(tmp_path, pairs):
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    from harness import store
    from harness.cli import main

    torch.manual_seed(0)
    tokenizer = _tokenizer("decoder")
    tokenizer.pad_token = "[PAD]"
    config = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        decoder_start_token_id=tokenizer.bos_token_id, forced_eos_token_id=None)
    path = tmp_path / "tiny-bart"
    BartForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    text = f"""
models: ["{path}"]
methods: [base, {{full: {{lr: 1.0e-3}}}}, {{lora: {{lr: 1.0e-2, r: 4, alpha: 8, target_modules: [q_proj, v_proj]}}}}]
tasks:
  - translation: {{dataset: "{pairs}", prompt: "{{input}}", train_size: 16, val_size: 4, test_size: 4,
                   max_new_tokens: 5}}
training: {{epochs: 1, batch_size: 8, max_length: 32, eval_batch_size: 4}}
"""
    db = tmp_path / "h.duckdb"
    assert main(["sweep", str(write_matrix(tmp_path, text)), "--db", str(db), "--in-process", "--quiet"]) == 0
    runs = store.Store(db).runs()
    assert sorted(runs["status"]) == ["done"] * 3, runs[["method", "error"]].to_dict("records")


def test_generation_bench_quick_mode_runs_and_outputs_match():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "bench_generation.py"), "--quick"], cwd=root,
                         check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "identical outputs: 8/8" in out.stdout
    speedup = float(out.stdout.split("speed-up: ")[1].split("x")[0])
    assert speedup > 0
