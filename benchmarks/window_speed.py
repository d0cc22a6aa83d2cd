"""Sliding-window forward time against full causal attention (issue 17: window 4096 at
N = 16384 within 0.30x of full causal's time), bf16, d=128, B = 16384/N, H = 16: for each
N, fa_cute.forward causal with window_size=(W, 0) for W in 1024, 4096 and without a window,
interleaved shuffled rounds, median of 3 (CUDA events, 10 calls each). The window skips the
key blocks outside every row's window, so its time should scale with W, not N. Each row
prints the window's share of the causal keys (the FLOP ratio its time can reach: about
(W N - W^2 / 2) / (N^2 / 2)) and the time of non-causal full attention for reference.
usage: python benchmarks/window_speed.py [N1,N2,...]"""
import sys

import torch

import fa_cute
from cuda_timing import medians


def main():
    seqlens = [int(x) for x in sys.argv[1].split(",")] if len(sys.argv) > 1 else [4096, 16384]
    for n in seqlens:
        b, h, d = max(1, 16384 // n), 16, 128
        q, k, v = (torch.randn(b, n, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        fns = {"causal": lambda: fa_cute.forward(q, k, v, causal=True),
               "full": lambda: fa_cute.forward(q, k, v)}
        for w in (1024, 4096):
            if w < n:
                fns[f"window{w}"] = (lambda w=w: fa_cute.forward(q, k, v, causal=True, window_size=(w, 0)))
        med = medians(fns)
        share = {f"window{w}": (w * n - w * w / 2) / (n * n / 2) for w in (1024, 4096) if w < n}
        print(f"N={n:6d} " + "  ".join(
            f"{name}={t:.3f}ms ({t / med['causal']:.2f}x causal"
            + (f", keys {share[name]:.2f}x, {t / med['full']:.2f}x full)" if name in share else ")")
            for name, t in med.items()), flush=True)


if __name__ == "__main__":
    main()
