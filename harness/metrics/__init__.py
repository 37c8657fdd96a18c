"""Metric modules shipped with the project, loaded with `evaluate.load(<local path>)` so they
work offline (evaluate's own scripts live on the hub). Any other name falls through to
`evaluate.load(name)` for users with internet."""
from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).parent
# "bleu" means sacrebleu's standard corpus BLEU here (the hub's "bleu" module is another implementation).
ALIASES = {"bleu": "sacrebleu"}
_loaders: list[threading.Thread] = []


def load_in_background(names) -> None:
    """Start loading these modules in a thread while the run loads and trains its model: the
    first `evaluate` import costs about a second (it imports scipy.stats) that would otherwise
    come between training and the scores. A failure there is left for `load` to raise."""
    def load_all():
        for name in names:
            try:
                _load(name)
            except Exception:  # noqa: BLE001 - load() in the caller's thread raises it properly
                pass

    thread = threading.Thread(target=load_all, name="harness-metric-loader", daemon=True)
    thread.start()
    _loaders.append(thread)


def load(name: str):
    while _loaders:  # a module half-loaded in the background is finished there, not loaded twice
        _loaders.pop().join()
    return _load(name)


@lru_cache(maxsize=None)
def _load(name: str):
    import evaluate

    name = ALIASES.get(name, name)
    local = HERE / name / f"{name}.py"
    return evaluate.load(str(local) if local.exists() else name)


def compute(name: str, predictions, references, **kwargs) -> dict:
    return load(name).compute(predictions=predictions, references=references, **kwargs)
