"""Reading task data from files or the hub, and splitting rows by group: shared by tasks."""
from __future__ import annotations

import hashlib
import random
import string
from pathlib import Path

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
                 "valid": "validation", "dev": "validation", "test": "test", "testing": "test"}


def read_table(path: str, is_hub: bool):
    """A pandas frame with every row of a csv/jsonl/json/parquet file or of a hub dataset;
    a hub dataset's split names go to a `split` column."""
    import pandas as pd

    if is_hub:
        import datasets

        loaded = datasets.load_dataset(path)
        return pd.concat([loaded[s].to_pandas().assign(split=s) for s in loaded], ignore_index=True)
    suffix = Path(path).suffix.lower()
    readers = {".csv": pd.read_csv, ".jsonl": lambda p: pd.read_json(p, lines=True),
               ".json": pd.read_json, ".parquet": pd.read_parquet}
    if suffix not in readers:
        raise ValueError(f"dataset {path}: expected a .csv, .jsonl, .json or .parquet file")
    return readers[suffix](path)


def template_fields(template: str) -> set[str]:
    """The fields a str.format template names ('' for a positional {}); ValueError on unbalanced braces."""
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def split_of(group: str, test_fraction: float, val_fraction: float, seed: int) -> str:
    """A stable hash of the group's name decides its split: deterministic, run-seed-independent."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if u < test_fraction else "validation" if u < test_fraction + val_fraction else "train"


def split_by_group(rows: list[dict], test_fraction: float, val_fraction: float, seed: int) -> dict[str, list[dict]]:
    pools = {s: [] for s in SPLITS}
    for row in rows:
        pools[split_of(str(row["group"]), test_fraction, val_fraction, seed)].append(row)
    return pools


def sample_splits(rows: list[dict], options: dict, what: str) -> dict[str, list[dict]]:
    """Rows split by group (test_fraction, val_fraction, split_seed), each split shuffled and
    cut to its size option (train_size, val_size, test_size); `what` starts the error for a
    split too small ("task sentiment: ... examples")."""
    task, _, unit = what.partition(": ")
    pools = split_by_group(rows, options["test_fraction"], options["val_fraction"], options["split_seed"])
    rng = random.Random(options["split_seed"])
    out = {}
    for split in SPLITS:
        wanted = options[f"{'val' if split == 'validation' else split}_size"]
        pool = pools[split]
        if wanted > len(pool):
            raise ValueError(f"{task}: {split} needs {wanted} {unit} but the {split} split of "
                             f"{options['dataset']} has {len(pool)}")
        rng.shuffle(pool)
        out[split] = pool[:wanted]
    return out
