"""A small fa_cute run for compute-sanitizer (memcheck, racecheck, synccheck).

Every built config that runs on this GPU, in each of its dtypes (e4m3: the FP8 forward, with
descale factors, on the four cases alone), on four small cases:
  - contiguous and (B, H, N, d)-transposed inputs, B=1, H=2, N=256, non-causal;
  - causal-gqa-lse: bottom-right causal, seqlen_q=150 > seqlen_k=100 (50 rows that see no
    key, ragged last tiles of q and k), 4 query heads on 2 K/V heads, LSE written;
  - decode-gqa-lse: seqlen_q=1 against 1000 keys, 8 query heads on 2 K/V heads (packed as
    rows of one tile; this small grid is split over keys and merged), LSE written.
Each forward config with a varlen variant also runs varlen_forward on one packed batch
(lengths 0, 1, 150, 77 against 90, 5, 300, 0 keys; causal and not), and every forward
config forward_with_kvcache over dense and paged caches (pages of 16, 48 and its key block;
ragged lengths; every unreached cache row NaN: run_kvcache_case). Then every built
backward config that runs on this GPU, in each of its dtypes, on the first three cases
(decode aside): fa_cute.backward(config=...) on the float64 reference's out and
LSE into NaN-filled dq, dk, dv, each checked against the float64 reference
gradients under the same 2x rule; and the same with deterministic=True in its first dtype
(skipped for a config that refuses it).
Each output is written over NaN and checked against the float64 reference (and the LSE
against the reference LSE); the reference is computed on the CPU so that the sanitizer
sees few GPU kernels besides ours. PyTorch's caching allocator is switched off before torch
loads: with it, tensors are slices of larger blocks and an out-of-bounds access into a
neighbour goes unseen by memcheck.

An optional argument, a regular expression, keeps only the configs (forward and backward)
whose names it matches (re.search).

Exits 1 if any output is wrong (or no config could run), 0 otherwise.
    compute-sanitizer --tool memcheck --error-exitcode 1 python3 benchmarks/sanitize_case.py
"""

import math
import os
import re
import sys
from typing import NamedTuple

os.environ.setdefault("PYTORCH_NO_CUDA_MEMORY_CACHING", "1")

import torch  # noqa: E402  (after the allocator setting)

import fa_cute  # noqa: E402
from fa_cute import _C  # noqa: E402
from fa_cute._reference import (ABS_SLACK, FP8_LSE_ATOL, FP8_LSE_RTOL, FP8_SLACK,  # noqa: E402
                                attention_grads_ref, attention_ref, check_close, check_lse, fp8_attention_ref,
                                fp8_rel_tol, varlen_attention_ref)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Case(NamedTuple):
    seqlen_q: int
    seqlen_k: int
    nheads: int
    nheads_k: int
    causal: bool
    transposed: bool
    lse: bool


CASES = {
    "contiguous": Case(256, 256, 2, 2, causal=False, transposed=False, lse=False),
    "bhnd-view": Case(256, 256, 2, 2, causal=False, transposed=True, lse=False),
    "causal-gqa-lse": Case(150, 100, 4, 2, causal=True, transposed=False, lse=True),
    "decode-gqa-lse": Case(1, 1000, 8, 2, causal=False, transposed=False, lse=True),
}


def to_gpu(t: torch.Tensor, transposed: bool) -> torch.Tensor:
    """t on the GPU, contiguous or as a .transpose(1, 2) view of (B, H, N, d) storage."""
    if transposed:
        return t.transpose(1, 2).contiguous().cuda().transpose(1, 2)
    return t.cuda()


def launch_or_skip(call):
    """(call(), None), or (None, 'skipped (...)') where the config cannot run on this GPU."""
    try:
        return call(), None
    except ValueError as exc:
        if "needs a GPU of compute capability" in str(exc) or "shared memory" in str(exc):
            return None, f"skipped ({exc})"
        raise


