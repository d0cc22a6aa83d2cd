"""Host nanoseconds of a validated-launch cache hit (`_api._validate_cached`) with no GPU:
this tree's against another commit's (default 4860120, before issue 13's per-call storage
and negation checks), on a GQA decode step's shapes.

The cache keys CUDA tensors only; here CPU tensors pose as CUDA ones by compiling both
versions' `_launch_key` and `_validate_cached` with `.is_cuda` read as `.is_cpu` (an
attribute of the same cost), and the device check switched off so that the first call
fills the cache. Rounds alternate the two versions; the minimum of each is printed.

    python3 benchmarks/cache_hit_cpu.py [COMMIT] [ROUNDS]
"""
import ast
import pathlib
import subprocess
import sys
import timeit

import torch

from fa_cute import _api

API = "python/fa_cute/_api.py"
ROOT = pathlib.Path(__file__).resolve().parent.parent


def compile_cache(src: str) -> dict:
    ns = dict(_api.__dict__)
    ns["_VALIDATED"] = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.FunctionDef) and node.name in ("_launch_key", "_validate_cached"):
            exec(ast.get_source_segment(src, node).replace(".is_cuda", ".is_cpu"), ns)
    return ns


def main() -> None:
    commit = sys.argv[1] if len(sys.argv) > 1 else "4860120"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    _api._check_devices = lambda *args, **kwargs: None
    versions = {commit: compile_cache(subprocess.check_output(
                    ["git", "-C", str(ROOT), "show", f"{commit}:{API}"], text=True)),
                "tree": compile_cache((ROOT / API).read_text())}
    q = torch.randn(2, 1, 8, 128).bfloat16()
    k, v = (torch.randn(2, 300, 2, 128).bfloat16() for _ in range(2))
    n = 20000
    best = {}
    for _ in range(rounds):
        for name, ns in versions.items():
            fn = ns["_validate_cached"]

            def call():
                return fn(q, k, v, causal=False, bottom_right=True, softmax_scale=None,
                          config="auto", out=None)

            call()
            assert len(ns["_VALIDATED"]) == 1, "the second call must hit the cache"
            t = min(timeit.repeat(call, number=n, repeat=3)) / n * 1e9
            best[name] = min(best.get(name, t), t)
    for name, t in best.items():
        print(f"{name:>10}: {t:6.0f} ns per cache hit")
    print(f"{'tree - ' + commit:>10}: {best['tree'] - best[commit]:+6.0f} ns")


if __name__ == "__main__":
    main()
