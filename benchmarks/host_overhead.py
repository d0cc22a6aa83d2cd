"""Where a small forward call's time goes (needs a CUDA GPU): host microseconds of each piece
of fa_cute.forward for a GQA decode step, then the time per call of eager calls issued back
to back, of CUDA-graph replays and of SDPA's cuDNN and FLASH backends (docs/perf-notes.md,
Host time of a call).

    python3 benchmarks/host_overhead.py
"""
import time, torch, torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
import fa_cute
from fa_cute import _C, _cache, _launch, _validate

def host_us(fn, n=2000):
    for _ in range(50): fn()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): fn()
    cpu = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    return cpu

def gpu_us(fn, n=1000):
    for _ in range(50): fn()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(); s.record()
    for _ in range(n): fn()
    e.record(); e.synchronize()
    return s.elapsed_time(e) / n * 1e3

for nk in (512, 4096):
    b, h, hk, d = 16, 32, 8, 128
    q = torch.randn(b, 1, h, d, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(b, nk, hk, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    fwd = lambda: fa_cute.forward(q, k, v)
    launch = _cache.validate_cached(q, k, v, causal=False, bottom_right=True, softmax_scale=None, config="auto", out=None)
    out = torch.empty_like(q)
    buffers = _launch.split_kv_buffers(launch, q.device)
    stream = torch.cuda.current_stream().cuda_stream
    args = (*_launch.kernel_args(launch, q, k, v, out, None), q.device.index, stream, False, *_launch.split_kv_args(buffers))
    print(f"decode B={b} H={h} H_kv={hk} d={d} N_k={nk}: config {launch.config}, splits {buffers[0] if buffers else 1}")
    pieces = {
        "forward (whole call)": fwd,
        "validate_cached": lambda: _cache.validate_cached(q, k, v, causal=False, bottom_right=True, softmax_scale=None, config="auto", out=None),
        "torch.empty_like(q)": lambda: torch.empty_like(q),
        "current_stream().cuda_stream": lambda: torch.cuda.current_stream(q.device).cuda_stream,
        "split_kv_buffers": lambda: _launch.split_kv_buffers(launch, q.device),
        "kernel_args": lambda: _launch.kernel_args(launch, q, k, v, out, None),
        "_C.forward (prepared args)": lambda: _C.forward(*args),
    }
    for name, fn in pieces.items():
        print(f"  host {name:32s} {host_us(fn):7.2f} us")
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s): fwd()
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g): go = fwd()
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    def sdpa(be):
        def f():
            with sdpa_kernel(be):
                return F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True)
        return f
    for name, fn in (("fa_cute eager", fwd), ("fa_cute graph replay", g.replay), ("_C.forward alone", lambda: _C.forward(*args)),
                     ("SDPA cuDNN eager", sdpa(SDPBackend.CUDNN_ATTENTION)), ("SDPA FLASH eager", sdpa(SDPBackend.FLASH_ATTENTION))):
        try:
            print(f"  back-to-back {name:24s} {gpu_us(fn):7.2f} us per call (host {host_us(fn, 500):6.2f})")
        except Exception as exc:
            print(f"  {name}: {type(exc).__name__}: {str(exc)[:100]}")

