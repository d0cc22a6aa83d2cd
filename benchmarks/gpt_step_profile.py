"""The small GPT of benchmarks/train_gpt.py (its defaults) timed as 10 training steps back to
back (AdamW, bf16 autocast, no gradient clipping, no per-step events) with fa_cute.sdpa, SDPA's
FLASH and cuDNN backends, then 5 steps of each under torch.profiler: the kernels' CUDA time by
name and, for fa_cute, where the host time goes (needs a CUDA GPU).

    python3 benchmarks/gpt_step_profile.py > gpt_prof.txt

docs/perf-notes.md (Backward) compares its step times with train_gpt.py's.
"""
import contextlib
import os
import sys
import time

import torch
from torch.nn.attention import sdpa_kernel
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_gpt as T  # noqa: E402

args = T.parse_args(["--steps", "30"])
data = T.markov_batches(30, args.batch, args.seq, args.vocab, 0)
device = torch.device("cuda")
for attn in ("fa_cute", "sdpa-flash", "sdpa-cudnn"):
    torch.manual_seed(0)
    model = T.GPT(args.vocab, args.seq, args.width, args.heads, args.layers, T.attention_of(attn)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    backend = T.SDPA_BACKEND.get(attn)

    def step(i: int) -> None:
        batch = data[i].to(device, non_blocking=True)
        with sdpa_kernel(backend) if backend else contextlib.nullcontext(), \
                torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(10):
        step(i)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    start.record()
    for i in range(10, 20):
        step(i)
    end.record()
    torch.cuda.synchronize()
    print(f"== {attn}: {start.elapsed_time(end) / 10:.2f} ms/step (CUDA events), host "
          f"{1e3 * (time.perf_counter() - t0) / 10:.2f} ms/step", flush=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(20, 25):
            step(i)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=70))
    if attn == "fa_cute":
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=70))
