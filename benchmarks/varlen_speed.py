"""varlen_forward's prefill speed (issue 17): 64k tokens packed from lengths drawn uniformly
in [128, 8192] (16 heads, d=128, bf16), against cuDNN on the same sequences padded to the
longest (SDPA's CUDNN_ATTENTION backend, dense batches) and against fa_cute's dense forward
at the mean length. A second line splits the gap: varlen_forward over nd sequences all of
the mean length (the dense batch's data, packed) against that dense forward, the cost of the
varlen kernel itself apart from the spread of lengths. CUDA events, 10 calls each, median of 3 rounds in shuffled order.
FLOPs: 4 * H * len^2 * d per sequence, halved when causal (the backward: 2.5 times that).
--bwd times the backward instead: varlen_backward, cuDNN's backward of the padded batch
(autograd over one recorded forward) and fa_cute.backward at the mean length.
usage: python benchmarks/varlen_speed.py [--seed S] [--bwd]"""
import itertools
import random
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import fa_cute
from cuda_timing import medians


def cudnn(q, k, v, causal):
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def _backward_fns(q, k, v, cu, longest, qp, kp, vp, qd, kd, vd, qe, ke, ve, cu_e, mean, causal):
    """The --bwd columns: each a backward of one forward recorded once."""
    out, lse = fa_cute.varlen_forward(q, k, v, cu, cu, longest, longest, causal=causal,
                                      return_lse=True)
    dout = torch.randn_like(q)
    out_e, lse_e = fa_cute.varlen_forward(qe, ke, ve, cu_e, cu_e, mean, mean, causal=causal,
                                          return_lse=True)
    out_d, lse_d = fa_cute.forward(qd, kd, vd, causal=causal, return_lse=True)
    dout_d = torch.randn_like(qd)
    leaves = [t.detach().requires_grad_() for t in (qp, kp, vp)]
    out_p = cudnn(*leaves, causal)
    dout_p = torch.randn_like(out_p)
    return {
        "varlen": lambda: fa_cute.varlen_backward(dout, q, k, v, out, lse, cu, cu, longest,
                                                  longest, causal=causal),
        "cudnn_padded": lambda: torch.autograd.grad(out_p, leaves, dout_p, retain_graph=True),
        "dense_mean": lambda: fa_cute.backward(dout_d, qd, kd, vd, out_d, lse_d, causal=causal),
        "varlen_equal": lambda: fa_cute.varlen_backward(dout_d.view(qe.shape), qe, ke, ve, out_e,
                                                        lse_e, cu_e, cu_e, mean, mean,
                                                        causal=causal),
    }


def prefill_lengths(rng: random.Random, total: int) -> list:
    """Sequence lengths drawn uniformly from [128, 8192] until they hold `total` tokens, the
    last one cut to fit."""
    lens = []
    while sum(lens) < total:
        lens.append(rng.randint(128, 8192))
    lens[-1] -= sum(lens) - total
    return [n for n in lens if n > 0]


def main():
    seed = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 0
    bwd = "--bwd" in sys.argv
    rng = random.Random(seed)
    heads, d, total = 16, 128, 65536
    dev, dt = "cuda", torch.bfloat16
    for causal in (True, False):
        lens = prefill_lengths(rng, total)
        longest, mean = max(lens), total // len(lens)
        cu = torch.tensor([0] + list(itertools.accumulate(lens)), dtype=torch.int32, device=dev)
        q, k, v = (torch.randn(total, heads, d, device=dev, dtype=dt) for _ in range(3))
        qp, kp, vp = (torch.randn(len(lens), heads, longest, d, device=dev, dtype=dt) for _ in range(3))
        nd = max(1, total // mean)
        qd, kd, vd = (torch.randn(nd, mean, heads, d, device=dev, dtype=dt) for _ in range(3))
        qe, ke, ve = (x.reshape(nd * mean, heads, d) for x in (qd, kd, vd))
        cu_e = torch.arange(0, nd * mean + 1, mean, dtype=torch.int32, device=dev)
        if bwd:
            fns = _backward_fns(q, k, v, cu, longest, qp, kp, vp, qd, kd, vd, qe, ke, ve, cu_e, mean,
                                causal)
        else:
            fns = {"varlen": lambda: fa_cute.varlen_forward(q, k, v, cu, cu, longest, longest,
                                                            causal=causal),
                   "cudnn_padded": lambda: cudnn(qp, kp, vp, causal),
                   "dense_mean": lambda: fa_cute.forward(qd, kd, vd, causal=causal),
                   "varlen_equal": lambda: fa_cute.varlen_forward(qe, ke, ve, cu_e, cu_e, mean,
                                                                  mean, causal=causal)}
        med = medians(fns)
        div = (2 if causal else 1) / (2.5 if bwd else 1)
        flops = sum(4 * heads * n * n * d / div for n in lens)
        dense_tf = 4 * nd * heads * mean * mean * d / div / med["dense_mean"] / 1e9
        varlen_tf = flops / med["varlen"] / 1e9
        print(f"{'bwd ' if bwd else ''}{'causal' if causal else 'full  '} {len(lens)} sequences, longest {longest}, mean {mean}: "
              f"varlen {med['varlen']:.3f} ms ({varlen_tf:.0f} TFLOP/s); cuDNN padded {med['cudnn_padded']:.3f} ms "
              f"({med['cudnn_padded'] / med['varlen']:.2f}x varlen's time); fa_cute dense at the mean length "
              f"{dense_tf:.0f} TFLOP/s (varlen / dense {varlen_tf / dense_tf:.2f})", flush=True)
        print(f"       varlen over {nd} sequences of {mean}: "
              f"{med['dense_mean'] / med['varlen_equal']:.2f}x the dense {'backward' if bwd else 'forward'}'s "
              "speed", flush=True)


if __name__ == "__main__":
    main()
