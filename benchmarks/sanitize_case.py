"""A small fa_cute run for compute-sanitizer (memcheck, racecheck, synccheck).

Every built config that runs on this GPU, in each of its dtypes, on B=1, H=2, N=256
(rounded up to the config's blocks), with contiguous and (B, H, N, d)-transposed inputs.
Each output is written over NaN and checked against the float64 reference; the reference
is computed on the CPU so that the sanitizer sees few GPU kernels besides ours. PyTorch's
caching allocator is switched off before torch loads: with it, tensors are slices of
larger blocks and an out-of-bounds access into a neighbour goes unseen by memcheck.

Exits 1 if any output is wrong (or no config could run), 0 otherwise.
    compute-sanitizer --tool memcheck --error-exitcode 1 python3 benchmarks/sanitize_case.py
"""

import math
import os
import sys

os.environ.setdefault("PYTORCH_NO_CUDA_MEMORY_CACHING", "1")

import torch  # noqa: E402  (after the allocator setting)

import fa_cute  # noqa: E402
from fa_cute._reference import attention_ref, check_close  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BATCH, NHEADS, SEQLEN = 1, 2, 256


def run_case(config: dict, dtype: torch.dtype, transposed: bool) -> str:
    """'ok ...', 'skipped ...' (config not for this GPU) or 'FAILED ...'."""
    unit = math.lcm(config["block_m"], config["block_n"])
    seqlen = unit * math.ceil(SEQLEN / unit)
    shape = (BATCH, seqlen, NHEADS, config["head_dim"])
    q, k, v = (torch.randn(shape).to(dtype) for _ in range(3))
    if transposed:
        dev = [t.transpose(1, 2).contiguous().cuda().transpose(1, 2) for t in (q, k, v)]
    else:
        dev = [t.cuda() for t in (q, k, v)]
    out = torch.full(shape, math.nan, dtype=dtype, device="cuda")
    try:
        fa_cute.forward(*dev, config=config["name"], out=out)
    except ValueError as exc:
        if "needs a GPU of compute capability" in str(exc):
            return f"skipped ({exc})"
        raise
    torch.cuda.synchronize()
    scale = 1.0 / math.sqrt(config["head_dim"])
    try:
        max_err, plain_err = check_close(out.cpu(), attention_ref(q, k, v, scale),
                                         attention_ref(q, k, v, scale, upcast=False))
    except AssertionError as exc:
        return f"FAILED: {exc}"
    return f"ok (max abs error {max_err:.2e}, plain {plain_err:.2e})"


def main() -> int:
    if not torch.cuda.is_available():
        print("sanitize_case.py needs a CUDA GPU; none is visible to PyTorch.")
        return 1
    torch.manual_seed(0)
    results = []
    for config in fa_cute.configs():
        for dtype_name in config["dtypes"]:
            for transposed in (False, True):
                result = run_case(config, DTYPES[dtype_name], transposed)
                layout = "bhnd-view" if transposed else "contiguous"
                print(f"{config['name']} {dtype_name} {layout}: {result}", flush=True)
                results.append(result)
    ran = [r for r in results if not r.startswith("skipped")]
    if not ran:
        print("no built config runs on this GPU")
        return 1
    return 0 if all(r.startswith("ok") for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
