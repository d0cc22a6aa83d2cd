"""The backward's kernels by CUDA time (torch.profiler) at d=128, N = 1k and 4k, full and
causal (B = 16384/N, H = 16, bf16): fa_cute.sdpa's fwd+bwd next to cuDNN's and, with
--fa4-site DIR (`bash ../shared/tools/fa4-wheels.sh install`), FlashAttention-4's; per call,
the 8 kernels that take the most time (needs a CUDA GPU). What it is for: whether the
preprocess and postprocess kernels explain the short-sequence gap (docs/perf-notes.md,
Backward, open leads).

    python3 benchmarks/bwd_kernel_times.py [--fa4-site /tmp/fa4site]
"""
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

import fa_cute
from fa_cute import _fa4


def main() -> None:
    site = sys.argv[sys.argv.index("--fa4-site") + 1] if "--fa4-site" in sys.argv else None
    fa4, why = _fa4.load(site) if site else (None, "no --fa4-site")
    print(f"FA4: {'loaded' if fa4 is not None else why}")
    d = 128
    for causal in (False, True):
        for n in (1024, 4096):
            b, h = 16384 // n, 2048 // d
            q, k, v, dout = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16)
                             for _ in range(4))
            for t in (q, k, v):
                t.requires_grad_()

            def ours():
                out = fa_cute.sdpa(q, k, v, is_causal=causal)
                torch.autograd.grad(out, (q, k, v), dout)

            def cudnn():
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                torch.autograd.grad(out, (q, k, v), dout)

            fns = [("fa_cute", ours), ("cudnn", cudnn)]
            if fa4 is not None:
                fa4_attention = _fa4.bhnd_forward(fa4, causal)
                fns.append(("fa4", lambda: torch.autograd.grad(fa4_attention(q, k, v), (q, k, v), dout)))
            for name, fn in fns:
                for _ in range(3):
                    fn()
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(5):
                        fn()
                    torch.cuda.synchronize()
                print(f"==== {name} causal={causal} N={n} d={d} (per fwd+bwd call)")
                for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:8]:
                    print(f"  {e.device_time_total / 5:9.1f} us x{e.count // 5}  {e.key[:90]}")


if __name__ == "__main__":
    main()
