"""Tasks behind one registry; adding a task = one module + one line below.

Each task module provides NAME, Options (pydantic), PRIMARY_METRIC, METRICS, head_for(family),
load_splits(options, base_dir), formulation(head, tokenizer, options, training), score(...),
sample_rows(...). Heavy imports happen inside functions.
"""
from harness.tasks import classification

REGISTRY = {t.NAME: t for t in (classification,)}
