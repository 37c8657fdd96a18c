"""Metric modules shipped with the project, loaded with `evaluate.load(<local path>)` so they
work offline (evaluate's own scripts live on the hub). Any other name falls through to
`evaluate.load(name)` for users with internet."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).parent
# "bleu" means sacrebleu's standard corpus BLEU here (the hub's "bleu" module is another implementation).
ALIASES = {"bleu": "sacrebleu"}


@lru_cache(maxsize=None)
def load(name: str):
    import evaluate

    name = ALIASES.get(name, name)
    local = HERE / name / f"{name}.py"
    return evaluate.load(str(local) if local.exists() else name)


def compute(name: str, predictions, references, **kwargs) -> dict:
    return load(name).compute(predictions=predictions, references=references, **kwargs)