# The README's decode loop: one query row per sequence against a preallocated KV cache that
# grows a key a step (k_cache[:, :n]), against the same call at a fixed n. Each new n is a
# new shape: it is answered from the launch plan of its first length (_cache.PLANS), not
# validated in full. Host us per call issued back to back, slicing included as in a loop.
b, h, hk, d, cap = 16, 32, 8, 128, 8192
k_cache, v_cache = (torch.randn(b, cap, hk, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
q1 = torch.randn(b, 1, h, d, device="cuda", dtype=torch.bfloat16)
for start in (512, 4096):
    def fixed():
        return fa_cute.forward(q1, k_cache[:, :start], v_cache[:, :start])

    lengths = iter(range(start, cap))  # host_us makes 50 + 1000 calls: 1050 new lengths

    def grow():
        n = next(lengths)
        return fa_cute.forward(q1, k_cache[:, :n], v_cache[:, :n])

    misses = []
    validate = _validate.validate
    _cache.validate = lambda *a, **kw: misses.append(1) or validate(*a, **kw)
    try:
        t_grow = host_us(grow, 1000)
    finally:
        _cache.validate = validate
    print(f"README decode loop B={b} H={h} H_kv={hk} d={d} from N_k={start}: host us per call, "
          f"fixed n {host_us(fixed, 1000):.2f}, growing n {t_grow:.2f} "
          f"({len(misses)} full validations in 1050 lengths)")

# The backward of a training step (the small GPT's attention: B=8, H=8, N=1024, d=64, causal):
# host us per call of fa_cute.backward answered from the backward's validated-launch cache
# (_cache.BACKWARD_VALIDATED), of the same call validated in full (a dq buffer given skips
# the cache), of the whole autograd backward of fa_cute.sdpa, and of SDPA FLASH's and cuDNN's
# autograd backward, issued back to back.
from fa_cute import _backward
b, h, n, d = 8, 8, 1024, 64
q, k, v = (torch.randn(b, n, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
out, lse = fa_cute.forward(q, k, v, causal=True, return_lse=True)
dout, dq = torch.randn_like(out), torch.empty_like(q)
print(f"backward B={b} H={h} N={n} d={d} causal: config "
      f"{_backward.validate_backward_cached(dout, q, k, v, out, lse, causal=True, bottom_right=True, softmax_scale=None, deterministic=False, dq=None, dk=None, dv=None).config}")
qs, ks, vs = (t.transpose(1, 2).detach().requires_grad_() for t in (q, k, v))
ds = dout.transpose(1, 2)
def autograd_bwd(fn):
    o = fn()
    return lambda: torch.autograd.grad(o, (qs, ks, vs), ds, retain_graph=True)
def sdpa_fwd(be):
    with sdpa_kernel(be):
        return F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)
launch_b = _backward.validate_backward_cached(dout, q, k, v, out, lse, causal=True, bottom_right=True, softmax_scale=None, deterministic=False, dq=None, dk=None, dv=None)
dk_, dv_ = torch.empty_like(k), torch.empty_like(v)
work = _backward.backward_work_buffers(launch_b, q.device, False)
bwd_args = (*_backward.backward_kernel_args(launch_b, dout, q, k, v, out, lse, dq, dk_, dv_, work[0], work[1]),
            q.device.index, torch.cuda.current_stream().cuda_stream)
def sdpa_grad_fwd(be=None):
    if be is None:
        return lambda: fa_cute.sdpa(qs, ks, vs, is_causal=True)
    return lambda: sdpa_fwd(be)
for name, fn in (("_C.backward (prepared args)", lambda: _C.backward(*bwd_args)),
                 ("fa_cute.sdpa forward (grad)", sdpa_grad_fwd()),
                 ("SDPA FLASH forward (grad)", sdpa_grad_fwd(SDPBackend.FLASH_ATTENTION)),
                 ("SDPA cuDNN forward (grad)", sdpa_grad_fwd(SDPBackend.CUDNN_ATTENTION)),
                 ("fa_cute.backward (cache hit)", lambda: fa_cute.backward(dout, q, k, v, out, lse, causal=True)),
                 ("fa_cute.backward (full checks)", lambda: fa_cute.backward(dout, q, k, v, out, lse, causal=True, dq=dq)),
                 ("fa_cute.sdpa autograd backward", autograd_bwd(lambda: fa_cute.sdpa(qs, ks, vs, is_causal=True))),
                 ("SDPA FLASH autograd backward", autograd_bwd(lambda: sdpa_fwd(SDPBackend.FLASH_ATTENTION))),
                 ("SDPA cuDNN autograd backward", autograd_bwd(lambda: sdpa_fwd(SDPBackend.CUDNN_ATTENTION)))):
    try:
        print(f"  {name:32s} host {host_us(fn, 300):7.2f} us, back-to-back {gpu_us(fn, 300):7.2f} us per call")
    except Exception as exc:
        print(f"  {name}: {type(exc).__name__}: {str(exc)[:100]}")
