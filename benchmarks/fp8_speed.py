"""FP8 (e4m3) forward TFLOP/s next to fa_cute's own bf16 forward and PyTorch's cuDNN bf16 SDPA,
same process, interleaved shuffled rounds (cuda_timing.medians), median of 5 (CUDA events, 20 calls each).
Standard shapes: B = 16384/N, H = 2048/d. Columns: bf16 (fa_cute.forward, bf16 inputs), cudnn,
fp8 (fa_cute.forward on e4m3 inputs with descale factors: the V layout pass plus the kernel),
k:<tile> (the kernel alone, each e4m3 config of the head dim, on a Vt laid out once: `_C.fp8_forward`), vpass (the layout pass alone,
as GB/s of V read plus Vt written); ratios to bf16 in brackets.
usage: fp8_speed.py D1,D2 N1,N2 [--causal-only | --full-only]"""
import json, os, sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import fa_cute
from fa_cute import _C

from cuda_timing import medians


def row_strides(t):
    """(batch, seqlen, nheads) element strides of a (batch, seqlen, nheads, d) tensor, as _C takes them."""
    return t.stride(0), t.stride(1), t.stride(2)


def main():
    dims = [int(x) for x in sys.argv[1].split(",")]
    seqlens = [int(x) for x in sys.argv[2].split(",")]
    masks = [False] if "--full-only" in sys.argv else [True] if "--causal-only" in sys.argv else [False, True]
    rows = []
    dev = torch.cuda.current_device()
    stream = torch.cuda.current_stream().cuda_stream
    for d in dims:
        fp8_cfgs = [c["name"] for c in fa_cute.configs() if c["head_dim"] == d and "e4m3" in c["dtypes"]]
        for causal in masks:
            for n in seqlens:
                b, h = 16384 // n, 2048 // d
                q, k, v = (torch.randn(b, n, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                q8, k8, v8 = (t.to(torch.float8_e4m3fn) for t in (q, k, v))
                desc = [torch.full((b, h), 0.9, device="cuda") for _ in range(3)]
                qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))
                out = torch.empty_like(q)
                vt = torch.empty((b, h, d, _C.fp8_vt_keys(n)), device="cuda", dtype=torch.float8_e4m3fn)
                vpass = lambda: _C.fp8_v_layout(v8.data_ptr(), vt.data_ptr(), b, n, h, d, row_strides(v8), dev, stream)
                vpass()
                scale = d ** -0.5
                vt_strides = (vt.stride(0), vt.stride(2), vt.stride(1))

                def fp8_kernel(cfg):
                    _C.fp8_forward(cfg, q8.data_ptr(), k8.data_ptr(), vt.data_ptr(), out.data_ptr(), 0,
                                   *(t.data_ptr() for t in desc), b, n, n, h, h, d, row_strides(q8),
                                   row_strides(k8), vt_strides, row_strides(out), scale, causal, 0, dev, stream)

                fns = {
                    "bf16": lambda: fa_cute.forward(q, k, v, causal=causal),
                    "fp8": lambda: fa_cute.forward(q8, k8, v8, causal=causal, q_descale=desc[0], k_descale=desc[1],
                                                   v_descale=desc[2]),
                    "vpass": vpass,
                }
                for cfg in fp8_cfgs:
                    fns["k:" + cfg.replace("sm90p_", "").replace(f"_d{d}", "")] = lambda cfg=cfg: fp8_kernel(cfg)
                try:
                    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                        F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal)
                    fns["cudnn"] = lambda: _cudnn(qs, ks, vs, causal)
                except RuntimeError:
                    pass
                med = medians(fns, iters=20, rounds=5)
                flops = 4 * b * h * n * n * d / (2 if causal else 1)
                tf = {kk: flops / (ms * 1e-3) / 1e12 for kk, ms in med.items() if kk != "vpass"}
                vbytes = 2 * b * h * n * d
                gbs = vbytes / (med["vpass"] * 1e-3) / 1e9
                rows.append(dict(d=d, causal=causal, n=n, tflops={kk: round(x, 1) for kk, x in tf.items()},
                                 vpass_us=round(med["vpass"] * 1e3, 1), vpass_gbs=round(gbs)))
                print(f"d={d} {'causal' if causal else 'full  '} N={n:5d} " +
                      "  ".join(f"{kk}={x:.0f}({x / tf['bf16']:.2f})" for kk, x in tf.items()) +
                      f"  vpass={med['vpass'] * 1e3:.1f}us ({gbs:.0f} GB/s)", flush=True)
    with open(os.environ.get("OUT", "/tmp") + "/fp8speed.json", "w") as f:
        json.dump(dict(gpu=torch.cuda.get_device_name(), rows=rows), f, indent=1)


def _cudnn(q, k, v, causal):
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


if __name__ == "__main__":
    main()
