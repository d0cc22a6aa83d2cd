"""The FP8 (e4m3) forward on a Hopper GPU against the float64 reference of the dequantised
inputs (fa_cute._reference.fp8_attention_ref): the output within twice the error of the same
computation at the kernel's precision (fp32 scores, P in e4m3, bf16 out) plus a slack, the
LSE within a fixed tolerance, over the built FP8 head dims x causal x MHA/GQA/MQA x ragged and
unequal lengths x descale factors or none x transposed layouts; a NaN-filled `out` is fully
overwritten; a long sequence (64k keys) with large logits. tests/test_fp8.py tests the
argument checks on CPU."""

import math

import pytest
import torch

import fa_cute
from fa_cute._reference import (FP8_LSE_ATOL, FP8_LSE_RTOL, FP8_SLACK, check_close, check_lse, fp8_attention_ref,
                                fp8_rel_tol)

from attention_cases import DEVICE

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

E4M3 = torch.float8_e4m3fn
FP8_HEAD_DIMS = sorted({c["head_dim"] for c in fa_cute.configs() if c["rung"] is None and "e4m3" in c["dtypes"]})


def _require(head_dim: int) -> None:
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the FP8 forward runs on compute capability 9.0 only")
    if head_dim not in FP8_HEAD_DIMS:
        pytest.skip(f"no e4m3 config for head dim {head_dim} in this build (built: {FP8_HEAD_DIMS})")


def _inputs(batch, seqlen_q, seqlen_k, nheads, nheads_k, d, seed, descaled=True, transposed=False, scale=1.0):
    """e4m3 q, k, v from N(0, scale^2) values (transposed: (batch, nheads, seqlen, d) storage viewed
    as (batch, seqlen, nheads, d)) and fp32 (batch, nheads_k) descale factors in [0.5, 2]."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)

    def make(seqlen, heads):
        shape = (batch, heads, seqlen, d) if transposed else (batch, seqlen, heads, d)
        t = (torch.randn(shape, generator=g, device=DEVICE) * scale).to(E4M3)
        return t.transpose(1, 2) if transposed else t

    q, k, v = make(seqlen_q, nheads), make(seqlen_k, nheads_k), make(seqlen_k, nheads_k)
    descales = [(0.5 + 1.5 * torch.rand(batch, nheads_k, generator=g, device=DEVICE)) if descaled else None
                for _ in range(3)]
    return q, k, v, descales


def _check(q, k, v, descales, causal, softmax_scale=None):
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if softmax_scale is None else softmax_scale
    out = torch.full(q.shape, float("nan"), dtype=torch.bfloat16, device=DEVICE)
    got, lse = fa_cute.forward(q, k, v, causal=causal, softmax_scale=softmax_scale, return_lse=True, out=out,
                               q_descale=descales[0], k_descale=descales[1], v_descale=descales[2])
    assert got is out and got.dtype == torch.bfloat16
    ref, ref_lse = fp8_attention_ref(q, k, v, scale, descales, causal=causal, return_lse=True)
    plain = fp8_attention_ref(q, k, v, scale, descales, upcast=False, causal=causal)
    max_err, plain_err = check_close(got, ref, plain, slack=FP8_SLACK, rel_tol=fp8_rel_tol(plain, ref))
    lse_err = check_lse(lse, ref_lse, atol=FP8_LSE_ATOL, rtol=FP8_LSE_RTOL)
    return max_err, plain_err, lse_err


@pytest.mark.parametrize("head_dim", [64, 96, 128, 192, 256])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(1, 1), (17, 113), (113, 239), (239, 113), (799, 1024),
                                               (1024, 1024), (1, 4224)])
@pytest.mark.parametrize("heads", [(6, 6), (6, 2), (6, 1)], ids=["mha", "gqa", "mqa"])
def test_fp8_forward_matches_reference(head_dim, causal, seqlen_q, seqlen_k, heads):
    _require(head_dim)
    nheads, nheads_k = heads
    seed = hash((head_dim, causal, seqlen_q, seqlen_k, heads)) % 2**31
    q, k, v, descales = _inputs(2, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, seed)
    _check(q, k, v, descales, causal)


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_fp8_forward_without_descales_and_transposed(head_dim):
    _require(head_dim)
    q, k, v, descales = _inputs(2, 300, 517, 4, 2, head_dim, seed=head_dim, descaled=False, transposed=True)
    _check(q, k, v, descales, causal=True)
    # One factor given, the others 1.
    q, k, v, descales = _inputs(1, 128, 640, 4, 4, head_dim, seed=head_dim + 1)
    _check(q, k, v, [None, descales[1], None], causal=False, softmax_scale=0.3)


@pytest.mark.parametrize("head_dim", [128])
def test_fp8_forward_long_sequence_large_logits(head_dim):
    """65536 keys with scores of magnitude ~30: the running max moves across many blocks."""
    _require(head_dim)
    q, k, v, descales = _inputs(1, 256, 65536, 2, 1, head_dim, seed=7, scale=3.0)
    _check(q, k, v, descales, causal=False)


def test_fp8_zero_and_negative_descales():
    """A zero q_descale (an all-zero head's amax scale) gives the uniform softmax of all-zero
    scores, masked keys included (causal, ragged); a negative product makes that head NaN."""
    _require(128)
    q, k, v, descales = _inputs(2, 100, 300, 4, 2, 128, seed=11)
    descales[0][0, 1] = 0.0
    _check(q, k, v, descales, causal=True)
    descales[1][1, 0] = -1.0
    out, lse = fa_cute.forward(q, k, v, causal=True, return_lse=True, q_descale=descales[0],
                               k_descale=descales[1], v_descale=descales[2])
    assert torch.isnan(out[1, :, :2]).all() and torch.isnan(lse[1, :2]).all()
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[1, :, 2:]).all()


def test_fp8_v_layout_pass():
    """The layout pass alone: Vt (batch, nheads_k, d, keys rounded up to 32), each 32-key chunk
    in fp8_vt_key order (src/fp8_layout.h: slot 16c + 4j + a holds key 8 (2c + a/2) + 2j + a%2),
    zeros past seqlen_k; from a strided (transposed) v."""
    batch, seqlen_k, nheads_k, d = 2, 77, 3, 64
    v = torch.randn(batch, nheads_k, seqlen_k, d, device=DEVICE).to(E4M3).transpose(1, 2)
    keys = fa_cute._C.fp8_vt_keys(seqlen_k)
    assert keys == 96
    vt = torch.full((batch, nheads_k, d, keys), float("nan"), device=DEVICE).to(E4M3)
    stream = torch.cuda.current_stream().cuda_stream
    fa_cute._C.fp8_v_layout(v.data_ptr(), vt.data_ptr(), batch, seqlen_k, nheads_k, d,
                            (v.stride(0), v.stride(1), v.stride(2)), torch.cuda.current_device(), stream)
    slot = torch.arange(keys)
    c, j, a = slot % 32 // 16, slot % 16 // 4, slot % 4
    key = slot // 32 * 32 + 8 * (2 * c + a // 2) + 2 * j + a % 2
    padded = torch.zeros(batch, keys, nheads_k, d, device=DEVICE)
    padded[:, :seqlen_k] = v.float()
    expected = padded[:, key].permute(0, 2, 3, 1)
    assert torch.equal(vt.float(), expected)
