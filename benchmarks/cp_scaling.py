"""Context-parallel scaling (issue 19): fa_cute.context_parallel.ring_attention forward and
backward (causal, zigzag shards; bf16, d=128, 16 query heads on 4 K/V heads, batch 1) for N
tokens per GPU on 1, 2, 4 ... GPUs of this machine, reporting per GPU the TFLOP/s (the
whole sequence's causal FLOPs, 3.5x the forward's for forward + backward, divided by the
GPUs) and tokens/s, and the weak-scaling efficiency against one GPU at the same N per GPU
(one GPU: plain fa_cute.forward / backward on the whole sequence). CUDA events, 3 warm-up
and 5 timed steps, the median; NCCL point-to-point between the GPUs.

    python benchmarks/cp_scaling.py [N_PER_GPU,...] [--gpus 1,2,4]
"""
import os
import statistics
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fa_cute import context_parallel as cp
import fa_cute

HEADS, HEADS_K, D = 16, 4, 128


def _step_time(fn, steps=5, warmup=3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def _worker(rank, world, n_per_gpu, init, results):
    torch.cuda.set_device(rank)
    if world > 1:
        dist.init_process_group("nccl", init_method=init, rank=rank, world_size=world)
    gen = torch.Generator(device=f"cuda:{rank}").manual_seed(0)
    shape = lambda h: (1, n_per_gpu, h, D)  # noqa: E731
    q, k, v, dout = (torch.randn(shape(h), device=f"cuda:{rank}", dtype=torch.bfloat16,
                                 generator=gen) for h in (HEADS, HEADS_K, HEADS_K, HEADS))
    leaves = [t.requires_grad_() for t in (q, k, v)]

    def step():
        for t in leaves:
            t.grad = None
        out = (cp.ring_attention(*leaves, causal=True) if world > 1
               else fa_cute.forward(*leaves, causal=True))
        out.backward(dout)

    ms = _step_time(step)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    results[rank] = ms


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    sizes = [int(x) for x in args[0].split(",")] if args else [32768, 65536]
    gpus_arg = sys.argv[sys.argv.index("--gpus") + 1] if "--gpus" in sys.argv else "1,2,4"
    counts = [g for g in (int(x) for x in gpus_arg.split(",")) if g <= torch.cuda.device_count()]
    for n_per_gpu in sizes:
        base = None
        for world in counts:
            results = mp.Manager().dict()
            with tempfile.TemporaryDirectory() as tmp:
                init = f"file://{os.path.join(tmp, 'rendezvous')}"
                mp.spawn(_worker, args=(world, n_per_gpu, init, results), nprocs=world)
            ms = max(results.values())
            n = n_per_gpu * world
            flops = 3.5 * 4 * HEADS * n * n * D / 2  # causal forward + backward
            tflops = flops / (ms * 1e-3) / 1e12 / world
            base = base or tflops
            print(f"N={n:8d} ({n_per_gpu} per GPU) GPUs={world}: {ms:8.2f} ms a step, "
                  f"{tflops:6.1f} TFLOP/s per GPU, {n / (ms * 1e-3) / world:10.0f} tokens/s per GPU, "
                  f"efficiency {tflops / base:.2f}", flush=True)


if __name__ == "__main__":
    main()