def run_case(config: dict, dtype: torch.dtype, case: Case) -> str:
    """'ok ...', 'skipped ...' (config not for this GPU) or 'FAILED ...'."""
    d = config["head_dim"]
    q = torch.randn(1, case.seqlen_q, case.nheads, d).to(dtype)
    k, v = (torch.randn(1, case.seqlen_k, case.nheads_k, d).to(dtype) for _ in range(2))
    out = to_gpu(torch.full_like(q, math.nan), case.transposed)
    result, skipped = launch_or_skip(lambda: fa_cute.forward(
        *(to_gpu(t, case.transposed) for t in (q, k, v)), causal=case.causal, return_lse=case.lse,
        config=config["name"], out=out))
    if skipped:
        return skipped
    torch.cuda.synchronize()
    scale = 1.0 / math.sqrt(d)
    ref, ref_lse = attention_ref(q, k, v, scale, causal=case.causal, return_lse=True)
    try:
        max_err, plain_err = check_close(out.cpu(), ref, attention_ref(
            q, k, v, scale, upcast=False, causal=case.causal))
        lse_note = ""
        if case.lse:
            lse_note = f", LSE error {check_lse(result[1].cpu(), ref_lse):.1e}"
    except AssertionError as exc:
        return f"FAILED: {exc}"
    return f"ok (max abs error {max_err:.2e}, plain {plain_err:.2e}{lse_note})"


def run_fp8_case(config: dict, case: Case) -> str:
    """An e4m3 config (the FP8 forward) on a case, with descale factors: 'ok ...', 'skipped ...'
    or 'FAILED ...'."""
    d, e4m3 = config["head_dim"], torch.float8_e4m3fn
    q = torch.randn(1, case.seqlen_q, case.nheads, d).to(e4m3)
    k, v = (torch.randn(1, case.seqlen_k, case.nheads_k, d).to(e4m3) for _ in range(2))
    descales = [0.5 + torch.rand(1, case.nheads_k) for _ in range(3)]
    out = to_gpu(torch.full(q.shape, math.nan, dtype=torch.bfloat16), case.transposed)
    result, skipped = launch_or_skip(lambda: fa_cute.forward(
        *(to_gpu(t, case.transposed) for t in (q, k, v)), causal=case.causal, return_lse=case.lse,
        config=config["name"], out=out, q_descale=descales[0].cuda(), k_descale=descales[1].cuda(),
        v_descale=descales[2].cuda()))
    if skipped:
        return skipped
    torch.cuda.synchronize()
    scale = 1.0 / math.sqrt(d)
    ref, ref_lse = fp8_attention_ref(q, k, v, scale, descales, causal=case.causal, return_lse=True)
    plain = fp8_attention_ref(q, k, v, scale, descales, upcast=False, causal=case.causal)
    try:
        max_err, plain_err = check_close(out.cpu(), ref, plain, slack=FP8_SLACK, rel_tol=fp8_rel_tol(plain, ref))
        lse_note = ""
        if case.lse:
            lse_note = f", LSE error {check_lse(result[1].cpu(), ref_lse, FP8_LSE_ATOL, FP8_LSE_RTOL):.1e}"
    except AssertionError as exc:
        return f"FAILED: {exc}"
    return f"ok (max abs error {max_err:.2e}, plain {plain_err:.2e}{lse_note})"


def run_varlen_case(config: dict, dtype: torch.dtype, causal: bool) -> str:
    """varlen_forward on a packed batch of lengths 0, 1, 150 and 77 queries against 90, 5,
    300 and 0 keys (a ragged last tile, sequences with no query or no key), 4 query heads on
    2 K/V heads, LSE written: 'ok ...', 'skipped ...' or 'FAILED ...'."""
    if not config.get("varlen"):
        return "skipped (no varlen variant)"
    d = config["head_dim"]
    lengths_q, lengths_k = [0, 1, 150, 77], [90, 5, 300, 0]
    cu_q = [0] + [sum(lengths_q[:i + 1]) for i in range(4)]
    cu_k = [0] + [sum(lengths_k[:i + 1]) for i in range(4)]
    q = torch.randn(cu_q[-1], 4, d).to(dtype)
    k, v = (torch.randn(cu_k[-1], 2, d).to(dtype) for _ in range(2))
    out = torch.full_like(q, math.nan).cuda()
    as_gpu = lambda xs: torch.tensor(xs, dtype=torch.int32).cuda()  # noqa: E731
    result, skipped = launch_or_skip(lambda: fa_cute.varlen_forward(
        q.cuda(), k.cuda(), v.cuda(), as_gpu(cu_q), as_gpu(cu_k), max(lengths_q), max(lengths_k),
        causal=causal, return_lse=True, out=out, config=config["name"]))
    if skipped:
        return skipped
    lse = result[1]
    torch.cuda.synchronize()
    scale = 1.0 / math.sqrt(d)
    ref, ref_lse = varlen_attention_ref(q, k, v, cu_q, cu_k, scale, causal=causal, return_lse=True)
    try:
        max_err, plain_err = check_close(out.cpu(), ref, varlen_attention_ref(
            q, k, v, cu_q, cu_k, scale, upcast=False, causal=causal))
        lse_err = check_lse(lse.cpu(), ref_lse)
    except AssertionError as exc:
        return f"FAILED: {exc}"
    return f"ok (max abs error {max_err:.2e}, plain {plain_err:.2e}, LSE error {lse_err:.1e})"


