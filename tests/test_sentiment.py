"""The sentiment task: group splits, label handling, and the decoder verbalizer's loss and
left-padded scoring."""
from __future__ import annotations

import pytest
import torch

from harness import models
from harness.matrix import TrainingConfig
from harness.tasks import sentiment as task

TRAINING = TrainingConfig().model_dump()


def options(dataset, **kw):
    return task.Options(dataset=str(dataset), group_column="movie", **kw).model_dump()


def test_group_split_is_disjoint_deterministic_and_sized(tiny_dataset):
    import pandas as pd

    opts = options(tiny_dataset, train_size=100, val_size=20, test_size=40)
    splits = task.load_splits(opts)
    assert {k: len(v) for k, v in splits.items()} == {"train": 100, "validation": 20, "test": 40}
    assert task.load_splits(opts) == splits
    frame = pd.read_csv(tiny_dataset)
    movie_of = dict(zip(frame["text"], frame["movie"]))
    movies = {s: {movie_of[e["text"]] for e in rows} for s, rows in splits.items()}
    assert not movies["train"] & movies["test"] and not movies["train"] & movies["validation"]
    assert not movies["validation"] & movies["test"]
    other = task.load_splits({**opts, "split_seed": 1})
    assert other["test"] != splits["test"]


def test_asking_for_more_than_a_split_has_is_a_clear_error(tiny_dataset):
    with pytest.raises(ValueError, match="test needs 5000 examples but the test split of .* has"):
        task.load_splits(options(tiny_dataset, train_size=10, val_size=5, test_size=5000))


def test_string_labels_and_missing_columns(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join('{"review": "x%d", "sentiment": "%s"}' % (i, "Positive" if i % 2 else "negative")
                              for i in range(60)))
    opts = task.Options(dataset=str(path), text_column="review", label_column="sentiment",
                        train_size=10, val_size=2, test_size=2).model_dump()
    splits = task.load_splits(opts)
    assert {e["label"] for e in splits["train"]} <= {0, 1}
    assert all(e["label"] == int(e["text"][1:]) % 2 for s in splits.values() for e in s)
    with pytest.raises(ValueError, match="no column 'text'"):
        task.load_splits({**opts, "text_column": "text"})


def decoder_form(tiny_models):
    path = str(tiny_models["decoder"])
    tokenizer = models.load_tokenizer(path, "decoder")
    model = models.load_model(path, "causal_lm", tokenizer=tokenizer).eval()
    form = task.formulation("causal_lm", tokenizer, task.Options().model_dump(), TRAINING)
    return tokenizer, model, form


