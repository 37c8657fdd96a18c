"""Build steps of catalog entries (Asset.build): the extracted files of an entry become what
its tasks read. The Bible pairs are built in sword.py, GGUF checkpoints in harness.models."""
from __future__ import annotations

import bz2
import json
import shutil
from pathlib import Path

from harness.catalog.entries import AssetError

def decompress_bz2_members(entry: Path) -> None:
    """Build step for datasets shipped as .bz2: keep only the decompressed file."""
    for packed in list(entry.rglob("*.bz2")):
        with bz2.open(packed, "rb") as src, open(packed.with_suffix(""), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        packed.unlink()


# Build steps of the generation datasets: the extracted files become one jsonl (load_path) of
# {"input", "target", "split", "group", ...extra} rows, the extracted files are removed.

def _write_rows(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def build_aclsum(entry: Path) -> None:
    """One row per (paper, aspect): input = the abstract (its sentences joined by spaces),
    document = abstract, introduction and conclusion as three paragraphs, target = the aspect's
    summary; split from the file (val -> validation), group = paper id."""
    rows = []
    for name, split in (("train", "train"), ("val", "validation"), ("test", "test")):
        with open(entry / f"{name}.jsonl", encoding="utf-8") as fh:
            papers = [json.loads(line) for line in fh if line.strip()]
        for paper in papers:
            sections = [" ".join(paper["sentences"][part]) for part in ("abstract", "introduction", "conclusion")]
            for aspect in ("challenge", "approach", "outcome"):
                rows.append({"input": sections[0], "target": paper["summary"][aspect], "split": split,
                             "group": paper["id"], "aspect": aspect, "title": paper["title"],
                             "document": "\n\n".join(s for s in sections if s)})
        (entry / f"{name}.jsonl").unlink()
    _write_rows(entry / "aclsum.jsonl", rows)


def _task_examples(path: Path) -> list[dict]:
    examples = json.loads(path.read_text(encoding="utf-8"))["examples"]
    path.unlink()
    return examples


def build_xsum(entry: Path) -> None:
    """Article -> one-sentence summary; all rows are the test split, group = row index."""
    rows = [{"input": e["input"], "target": e["target"], "split": "test", "group": str(i), "id": e.get("comment", "")}
            for i, e in enumerate(_task_examples(entry / "task.json"))]
    _write_rows(entry / "xsum.jsonl", rows)


def build_alpaca(entry: Path) -> None:
    """input = instruction, then a blank line and the context when there is one; target = the
    response; no split (group = row index)."""
    path = entry / "alpaca_en_demo.json"
    records = json.loads(path.read_text(encoding="utf-8"))
    path.unlink()
    _write_rows(entry / "alpaca_demo.jsonl", (
        {"input": r["instruction"] + (f"\n\n{r['input']}" if r["input"] else ""), "target": r["output"],
         "split": None, "group": str(i), "instruction": r["instruction"], "context": r["input"]}
        for i, r in enumerate(records)))


SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def build_dpo_demo(entry: Path) -> None:
    """sharegpt preference rows -> {"prompt": [{role, content}], "chosen", "rejected", "group"}."""
    path = entry / "dpo_en_demo.json"
    records = json.loads(path.read_text(encoding="utf-8"))
    path.unlink()
    _write_rows(entry / "dpo_en_demo.jsonl", (
        {"prompt": [{"role": SHAREGPT_ROLES[turn["from"]], "content": turn["value"]} for turn in r["conversations"]],
         "chosen": r["chosen"]["value"], "rejected": r["rejected"]["value"], "group": str(i)}
        for i, r in enumerate(records)))


def build_multiemo_en_es(entry: Path) -> None:
    """Index-aligned English and Spanish sentences (one source, translated); pairs with an empty
    side, untranslated pairs (the same text on both sides: names, emoticons) and repeats of an
    earlier pair are dropped. All test; group = the sentence's index in the task files."""
    english, spanish = _task_examples(entry / "en.json"), _task_examples(entry / "es.json")
    if len(english) != len(spanish):
        raise AssetError(f"multiemo: {len(english)} English and {len(spanish)} Spanish sentences")
    seen, rows = set(), []
    for i, (en, es) in enumerate(zip(english, spanish)):
        source, target = en["input"].strip(), es["input"].strip()
        if not source or not target or source == target or (source, target) in seen:
            continue
        seen.add((source, target))
        sentiment = max(en["target_scores"], key=en["target_scores"].get)
        rows.append({"input": source, "target": target, "split": "test", "group": str(i), "sentiment": sentiment})
    _write_rows(entry / "multiemo_en_es.jsonl", rows)
