"""Shared fixtures: tiny models and a tiny labelled dataset built in code (fast unit and
end-to-end tests), offline Hugging Face settings, and a per-session HF_HOME."""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="harness-test-hf-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

POSITIVE = "great wonderful moving brilliant fun charming superb delightful".split()
NEGATIVE = "awful boring dull terrible weak tedious clumsy bland".split()
FILLER = "the film movie story plot acting was is and a an with very quite really".split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"]


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """Synthetic reviews whose label is carried by sentiment words; 'group' is a movie id."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(FILLER, 4) + rng.sample(POSITIVE if label else NEGATIVE, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label, "movie": f"movie{i % 97}"})
    return rows


def _tokenizer(model_kind: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(POSITIVE + NEGATIVE + FILLER + ["review", "sentiment", "negative", "positive", ":"]))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if model_kind == "encoder":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                       model_max_length=64)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>",
                                   model_max_length=128)


def build_tiny_encoder(path: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = _tokenizer("encoder")
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_decoder(path: Path, hidden: int = 32, layers: int = 2) -> Path:
    """Llama-style, with the LM head tied to the embeddings (as SmolLM2)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = _tokenizer("decoder")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {"encoder": build_tiny_encoder(root / "tiny-bert"), "decoder": build_tiny_decoder(root / "tiny-llama")}


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    import csv

    path = tmp_path_factory.mktemp("tiny-data") / "reviews.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label", "movie"])
        writer.writeheader()
        writer.writerows(make_rows(400))
    return path


def write_matrix(folder: Path, text: str, name: str = "m.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def tiny_matrix_text(tiny_models, tiny_dataset) -> str:
    """A matrix over both tiny models and every method."""
    return f"""
name: tiny
models: ["{tiny_models['encoder']}", "{tiny_models['decoder']}"]
methods:
  - base
  - full: {{lr: 1.0e-3}}
  - transfer: {{lr: 1.0e-2, train_last_layers: 1}}
  - lora: {{lr: 1.0e-2, r: 4, alpha: 8}}
tasks:
  - sentiment:
      dataset: "{tiny_dataset}"
      group_column: movie
      train_size: 64
      val_size: 16
      test_size: 32
      num_samples: 5
training: {{epochs: 1, batch_size: 16, max_length: 32, eval_batch_size: 16}}
seeds: [0]
"""


@pytest.fixture
def tiny_matrix(tmp_path, tiny_models, tiny_dataset) -> Path:
    return write_matrix(tmp_path, tiny_matrix_text(tiny_models, tiny_dataset))
