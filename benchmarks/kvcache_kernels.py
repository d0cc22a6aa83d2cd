"""The kernels of one decode call (benchmarks/kvcache_speed.py's shapes: batch 8, one new
token, 32 query heads on 8 K/V heads, d=128, bf16) and its host time: for
forward_with_kvcache on a dense cache (with and without the append) and on pages of 16, for
`forward` on the dense keys and for cuDNN, the host microseconds a call takes to enqueue (200
calls, no sync), then (torch.profiler) each kernel's median CUDA microseconds and the span
from a call's first kernel start to its last kernel end (median of 20 synchronised calls).
What it tells: whether a call is host- or GPU-bound, and what each kernel of it costs.

    python3 benchmarks/kvcache_kernels.py [N_K,...]   (default 4096,16384)
"""
import random
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

import fa_cute


def calls_of(n: int, rng: random.Random) -> dict:
    """The timed calls at N_k = n keys."""
    batch, heads, heads_k, d, dt, dev = 8, 32, 8, 128, torch.bfloat16, "cuda"
    q = torch.randn(batch, 1, heads, d, device=dev, dtype=dt)
    k_new, v_new = (torch.randn(batch, 1, heads_k, d, device=dev, dtype=dt) for _ in range(2))
    k, v = (torch.randn(batch, n + 1, heads_k, d, device=dev, dtype=dt) for _ in range(2))
    lens = torch.full((batch,), n, dtype=torch.int32, device=dev)
    page = 16
    pages = (n + page) // page
    kp, vp = (torch.randn(batch * pages, page, heads_k, d, device=dev, dtype=dt) for _ in range(2))
    order = list(range(batch * pages))
    rng.shuffle(order)
    table = torch.tensor(order, dtype=torch.int32, device=dev).view(batch, pages)
    qs, ks, vs = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(qs, ks, vs, enable_gqa=True)
    return {"dense": lambda: fa_cute.forward_with_kvcache(q, k, v, k_new, v_new, cache_seqlens=lens),
            "dense_noappend": lambda: fa_cute.forward_with_kvcache(q, k, v, cache_seqlens=lens),
            "paged16": lambda: fa_cute.forward_with_kvcache(q, kp, vp, k_new, v_new, cache_seqlens=lens,
                                                            page_table=table),
            "forward": lambda: fa_cute.forward(q, k, v), "cudnn": cudnn}


def profile_call(n: int, name: str, fn, calls: int = 20) -> None:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(200):
        fn()
    host = (time.perf_counter() - t0) / 200 * 1e6
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
            torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
    per_call = len(kernels) // calls
    spans = sorted(kernels[(i + 1) * per_call - 1].time_range.end - kernels[i * per_call].time_range.start
                   for i in range(calls))
    print(f"N_k={n} {name}: host {host:.1f} us a call (enqueue); {per_call} kernels a call; "
          f"first start to last end {spans[calls // 2]:.1f} us")
    times = {}
    for e in kernels:
        times.setdefault(e.name[:90], []).append(e.device_time)
    for kernel, ts in times.items():
        ts.sort()
        print(f"    {ts[len(ts) // 2]:8.1f} us x{len(ts) // calls}  {kernel}")


def main() -> None:
    rng = random.Random(0)
    for n in (int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "4096,16384").split(",")):
        for name, fn in calls_of(n, rng).items():
            profile_call(n, name, fn)


if __name__ == "__main__":
    main()
