"""Tasks behind one registry; adding a task = one module + one line below.

Each task module provides NAME, Options (pydantic), PRIMARY_METRIC, METRICS, METRIC_MODULES (the
evaluate modules it scores with), head_for(family),
load_splits(options, base_dir), formulation(head, tokenizer, options, training), score(...),
sample_rows(...), and optionally check_options(options, trains, base_dir) -> [(field, problem)]
(run at validation time). Heavy imports happen inside functions.
"""
from harness.tasks import classification, instruction, summarization, translation

REGISTRY = {t.NAME: t for t in (classification, summarization, translation, instruction)}
