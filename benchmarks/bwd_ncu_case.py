"""One backward call under Nsight Compute's profiler range: fa_cute's (the default config, or
fa:CONFIG), cuDNN's or FlashAttention-2's (SDPA's CUDNN_ATTENTION or FLASH_ATTENTION autograd
backward: cudnn, flash), B = 16384/N, H = 2048/d, bf16, after a warm-up and a CUDA-event
timing of 10 calls (printed). Needs a CUDA GPU.

    ncu --clock-control none --profile-from-start off --section SpeedOfLight \\
        --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \\
        --section WarpStateStats --section SourceCounters -o bwd \\
        python3 benchmarks/bwd_ncu_case.py D N CAUSAL(0|1) fa[:CONFIG]|cudnn|flash

(The autograd engine runs cuDNN's backward on its own thread, out of an NVTX range of this
one: the profiler range, process-wide, takes it.) docs/perf-notes.md (Backward) reads them.
"""
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import fa_cute

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bwd_speed import backward_inputs  # noqa: E402

d, n, causal, which = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
which, _, config = which.partition(":")
if which not in ("fa", "cudnn", "flash"):
    raise SystemExit(f"the fourth argument must be fa, fa:CONFIG, cudnn or flash, got {sys.argv[4]!r}")
b, h = 16384 // n, 2048 // d
q, k, v, do, (qt, kt, vt, dot, ot), lse = backward_inputs(d, n, causal, torch.bfloat16)
if which == "fa":
    def fn():
        return fa_cute.backward(dot, qt, kt, vt, ot, lse, causal=causal, config=config or "auto")
else:
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    backend = SDPBackend.CUDNN_ATTENTION if which == "cudnn" else SDPBackend.FLASH_ATTENTION
    with sdpa_kernel(backend):
        o2 = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)

    def fn():
        return torch.autograd.grad(o2, (qg, kg, vg), do, retain_graph=True)
for _ in range(3):
    fn()
torch.cuda.synchronize()
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(10):
    fn()
end.record()
torch.cuda.synchronize()
ms = start.elapsed_time(end) / 10
flops = 2.5 * 4 * b * h * n * n * d / (2 if causal else 1)
print(f"{sys.argv[4]} d={d} N={n} causal={causal}: {ms:.3f} ms, {flops / ms / 1e9:.0f} TFLOP/s", flush=True)
torch.cuda.cudart().cudaProfilerStart()
fn()
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStop()
