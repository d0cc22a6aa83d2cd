"""Host microseconds of fa_cute.forward up to the launch, without a GPU: this tree against a
commit (default af2755c, before issue 14's grad check, compile ops and launch plans), for a
GQA decode step with a repeated shape and with a KV cache that grows a key a call
(`k_cache[:, :n]`, the README's decode loop).

Both versions of `_api.py` are loaded from source as modules of their own, with `.is_cuda`
read as `.is_cpu` (an attribute of the same cost) so that CPU tensors take the cached
paths, the device check off, `_launch` a no-op and no custom ops registered (eager calls do
not use them). Rounds alternate the versions; each cell is the minimum. The growing loop
cycles through more lengths than `_VALIDATED` holds, so no call repeats a cached shape.

    python3 benchmarks/host_cpu.py [COMMIT] [ROUNDS]
"""
import functools
import pathlib
import subprocess
import sys
import timeit
import types

import torch

import fa_cute  # noqa: F401  (the package whose _C both versions import)

API = "python/fa_cute/_api.py"
ROOT = pathlib.Path(__file__).resolve().parent.parent


def load(src: str, name: str) -> types.ModuleType:
    src = src.replace(".is_cuda", ".is_cpu").replace(
        "_OPS: Dict[str, object] = _register_ops()", "_OPS: Dict[str, object] = {}")
    module = types.ModuleType(f"fa_cute.{name}")
    module.__package__ = "fa_cute"
    exec(compile(src, f"<{name}>", "exec"), module.__dict__)
    module._check_devices = lambda *args, **kwargs: None
    module._launch = lambda *args, **kwargs: 0.0
    # auto's device part, memoized as the real ones are.
    module._gpu = functools.lru_cache(None)(lambda index: ("fake GPU", (8, 0)))
    module._smem_limit = functools.lru_cache(None)(lambda index: None)
    return module


def main() -> None:
    commit = sys.argv[1] if len(sys.argv) > 1 else "af2755c"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    versions = {commit: load(subprocess.check_output(
                    ["git", "-C", str(ROOT), "show", f"{commit}:{API}"], text=True), "old"),
                "tree": load((ROOT / API).read_text(), "tree")}
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
