"""A/B of the varlen forward's tile order on the persistent Hopper kernels (issue 17;
src/sm90/tile_scheduler_sm90.h): the dynamic order (varlen_forward passes a tile counter)
against the static one (the same call with no counter), interleaved in one process
(cuda_timing.medians, 3 rounds), on varlen_speed.py's batches for seeds 0 and 1 (d=128,
16 heads, bf16, 64k tokens of lengths 128-8192), next to the dense forward at the mean
length. Also checks that both orders give bitwise-equal outputs. The static column calls
through a stand-in for _C whose varlen_forward drops the counter (its last argument).
usage: python benchmarks/varlen_order_ab.py"""
import itertools
import random

import torch

import fa_cute
import fa_cute._varlen as varlen_module
from cuda_timing import medians
from varlen_speed import prefill_lengths

_REAL_C = varlen_module._C


class _WithoutCounter:
    """_C, but varlen_forward launches with tile_counter 0: the static order."""

    def __getattr__(self, name):
        return getattr(_REAL_C, name)

    def varlen_forward(self, *args):
        return _REAL_C.varlen_forward(*args[:-1], 0)


def run(order: str, *args, **kwargs):
    varlen_module._C = _WithoutCounter() if order == "static" else _REAL_C
    try:
        return fa_cute.varlen_forward(*args, **kwargs)
    finally:
        varlen_module._C = _REAL_C


def main():
    heads, d, total = 16, 128, 65536
    for seed in (0, 1):
        rng = random.Random(seed)  # varlen_speed.py's lengths for the seed
        for causal in (True, False):
            lens = prefill_lengths(rng, total)
            longest, mean = max(lens), total // len(lens)
            cu = torch.tensor([0] + list(itertools.accumulate(lens)), dtype=torch.int32, device="cuda")
            q, k, v = (torch.randn(total, heads, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            nd = max(1, total // mean)
            qd, kd, vd = (torch.randn(nd, mean, heads, d, device="cuda", dtype=torch.bfloat16)
                          for _ in range(3))
            args = (q, k, v, cu, cu, longest, longest)
            same = torch.equal(run("dynamic", *args, causal=causal), run("static", *args, causal=causal))
            med = medians({"dynamic": lambda: run("dynamic", *args, causal=causal),
                           "static": lambda: run("static", *args, causal=causal),
                           "dense_mean": lambda: fa_cute.forward(qd, kd, vd, causal=causal)})
            div = 2 if causal else 1
            flops = sum(4 * heads * n * n * d / div for n in lens)
            dense_tf = 4 * nd * heads * mean * mean * d / div / med["dense_mean"] / 1e9
            tf = {c: flops / med[c] / 1e9 for c in ("dynamic", "static")}
            print(f"seed {seed} {'causal' if causal else 'full  '} {len(lens)} seqs mean {mean}: dynamic "
                  f"{tf['dynamic']:.0f} static {tf['static']:.0f} TFLOP/s (dyn/static "
                  f"{tf['dynamic'] / tf['static']:.3f}); dense@mean {dense_tf:.0f}; varlen/dense dyn "
                  f"{tf['dynamic'] / dense_tf:.2f} static {tf['static'] / dense_tf:.2f}; bitwise equal {same}",
                  flush=True)


if __name__ == "__main__":
    main()
