"""Host microseconds of fa_cute.forward up to the launch, without a GPU: this tree against a
commit (default af2755c, before issue 14's grad check, compile ops and launch plans), for a
GQA decode step with a repeated shape and with a KV cache that grows a key a call
(`k_cache[:, :n]`, the README's decode loop).

Both versions of the Python layer are loaded from source as packages of their own
(benchmarks/api_versions.py: `.is_cuda` read as `.is_cpu` so that CPU tensors take the
cached paths, the device check off, the launch a no-op, no custom ops registered; eager
calls do not use them). Rounds alternate the versions; each cell is the minimum. The growing
loop cycles through more lengths than the validated-launch cache holds, so no call repeats a
cached shape.

    python3 benchmarks/host_cpu.py [COMMIT] [ROUNDS]
"""
import sys
import timeit

import torch

from api_versions import Version


def main() -> None:
    commit = sys.argv[1] if len(sys.argv) > 1 else "af2755c"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    versions = {commit: Version(commit, "old").api, "tree": Version(None, "tree").api}
    bf16 = torch.bfloat16
    q = torch.randn(2, 1, 8, 128).to(bf16)
    k_cache, v_cache = (torch.randn(2, 4096, 2, 128).to(bf16) for _ in range(2))
    k, v = k_cache[:, :300], v_cache[:, :300]
    lengths = range(2, 2 + 2 * 1024 + 7)
    growing = [(k_cache[:, :n], v_cache[:, :n]) for n in lengths]
    best = {}
    for _ in range(rounds):
        for name, api in versions.items():
            fwd = api.forward
            cells = {"repeated shape": (lambda: fwd(q, k, v), 20000)}
            steps = iter(())

            def grow():
                nonlocal steps
                try:
                    kn, vn = next(steps)
                except StopIteration:
                    steps = iter(growing)
                    kn, vn = next(steps)
                return fwd(q, kn, vn)

            cells["growing KV cache"] = (grow, len(growing))
            with torch.no_grad():
                for cell, (fn, n) in cells.items():
                    fn()
                    t = min(timeit.repeat(fn, number=n, repeat=3)) / n * 1e6
                    best[cell, name] = min(best.get((cell, name), t), t)
    print(f"{'us per call':>18} " + " ".join(f"{name:>10}" for name in versions))
    for cell in ("repeated shape", "growing KV cache"):
        print(f"{cell:>18} " + " ".join(f"{best[cell, name]:10.2f}" for name in versions))
    grad = versions["tree"]
    t = min(timeit.repeat(lambda: grad.forward(q, k, v), number=20000, repeat=5)) / 20000 * 1e6
    print(f"tree, repeated shape in grad mode (inputs not requiring grad): {t:.2f} us")


if __name__ == "__main__":
    main()
