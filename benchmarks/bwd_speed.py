"""Backward TFLOP/s (2.5x fwd FLOPs) of fa_cute configs next to PyTorch's FLASH (FA2) and CUDNN
backward, same process, interleaved shuffled rounds, median of 3 (CUDA events, 10 calls each).
usage: bwd_speed.py D1,D2 N1,N2 [--family sm80|sm90a] [--dtype bf16|fp16]
       [--det: also each config deterministic, where it has the mode]
       [--side-stream: everything on a created stream, not the legacy default one, on which
        a programmatic dependent launch runs as an ordinary launch (docs/perf-notes.md)]"""
import json, os, random, sys
import torch, torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
import fa_cute
from fa_cute import _C

def bench(fn, iters=10):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(iters): fn()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / iters

def backward_inputs(d, n, causal, dtype):
    """Random q, k, v, dout in SDPA's layout (B = 16384/N, H = 2048/d), out and lse of
    PyTorch's FLASH forward; fa_cute's layout views of q, k, v, dout and out: (q, k, v, do,
    (qt, kt, vt, dot, ot), lse)."""
    b, h = 16384 // n, 2048 // d
    q, k, v, do = (torch.randn(b, h, n, d, device="cuda", dtype=dtype) for _ in range(4))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal)[:2]
    return q, k, v, do, tuple(t.transpose(1, 2) for t in (q, k, v, do, out)), lse.contiguous()


def main():
    dims = [int(x) for x in sys.argv[1].split(",")]
    seqlens = [int(x) for x in sys.argv[2].split(",")]
    family = sys.argv[sys.argv.index("--family") + 1] if "--family" in sys.argv else "sm90a"
    det = "--det" in sys.argv
    dtype_name = sys.argv[sys.argv.index("--dtype") + 1] if "--dtype" in sys.argv else "bf16"
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype_name not in dtypes:
        raise SystemExit(f"--dtype must be one of {sorted(dtypes)}, got {dtype_name!r}")
    dtype = dtypes[dtype_name]
    rows = []
    for d in dims:
        cfgs = [c["name"] for c in _C.backward_configs() if c["head_dim"] == d and c["family"] == family
                and dtype_name in c["dtypes"]]
        for causal in (False, True):
            for n in seqlens:
                b, h = 16384 // n, 2048 // d
                q, k, v, do, (qt, kt, vt, dot, ot), lse = backward_inputs(d, n, causal, dtype)
                fns = {}
                for name, backend in (("FLASH", SDPBackend.FLASH_ATTENTION), ("CUDNN", SDPBackend.CUDNN_ATTENTION)):
                    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
                    try:
                        with sdpa_kernel(backend):
                            o2 = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
                        fns[name] = (lambda o2=o2, g=(qg, kg, vg): torch.autograd.grad(o2, g, do, retain_graph=True))
                    except RuntimeError:
                        pass
                for c in cfgs:
                    fns[c] = (lambda c=c: fa_cute.backward(dot, qt, kt, vt, ot, lse, causal=causal, config=c))
                if det:  # every config with a deterministic mode (the _dqbulk and _dqwg variants have none)
                    for c in cfgs:
                        run = (lambda c=c: fa_cute.backward(dot, qt, kt, vt, ot, lse, causal=causal, config=c,
                                                            deterministic=True))
                        try:
                            run()
                        except ValueError:
                            continue
                        fns["det:" + c] = run
                times = {kk: [] for kk in fns}
                for _ in range(3):
                    order = list(fns); random.shuffle(order)
                    for kk in order: times[kk].append(bench(fns[kk]))
                flops = 2.5 * 4 * b * h * n * n * d / (2 if causal else 1)
                tf = {kk: flops / (sorted(t)[1] * 1e-3) / 1e12 for kk, t in times.items()}
                ref = "FLASH" if family == "sm80" else "CUDNN"
                rows.append(dict(dtype=dtype_name, d=d, causal=causal, n=n, tflops={kk: round(x, 1) for kk, x in tf.items()}))
                print(f"{dtype_name} d={d} {'causal' if causal else 'full  '} N={n:5d} " +
                      "  ".join(f"{kk.replace('bwd_', '')}={x:.0f}({x / tf[ref]:.2f})" for kk, x in tf.items()), flush=True)
                del fns, times
    json.dump(dict(gpu=torch.cuda.get_device_name(), rows=rows),
              open(os.environ.get("OUT", "/tmp") + f"/bwdspeed_{family}_{dtype_name}{'_det' if det else ''}.json", "w"), indent=1)


if __name__ == "__main__":
    if "--side-stream" in sys.argv:
        with torch.cuda.stream(torch.cuda.Stream()):
            main()
    else:
        main()
