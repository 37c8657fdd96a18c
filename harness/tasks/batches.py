"""Scoring batches of examples of similar length: every batch is padded to its longest
example, so grouping by length spends the forward passes on tokens, not on padding.
Order-free: callers put each result back at its example's index."""
from __future__ import annotations


def by_length(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Example indices in batches of `batch_size`, longest first (a batch that does not fit in
    memory fails at once, not at the end); equal lengths keep their original order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
