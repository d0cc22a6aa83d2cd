"""Host nanoseconds of a validated-launch cache hit (`validate_cached`) with no GPU: this
tree's against another commit's (default 4860120, before issue 13's per-call storage and
negation checks), on a GQA decode step's shapes.

The cache keys CUDA tensors only; here CPU tensors pose as CUDA ones: both versions are
loaded from source with `.is_cuda` read as `.is_cpu` (an attribute of the same cost) and
the device check switched off (benchmarks/api_versions.py), so that the first call fills
the cache. Rounds alternate the two versions; the minimum of each is printed.

    python3 benchmarks/cache_hit_cpu.py [COMMIT] [ROUNDS]
"""
import sys
import timeit

import torch

from api_versions import Version


def main() -> None:
    commit = sys.argv[1] if len(sys.argv) > 1 else "4860120"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    versions = {commit: Version(commit, "old"), "tree": Version(None, "tree")}
    q = torch.randn(2, 1, 8, 128).bfloat16()
    k, v = (torch.randn(2, 300, 2, 128).bfloat16() for _ in range(2))
    n = 20000
    best = {}
    for _ in range(rounds):
        for name, version in versions.items():
            fn = version.get("validate_cached")

            def call():
                return fn(q, k, v, causal=False, bottom_right=True, softmax_scale=None,
                          config="auto", out=None)

            call()
            assert len(version.get("validated")) == 1, "the second call must hit the cache"
            t = min(timeit.repeat(call, number=n, repeat=3)) / n * 1e9
            best[name] = min(best.get(name, t), t)
    for name, t in best.items():
        print(f"{name:>10}: {t:6.0f} ns per cache hit")
    print(f"{'tree - ' + commit:>10}: {best['tree'] - best[commit]:+6.0f} ns")


if __name__ == "__main__":
    main()