def test_verbalizer_loss_is_lm_cross_entropy_on_the_label_token(tiny_models):
    tokenizer, model, form = decoder_form(tiny_models)
    example = {"text": "great fun film", "label": 1}
    batch = form.collator()(form.encode([example]))
    outputs = model(**{k: v for k, v in batch.items() if k != "labels"})
    loss = form.compute_loss_func(outputs, batch["labels"])
    ids = tokenizer("Review: great fun film\nSentiment:")["input_ids"]
    full_logits = model(torch.tensor([ids])).logits[0, -1]
    expected = torch.nn.functional.cross_entropy(full_logits[None], torch.tensor([form.label_token_ids[1]]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert form.label_token_ids == [tokenizer.convert_tokens_to_ids("negative"), tokenizer.convert_tokens_to_ids("positive")]


def test_left_padding_does_not_change_a_prediction(tiny_models):
    _, model, form = decoder_form(tiny_models)
    short = {"text": "dull", "label": 0}
    long = {"text": "the movie was very quite really boring and tedious with a bland plot", "label": 0}
    alone, _ = form.logits_and_loss(model, form.collator()(form.encode([short])))
    batched, _ = form.logits_and_loss(model, form.collator()(form.encode([long, short])))
    assert torch.allclose(alone[0], batched[1], atol=1e-5)


def test_score_reports_accuracy_f1_loss(tiny_models, tiny_dataset):
    _, model, form = decoder_form(tiny_models)
    examples = task.load_splits(options(tiny_dataset, train_size=10, val_size=5, test_size=30))["test"]
    scores, predictions, outcomes = task.score(form, model, examples, 8, "cpu")
    accuracy = sum(p == e["label"] for p, e in zip(predictions, examples)) / len(examples)
    assert scores["accuracy"][0] == pytest.approx(accuracy)
    assert scores["accuracy"][1] == pytest.approx((accuracy * (1 - accuracy) / 30) ** 0.5)
    assert 0 <= scores["f1_macro"][0] <= 1 and scores["loss"][0] > 0
    # one outcome per example, in order: correct 0/1, the predicted label, its probability
    names = form.options["label_names"]
    assert outcomes.metric == "accuracy" and sum(outcomes.values) / 30 == pytest.approx(accuracy)
    assert outcomes.values == [float(p == e["label"]) for p, e in zip(predictions, examples)]
    assert outcomes.predictions == [names[p] for p in predictions]
    assert outcomes.inputs == [e["text"] for e in examples]
    assert all(0.5 <= c <= 1 for c in outcomes.confidences)  # two classes: the argmax has at least half
    entry = outcomes.entry("test")
    assert len(set(entry["item_id"])) == 30 and entry["split"] == "test"


def test_length_sorted_scoring_keeps_each_prediction_with_its_example(tiny_models, tiny_dataset):
    """Batches are formed by length, predictions come back in the examples' order: the same as
    scoring one example at a time."""
    _, model, form = decoder_form(tiny_models)
    examples = task.load_splits(options(tiny_dataset, train_size=10, val_size=5, test_size=30))["test"]
    batched, predictions, batched_items = task.score(form, model, examples, 8, "cpu")
    alone, one_by_one, alone_items = task.score(form, model, examples, 1, "cpu")
    assert predictions == one_by_one
    assert batched_items.confidences == pytest.approx(alone_items.confidences, rel=1e-5)
    assert batched["loss"][0] == pytest.approx(alone["loss"][0], rel=1e-5)


def test_by_length_batches_every_index_once_longest_first():
    from harness.tasks.batches import by_length

    lengths = [3, 9, 1, 9, 5, 2, 7]
    batches = by_length(lengths, 3)
    assert batches == [[1, 3, 6], [4, 0, 5], [2]]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert by_length([], 4) == []


@pytest.mark.parametrize(("group", "sampler"), [(True, "_ShuffledLengthGroups"), (False, "RandomSampler")])
def test_training_batches_grouped_by_length_unless_turned_off(tiny_models, tmp_path, group, sampler):
    from harness.train import build_trainer

    _, model, _ = decoder_form(tiny_models)
    training = TrainingConfig(device="cpu", dtype="float32", batch_size=4, group_by_length=group).model_dump()
    tokenizer = models.load_tokenizer(str(tiny_models["decoder"]), "decoder")
    form = task.formulation("causal_lm", tokenizer, task.Options().model_dump(), training)
    words = "the movie was very quite really boring and tedious with a bland plot and dull acting".split()
    train = [{"text": " ".join(words[:1 + (7 * i) % len(words)]), "label": i % 2} for i in range(64)]
    trainer = build_trainer(model, form, train, None, lr=1e-3, training=training,
                            placement=models.place("cpu", "float32"), seed=0, work_dir=tmp_path)
    assert type(trainer._get_train_sampler()).__name__ == sampler
    if group:  # batches of similar length: less padding than uniformly shuffled ones
        from transformers.trainer_pt_utils import get_length_grouped_indices

        lengths = [len(e["input_ids"]) for e in trainer.train_dataset]
        torch.manual_seed(0)
        order = list(trainer._get_train_sampler())
        assert sorted(order) == list(range(64))
        padded = sum(max(lengths[i] for i in order[s:s + 4]) * len(order[s:s + 4]) for s in range(0, 64, 4))
        assert padded < sum(max(lengths[i] for i in range(s, s + 4)) * 4 for s in range(0, 64, 4))
        # the same batches transformers' grouping makes, in a random order instead of longest first
        torch.manual_seed(0)
        theirs = get_length_grouped_indices(lengths, 4)
        batches = [tuple(order[s:s + 4]) for s in range(0, 64, 4)]
        assert sorted(batches) == sorted(tuple(theirs[s:s + 4]) for s in range(0, 64, 4))
        assert batches != [tuple(theirs[s:s + 4]) for s in range(0, 64, 4)]


def test_label_names_must_start_with_distinct_tokens(tiny_models):
    tokenizer = models.load_tokenizer(str(tiny_models["decoder"]), "decoder")
    opts = task.Options(label_names=["qqqq", "zzzz"]).model_dump()  # both words are unknown: [UNK]
    with pytest.raises(ValueError, match="do not start with distinct tokens"):
        task.formulation("causal_lm", tokenizer, opts, TRAINING)


def test_metric_modules_agree_with_sklearn():
    from sklearn.metrics import accuracy_score, f1_score

    from harness import metrics

    preds, refs = [0, 1, 1, 0, 1, 1, 0], [0, 1, 0, 0, 1, 0, 1]
    assert metrics.compute("accuracy", preds, refs)["accuracy"] == accuracy_score(refs, preds)
    assert metrics.compute("f1", preds, refs, average="macro")["f1"] == pytest.approx(f1_score(refs, preds, average="macro"))
