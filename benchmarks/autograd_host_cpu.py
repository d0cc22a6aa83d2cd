"""Host microseconds of an attention call's forward + autograd backward, without a GPU: this
tree against a commit (default HEAD), for `fa_cute.sdpa` at a small GPT's attention shape
(B=8, H=8, N=1024, d=64 causal: the shape of benchmarks/train_gpt.py, as CPU tensors of
that shape's layout) and for `fa_cute.forward`.

Both versions are loaded from source (benchmarks/api_versions.py) with the launch's Python
kept and `_C`'s kernel entry points as no-ops (`real_launch=True`), so what is timed is the
Python layer, the allocations and the autograd engine. Next to them, the same step through
a trivial Python autograd.Function (Ident: an empty_like forward, identity backward), the floor of
any Python-level op. Rounds alternate; each cell is the minimum over rounds.
On an H100 host the same calls cost 4-5x these microseconds (benchmarks/autograd_host.py).

    python3 benchmarks/autograd_host_cpu.py [COMMIT] [ROUNDS] [--profile]
"""
import cProfile
import pstats
import sys
import timeit

import torch

from api_versions import Version


class Ident(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        return torch.empty_like(q)

    @staticmethod
    def backward(ctx, g):
        return g, g, g


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    commit = args[0] if args else "HEAD"
    rounds = int(args[1]) if len(args) > 1 else 5
    torch.cuda.current_device = lambda: None  # a CPU tensor's device index
    versions = {commit: Version(commit, "old", real_launch=True).api,
                "tree": Version(None, "tree", real_launch=True).api}
    b, h, n, d = 8, 8, 1024, 64
    # The GPT's layout: q, k, v are (batch, seqlen, heads, d) buffers viewed (b, h, n, d).
    q, k, v = (torch.randn(b, n, h, d, dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
               for _ in range(3))
    qf, kf, vf = (t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v))
    dout = torch.randn(b, n, h, d, dtype=torch.bfloat16).transpose(1, 2)

    def sdpa_step(api):
        def step():
            out = api.sdpa(q, k, v, is_causal=True)
            torch.autograd.grad(out, (q, k, v), dout)
        return step

    def forward_step(api):
        def step():
            out = api.forward(qf, kf, vf, causal=True)
            torch.autograd.grad(out, (qf, kf, vf), dout.transpose(1, 2))
        return step

    def ident_step():
        out = Ident.apply(q, k, v)
        torch.autograd.grad(out, (q, k, v), dout)

    cells = {"Ident (floor)": ident_step}
    for name, api in versions.items():
        cells[f"sdpa {name}"] = sdpa_step(api)
        cells[f"forward {name}"] = forward_step(api)
    best = {name: float("inf") for name in cells}
    for fn in cells.values():
        fn(); fn()
    for _ in range(rounds):
        for name, fn in cells.items():
            best[name] = min(best[name], min(timeit.repeat(fn, number=100, repeat=3)) / 100 * 1e6)
    for name, us in best.items():
        print(f"{name:22s} fwd+bwd host {us:6.1f} us")
    if "--profile" in sys.argv:
        prof = cProfile.Profile()
        prof.enable()
        step = sdpa_step(versions["tree"])
        for _ in range(300):
            step()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
