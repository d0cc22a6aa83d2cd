"""Host microseconds per forward + autograd backward, issued back to back, at the small GPT's
attention shape (B=8, H=8, N=1024, d=64, causal; needs a CUDA GPU): a C++ node (clone), a
trivial Python autograd.Function, fa_cute.sdpa, fa_cute under activate() (F.sdpa FLASH routed
to fa_cute), SDPA FLASH and cuDNN; two rounds (the host's noise between runs is large:
docs/perf-notes.md, Backward, the GPT step).

    python3 benchmarks/autograd_host.py
"""
import time, torch, torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
import fa_cute
b, h, n, d = 8, 8, 1024, 64
x = [torch.randn(b, n, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
q, k, v = (t.transpose(1, 2).detach().requires_grad_() for t in x)
dout = torch.randn(b, n, h, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
class Ident(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a):
        return a.clone()
    @staticmethod
    def backward(ctx, g):
        return g
def ident():
    o = Ident.apply(q); torch.autograd.grad(o, (q,), dout)
def clone_only():
    o = q.clone(); torch.autograd.grad(o, (q,), dout)
def fa():
    o = fa_cute.sdpa(q, k, v, is_causal=True); torch.autograd.grad(o, (q, k, v), dout)
def be(backend):
    def f():
        with sdpa_kernel(backend):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.autograd.grad(o, (q, k, v), dout)
    return f
def host(fn, n=300):
    for _ in range(30): fn()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): fn()
    h_ = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize(); g = (time.perf_counter() - t) / n * 1e6
    return h_, g
fns = {"clone (C++ node)": clone_only, "Ident (Python Function)": ident, "fa_cute.sdpa": fa,
       "SDPA FLASH": be(SDPBackend.FLASH_ATTENTION), "SDPA cuDNN": be(SDPBackend.CUDNN_ATTENTION)}
for rnd in range(2):
    for name, fn in fns.items():
        hu, gu = host(fn)
        print(f"{name:26s} fwd+bwd host {hu:7.1f} us, with sync {gu:7.1f} us")
    with fa_cute.activated():
        hu, gu = host(be(SDPBackend.FLASH_ATTENTION))
    print(f"{'fa_cute via activate()':26s} fwd+bwd host {hu:7.1f} us, with sync {gu:7.1f} us")
