"""One backward call under Nsight Compute's profiler range: fa_cute's (the default config) or
cuDNN's (SDPA's CUDNN_ATTENTION autograd backward), B = 16384/N, H = 2048/d, bf16, after a
warm-up and a CUDA-event timing of 10 calls (printed). Needs a CUDA GPU.

    ncu --clock-control none --profile-from-start off --section SpeedOfLight \\
        --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \\
        --section WarpStateStats --section SourceCounters -o bwd \\
        python3 benchmarks/bwd_ncu_case.py D N CAUSAL(0|1) fa|cudnn

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
b, h = 16384 // n, 2048 // d
q, k, v, do, (qt, kt, vt, dot, ot), lse = backward_inputs(d, n, causal)
qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
    o2 = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
fn = {"cudnn": lambda: torch.autograd.grad(o2, (qg, kg, vg), do, retain_graph=True),
      "fa": lambda: fa_cute.backward(dot, qt, kt, vt, ot, lse, causal=causal)}[which]
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
print(f"{which} d={d} N={n} causal={causal}: {ms:.3f} ms, {flops / ms / 1e9:.0f} TFLOP/s", flush=True)
torch.cuda.cudart().cudaProfilerStart()
fn()
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStop()
