"""How evenly the backward's grid of CTAs (one per key block, K/V head and batch entry; one
CTA an SM) fills the GPU under a causal mask, by simulation on the host: CTAs dispatched in
blockIdx order to the first free of 132 SMs, a CTA's time its query-block steps plus 2 (its
loads, its dK/dV store). Prints the makespan over the mean work per SM for the current
numbering (key block fastest), key-block-major sections of s (batch, K/V head) pairs (the
branch bwd-causal-sections' BwdTileCoord), and longest-first (LPT), at the standard shapes
(B = 16384/N, H = 2048/d) of d = 64, 128, 256 with their default tiles.
usage: python3 benchmarks/bwd_schedule_sim.py"""
import heapq

SMS = 132
OVERHEAD = 2


def makespan(works) -> float:
    free = [0.0] * SMS
    for w in works:
        t = heapq.heappop(free)
        heapq.heappush(free, t + w + OVERHEAD)
    return max(free)


def ratios(n: int, d: int, block_n: int, block_m: int) -> dict:
    pairs, num_n = (2048 // d) * (16384 // n), (n + block_n - 1) // block_n

    def work(key_block: int) -> int:  # causal, square: query steps from the diagonal on
        return (n - key_block * block_n + block_m - 1) // block_m

    current = [work(kb) for _ in range(pairs) for kb in range(num_n)]
    mean = sum(w + OVERHEAD for w in current) / SMS
    out = {"current": makespan(current) / mean}
    for section in (2, 4, 8, 16):
        order = []
        for first in range(0, pairs, section):
            count = min(section, pairs - first)
            for kb in range(num_n):
                order += [work(kb)] * count
        out[f"sections of {section}"] = makespan(order) / mean
    out["LPT"] = makespan(sorted(current, reverse=True)) / mean
    return out


def main() -> None:
    for d, block_n, block_m in ((64, 128, 128), (128, 128, 64), (256, 64, 64)):
        for n in (1024, 2048, 4096, 8192, 16384):
            cells = ", ".join(f"{k} {v:.3f}" for k, v in ratios(n, d, block_n, block_m).items())
            print(f"d={d} N={n:5d}: {cells}")


if __name__ == "__main__":
    main()
