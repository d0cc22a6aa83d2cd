"""The timer the standalone benchmark scripts share (varlen_speed.py, kvcache_speed.py):
3 warm-up calls, then `iters` calls between two CUDA events; the mean per call."""
import torch


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