def run_kvcache_case(config: dict, dtype: torch.dtype, page_size: int, seqlen_q: int) -> str:
    """forward_with_kvcache on a paged cache (page_size > 0; 0: dense entries through
    cache_batch_idx): 2 sequences of 37 and 200 cached keys (ragged last blocks, a key block
    that straddles pages where page_size is not a multiple of block_n) plus seqlen_q new
    tokens appended, 8 query heads on 2 K/V heads, causal for a chunk, LSE written; every
    cache row no sequence reaches holds NaN (the kernel must never let it into the output).
    'ok ...', 'skipped ...' or 'FAILED ...'."""
    d = config["head_dim"]
    lens, capacity = [37, 200], 256
    if page_size and capacity % page_size:
        capacity += page_size - capacity % page_size
    q = torch.randn(2, seqlen_q, 8, d).to(dtype)
    k_new, v_new = (torch.randn(2, seqlen_q, 2, d).to(dtype) for _ in range(2))
    if page_size:
        pages_per_seq = capacity // page_size
        table = torch.randperm(2 * pages_per_seq + 1)[:2 * pages_per_seq].view(2, pages_per_seq).int()
        shape, where = (2 * pages_per_seq + 1, page_size, 2, d), dict(page_table=table.cuda())
    else:
        table, shape = None, (3, capacity, 2, d)
        index = torch.tensor([2, 0], dtype=torch.int32)
        where = dict(cache_batch_idx=index.cuda())
    caches = [torch.full(shape, math.nan).to(dtype) for _ in range(2)]
    for cache in caches:  # the cached keys: finite; every other row NaN
        for b, n in enumerate(lens):
            for j in range(n):
                row = (int(table[b, j // page_size]), j % page_size) if page_size else (int(index[b]), j)
                cache[row] = torch.randn(2, d).to(dtype)
    gpu_caches = [c.cuda() for c in caches]
    result, skipped = launch_or_skip(lambda: fa_cute.forward_with_kvcache(
        q.cuda(), *gpu_caches, k_new.cuda(), v_new.cuda(), cache_seqlens=torch.tensor(lens, dtype=torch.int32).cuda(),
        causal=seqlen_q > 1, return_lse=True, config=config["name"], **where))
    if skipped:
        return skipped
    torch.cuda.synchronize()
    out, lse = (t.cpu() for t in result)
    scale = 1.0 / math.sqrt(d)
    notes = []
    appended = [c.cpu() for c in gpu_caches]  # the caches after the call's append
    for b, n in enumerate(lens):
        keys = []
        for cache, new in zip(appended, (k_new, v_new)):
            rows = [cache[int(table[b, j // page_size]), j % page_size] if page_size else cache[int(index[b]), j]
                    for j in range(n)]
            keys.append(torch.cat([torch.stack(rows), new[b]])[None])
        qb = q[b:b + 1]
        ref, ref_lse = attention_ref(qb, *keys, scale, causal=seqlen_q > 1, return_lse=True)
        try:
            max_err, plain_err = check_close(out[b:b + 1], ref, attention_ref(
                qb, *keys, scale, upcast=False, causal=seqlen_q > 1))
            lse_err = check_lse(lse[b:b + 1], ref_lse)
        except AssertionError as exc:
            return f"FAILED (sequence {b}): {exc}"
        notes.append(f"{max_err:.1e}/{plain_err:.1e}, LSE {lse_err:.1e}")
    return "ok (max abs error / plain per sequence: " + "; ".join(notes) + ")"


def run_backward_case(config: str, d: int, dtype: torch.dtype, case: Case,
                      deterministic: bool = False) -> str:
    """'ok ...' or 'FAILED ...' for one backward config on one case ('skipped ...' where
    deterministic=True and the config has no deterministic mode). out and LSE come from
    the float64 reference (so a head dim without a built forward is covered too)."""
    q, dout = (torch.randn(1, case.seqlen_q, case.nheads, d).to(dtype) for _ in range(2))
    k, v = (torch.randn(1, case.seqlen_k, case.nheads_k, d).to(dtype) for _ in range(2))
    gq, gk, gv, gdout = (to_gpu(t, case.transposed) for t in (q, k, v, dout))
    scale = 1.0 / math.sqrt(d)
    ref_out, ref_lse = attention_ref(q, k, v, scale, causal=case.causal, return_lse=True)
    out = to_gpu(ref_out.to(dtype), case.transposed)
    lse = ref_lse.float().contiguous().cuda()
    grads = [to_gpu(torch.full_like(t, math.nan), case.transposed) for t in (q, k, v)]
    try:
        fa_cute.backward(gdout, gq, gk, gv, out, lse, causal=case.causal, dq=grads[0],
                         dk=grads[1], dv=grads[2], config=config, deterministic=deterministic)
    except ValueError as exc:
        if deterministic and "deterministic" in str(exc):
            return f"skipped ({exc})"
        raise
    torch.cuda.synchronize()
    ref = attention_grads_ref(q, k, v, dout, scale, causal=case.causal)
    plain = attention_grads_ref(q, k, v, dout, scale, upcast=False, causal=case.causal)
    notes = []
    for name, g, r, p in zip(("dq", "dk", "dv"), grads, ref, plain):
        err = (g.cpu().double() - r).abs().max().item()  # NaN where a gradient was not written
        plain_err = (p.double() - r).abs().max().item()
        if not err <= 2 * plain_err + ABS_SLACK * max(1.0, r.abs().max().item()):
            return f"FAILED {name}: max abs error {err:.2e} > 2 x plain {plain_err:.2e} + slack"
        notes.append(f"{name} {err:.1e}/{plain_err:.1e}")
    return "ok (max abs error / plain: " + ", ".join(notes) + ")"


def main() -> int:
    if not torch.cuda.is_available():
        print("sanitize_case.py needs a CUDA GPU; none is visible to PyTorch.")
        return 1
    torch.manual_seed(0)
    wanted = re.compile(sys.argv[1] if len(sys.argv) > 1 else "")
    results = []
    for config in (c for c in fa_cute.configs() if wanted.search(c["name"])):
        if "e4m3" in config["dtypes"]:
            for name, case in CASES.items():
                result = run_fp8_case(config, case)
                print(f"{config['name']} e4m3 {name}: {result}", flush=True)
                results.append(result)
        for dtype_name in (n for n in config["dtypes"] if n in DTYPES):
            for name, case in CASES.items():
                result = run_case(config, DTYPES[dtype_name], case)
                print(f"{config['name']} {dtype_name} {name}: {result}", flush=True)
                results.append(result)
            for causal in (False, True):
                result = run_varlen_case(config, DTYPES[dtype_name], causal)
                print(f"{config['name']} {dtype_name} varlen{'-causal' if causal else ''}: {result}",
                      flush=True)
                results.append(result)
            for page_size, seqlen_q in ((0, 1), (16, 1), (48, 7), (config["block_n"], 1)):
                result = run_kvcache_case(config, DTYPES[dtype_name], page_size, seqlen_q)
                print(f"{config['name']} {dtype_name} kvcache-p{page_size}-q{seqlen_q}: {result}", flush=True)
                results.append(result)
    if hasattr(_C, "backward_configs"):
        major, minor = torch.cuda.get_device_capability()
        for config in _C.backward_configs():
            if not wanted.search(config["name"]):
                continue
            if config["family"] == "sm90a" and (major, minor) != (9, 0):
                continue
            for dtype_name in config["dtypes"]:
                for name, case in CASES.items():
                    if case.seqlen_q == 1:
                        continue
                    result = run_backward_case(config["name"], config["head_dim"],
                                               DTYPES[dtype_name], case)
                    print(f"{config['name']} {dtype_name} {name}: {result}", flush=True)
                    results.append(result)
            # deterministic=True (its dq counters' waits and hand-overs), in the first dtype
            for name, case in CASES.items():
                if case.seqlen_q == 1:
                    continue
                result = run_backward_case(config["name"], config["head_dim"],
                                           DTYPES[config["dtypes"][0]], case, deterministic=True)
                print(f"{config['name']} {config['dtypes'][0]} {name} deterministic: {result}",
                      flush=True)
                results.append(result)
    ran = [r for r in results if not r.startswith("skipped")]
    if not ran:
        print("no built config runs on this GPU")
        return 1
    return 0 if all(r.startswith("ok") for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
