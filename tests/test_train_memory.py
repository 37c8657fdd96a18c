"""Peak-memory blocks nest: an inner block must not reset the counters the outer one reads
(the runner's block spans the trainer's construction, training and scoring)."""
from __future__ import annotations

from harness.train import peak_memory


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


def test_a_nested_block_keeps_the_outer_peak():
    start = _rss_mb()
    with peak_memory("cpu") as outer:
        big = bytearray(400 * 2**20)
        big[::4096] = b"x" * len(big[::4096])  # touch every page: resident
        del big
        with peak_memory("cpu") as inner:
            pass
    assert outer.mb >= start + 350  # the 400 MB freed before the inner block still count for the outer one
    assert inner.mb >= start + 350  # the inner block reports the peak since the outer block began
