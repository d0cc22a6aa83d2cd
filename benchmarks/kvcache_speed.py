"""Decode over a KV cache (issue 17's speed cells): one new token per sequence, 32 query heads
on 8 K/V heads, d=128, bf16, cache lengths N_k = 1k-32k. Columns, timed in one process,
interleaved shuffled rounds, median of 3 (CUDA events, 20 calls each):
  - paged: fa_cute.forward_with_kvcache on a paged cache (page size 16 and 256, pages
    shuffled), the new token appended in the same call;
  - dense: fa_cute.forward_with_kvcache on a dense cache;
  - fa_cute: fa_cute.forward(q, k, v) on the dense keys (no append);
  - cudnn: PyTorch SDPA's CUDNN_ATTENTION backend on the dense keys (its layout);
  - copy: a device-to-device copy of the K and V bytes a decode step reads (the bandwidth
    bound the issue compares with: bytes read and written / time).
  - paged16seq: the page-16 cache with each sequence's pages in order (page b * P + j for
    its j-th: the dense cache's addresses, split into pages), which tells the cost of pages
    scattered over the pool (DRAM and TLB locality) from the cost of reading in pages;
  - paged16@CONFIG (with --config CONFIG): the page-16 cache on a named config (config='auto'
    takes the heuristic's, the Hopper kernel's 16-row page boxes on an H100).
Prints times in microseconds and each column's achieved bandwidth (K+V bytes read / time).
usage: python benchmarks/kvcache_speed.py [BATCH] [--config CONFIG]"""
import random
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import fa_cute
from cuda_timing import medians


def main():
    args = sys.argv[1:]
    named = None
    if "--config" in args:
        named = args[args.index("--config") + 1]
        del args[args.index("--config"):args.index("--config") + 2]
    batch = int(args[0]) if args else 8
    heads, heads_k, d, dt, dev = 32, 8, 128, torch.bfloat16, "cuda"
    rng = random.Random(0)
    for n in (1024, 4096, 16384, 32768):
        q = torch.randn(batch, 1, heads, d, device=dev, dtype=dt)
        k_new, v_new = (torch.randn(batch, 1, heads_k, d, device=dev, dtype=dt) for _ in range(2))
        k, v = (torch.randn(batch, n + 1, heads_k, d, device=dev, dtype=dt) for _ in range(2))
        lens = torch.full((batch,), n, dtype=torch.int32, device=dev)
        fns = {"dense": lambda: fa_cute.forward_with_kvcache(q, k, v, k_new, v_new, cache_seqlens=lens),
               "fa_cute": lambda: fa_cute.forward(q, k, v),
               "copy": lambda: (k.clone(), v.clone())}
        caches = {}
        for page in (16, 256):
            pages_per_seq = (n + 1 + page - 1) // page
            kp, vp = (torch.randn(batch * pages_per_seq, page, heads_k, d, device=dev, dtype=dt) for _ in range(2))
            order = list(range(batch * pages_per_seq))
            rng.shuffle(order)
            table = torch.tensor(order, dtype=torch.int32, device=dev).view(batch, pages_per_seq)
            caches[page] = (kp, vp, table)
            fns[f"paged{page}"] = (lambda kp=kp, vp=vp, table=table: fa_cute.forward_with_kvcache(
                q, kp, vp, k_new, v_new, cache_seqlens=lens, page_table=table))
            if page == 16:
                in_order = torch.arange(batch * pages_per_seq, dtype=torch.int32, device=dev).view(batch, -1)
                fns["paged16seq"] = (lambda kp=kp, vp=vp, table=in_order: fa_cute.forward_with_kvcache(
                    q, kp, vp, k_new, v_new, cache_seqlens=lens, page_table=table))
            if named and page == 16:
                fns[f"paged16@{named}"] = (lambda kp=kp, vp=vp, table=table: fa_cute.forward_with_kvcache(
                    q, kp, vp, k_new, v_new, cache_seqlens=lens, page_table=table, config=named))
        qs, ks, vs = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(qs, ks, vs, enable_gqa=True)
        fns["cudnn"] = cudnn
        med = medians(fns, iters=20, unit=1e3)
        kv_bytes = 2 * batch * (n + 1) * heads_k * d * 2
        # The copy reads and writes the bytes; the attention columns read them.
        bw = {name: (2 if name == "copy" else 1) * kv_bytes / t / 1e3 for name, t in med.items()}
        print(f"N_k={n:6d} " + "  ".join(f"{name}={t:.1f}us({bw[name]:.0f}GB/s)" for name, t in med.items())
              + f"  paged16/copy_bw={bw['paged16'] / bw['copy']:.2f}"
              + f"  paged16/dense={med['paged16'] / med['dense']:.2f} paged256/dense={med['paged256'] / med['dense']:.2f}"
              + f"  dense/cudnn={med['cudnn'] / med['dense']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
