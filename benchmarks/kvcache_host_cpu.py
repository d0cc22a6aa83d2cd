"""Host microseconds of a forward_with_kvcache decode call without a GPU: this tree against a
commit (default HEAD), a cache hit of the validated plan (`_cache.KVCACHE_VALIDATED`) with the
launch's Python kept and `_C`'s kernel entry points as no-ops (benchmarks/api_versions.py,
`real_launch=True`: CPU tensors pose as CUDA ones). The shape is kvcache_speed.py's: batch 8,
one new token appended, 32 query heads on 8 K/V heads, d=128, bf16, 4096 cached keys. Rounds
alternate the versions; each cell is the minimum. On the GPU host the same Python runs
several times slower (benchmarks/kvcache_kernels.py measures it there).

    python3 benchmarks/kvcache_host_cpu.py [COMMIT] [ROUNDS] [--profile]
"""
import cProfile
import importlib
import pstats
import sys
import timeit

import torch

from api_versions import Version


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    commit = args[0] if args else "HEAD"
    rounds = int(args[1]) if len(args) > 1 else 5
    torch.cuda.current_device = lambda: None  # a CPU tensor's device index
    versions = {commit: Version(commit, "old", real_launch=True), "tree": Version(None, "tree", real_launch=True)}
    bf16 = torch.bfloat16
    batch, heads, heads_k, d, n = 8, 32, 8, 128, 4096
    q = torch.randn(batch, 1, heads, d).to(bf16)
    k_cache, v_cache = (torch.randn(batch, n + 64, heads_k, d).to(bf16) for _ in range(2))
    k, v = (torch.randn(batch, 1, heads_k, d).to(bf16) for _ in range(2))
    lens = torch.full((batch,), n - 1, dtype=torch.int32)
    calls = {name: (lambda m=importlib.import_module(version.package + "._kvcache"):
                    m.forward_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lens))
             for name, version in versions.items()}
    best = {}
    for _ in range(rounds):
        for name, call in calls.items():
            call()
            t = min(timeit.repeat(call, number=3000, repeat=3)) / 3000 * 1e6
            best[name] = min(best.get(name, t), t)
    print("us per call  " + "  ".join(f"{name}: {t:.2f}" for name, t in best.items()))
    if "--profile" in sys.argv:
        profiler = cProfile.Profile()
        profiler.runcall(lambda: [calls["tree"]() for _ in range(20000)])
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
