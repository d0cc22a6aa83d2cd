"""The timer the standalone benchmark scripts share (varlen_speed.py, window_speed.py,
kvcache_speed.py): 3 warm-up calls, then `iters` calls between two CUDA events; the columns
of one table timed interleaved by fa_cute.bench's own round logic
(`fa_cute._timing.interleaved_medians`: 3 rounds, a new seeded order after the first, the
median per column)."""
from typing import Callable, Dict

import torch

from fa_cute._timing import interleaved_medians


def bench(fn, iters: int = 10, unit: float = 1.0) -> float:
    """Milliseconds per call of fn (times unit: 1e3 for microseconds)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / iters * unit


def medians(fns: Dict[str, Callable[[], object]], iters: int = 10, unit: float = 1.0,
            rounds: int = 3) -> Dict[str, float]:
    """Each column's median time per call (ms times unit) over `rounds` interleaved rounds."""
    timings = {name: (lambda fn=fn: (bench(fn, iters, unit), "")) for name, fn in fns.items()}
    return interleaved_medians(timings, rounds)[0]
