"""A continuous-batching decode loop over a paged KV cache (issue 17), attention only: 32
sequence slots, 32 query heads on 8 K/V heads, d=128, bf16. Requests arrive at random
(Bernoulli per step), each with a prompt of 128-2048 tokens (its K/V written into freshly
allocated pages, outside the timed step) and 32-512 tokens to generate; a finished request
frees its pages and its slot. Every step decodes one token for every active slot: its new
K/V appended into the cache and its query attending to the cache, captured once as a CUDA
graph and replayed (the lengths and page table are updated in place). Reports decoded
tokens per second and the p50/p99 step latency (CUDA events around each replay).

Backends: fa_cute (forward_with_kvcache, page_table) and the same loop on PyTorch SDPA over
a dense (slots, heads_k, max_len, d) cache with a key-padding mask (its default backend
choice), the new token written by index_copy_. Both use the same arrival sequence (seed).

usage: python benchmarks/serve_sim.py [--steps N] [--page-size P] [--seed S]"""
import argparse
import random

import torch
import torch.nn.functional as F

import fa_cute

SLOTS, HEADS, HEADS_K, D = 32, 32, 8, 128
MAX_LEN = 2048 + 512


class Arrivals:
    """The request stream: per step, whether a request arrives and its lengths."""

    def __init__(self, seed: int, rate: float = 0.25):
        self.rng = random.Random(seed)
        self.rate = rate

    def next(self):
        if self.rng.random() < self.rate:
            return self.rng.randint(128, 2048), self.rng.randint(32, 512)
        return None


def run(backend: str, steps: int, page_size: int, seed: int):
    dev, dt = "cuda", torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(seed)
    pages_per_seq = (MAX_LEN + page_size - 1) // page_size
    lens = torch.zeros(SLOTS, dtype=torch.int32, device=dev)
    q = torch.randn(SLOTS, 1, HEADS, D, device=dev, dtype=dt, generator=gen)
    k_new, v_new = (torch.randn(SLOTS, 1, HEADS_K, D, device=dev, dtype=dt, generator=gen) for _ in range(2))
    if backend == "fa_cute":
        # The last page is scratch: idle slots point at it, so their (ignored) appends never
        # land in a page another sequence owns.
        num_pages = SLOTS * pages_per_seq + 1
        scratch = num_pages - 1
        k_pool, v_pool = (torch.zeros(num_pages, page_size, HEADS_K, D, device=dev, dtype=dt) for _ in range(2))
        table = torch.full((SLOTS, pages_per_seq), scratch, dtype=torch.int32, device=dev)
        free_pages = list(range(scratch))
        owned = {}  # slot -> its pages

        def step():
            return fa_cute.forward_with_kvcache(q, k_pool, v_pool, k_new, v_new, cache_seqlens=lens,
                                                page_table=table)
    else:
        k_dense, v_dense = (torch.zeros(SLOTS, HEADS_K, MAX_LEN, D, device=dev, dtype=dt) for _ in range(2))
        positions = torch.arange(MAX_LEN, device=dev)
        slot_index = torch.arange(SLOTS, device=dev)
        qs = q.transpose(1, 2)

        def step():
            k_dense[slot_index, :, lens.long()] = k_new[:, 0]
            v_dense[slot_index, :, lens.long()] = v_new[:, 0]
            mask = positions[None, None, None, :] <= lens.long()[:, None, None, None]
            return F.scaled_dot_product_attention(qs, k_dense, v_dense, attn_mask=mask, enable_gqa=True)

    arrivals = Arrivals(seed)
    active = {}  # slot -> tokens left to generate
    step()  # warm-up, then capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    host_lens = [0] * SLOTS
    latencies, tokens = [], 0
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(steps):
        request = arrivals.next()
        free_slots = [s for s in range(SLOTS) if s not in active]
        if request is not None and free_slots:
            slot, (prompt, generate) = free_slots[0], request
            active[slot] = generate
            host_lens[slot] = prompt
            if backend == "fa_cute":
                need = (prompt + generate + page_size - 1) // page_size
                pages = [free_pages.pop() for _ in range(need)]
                owned[slot] = pages
                table[slot, :need] = torch.tensor(pages, dtype=torch.int32, device=dev)
                idx = torch.tensor(pages, device=dev)
                k_pool[idx] = torch.randn(need, page_size, HEADS_K, D, device=dev, dtype=dt, generator=gen)
                v_pool[idx] = torch.randn(need, page_size, HEADS_K, D, device=dev, dtype=dt, generator=gen)
            else:
                k_dense[slot, :, :prompt] = torch.randn(HEADS_K, prompt, D, device=dev, dtype=dt, generator=gen)
                v_dense[slot, :, :prompt] = torch.randn(HEADS_K, prompt, D, device=dev, dtype=dt, generator=gen)
        lens.copy_(torch.tensor(host_lens, dtype=torch.int32))
        start.record()
        graph.replay()
        stop.record()
        stop.synchronize()
        latencies.append(start.elapsed_time(stop))
        tokens += len(active)
        for slot in list(active):
            host_lens[slot] += 1
            active[slot] -= 1
            if active[slot] == 0:
                del active[slot]
                if backend == "fa_cute":
                    free_pages.extend(owned.pop(slot))
                    table[slot] = scratch
                host_lens[slot] = 0
    latencies.sort()
    total_s = sum(latencies) / 1e3
    return tokens / total_s, latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for backend in ("fa_cute", "sdpa"):
        tps, p50, p99 = run(backend, args.steps, args.page_size, args.seed)
        print(f"{backend:8s} page_size={args.page_size}: {tps:,.0f} tokens/s (attention only), step p50 "
              f"{p50 * 1e3:.0f} us, p99 {p99 * 1e3:.0f} us", flush=True)


if __name__ == "__main__":
    main()
