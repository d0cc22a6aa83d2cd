"""The FP8 forward's argument checks (fa_cute.forward on e4m3 inputs, python/fa_cute/_fp8.py),
on CPU tensors: every refusal is a TypeError / ValueError / NotImplementedError naming the
argument, raised before anything runs. tests/test_fp8_gpu.py checks the results on a GPU."""

import pytest
import torch

import fa_cute
from fa_cute import _C

E4M3 = torch.float8_e4m3fn


def _qkv(batch=2, seqlen_q=8, seqlen_k=16, nheads=4, nheads_k=2, d=128, dtype=E4M3):
    return (torch.zeros(batch, seqlen_q, nheads, d, dtype=dtype),
            torch.zeros(batch, seqlen_k, nheads_k, d, dtype=dtype),
            torch.zeros(batch, seqlen_k, nheads_k, d, dtype=dtype))


def test_descale_needs_fp8_inputs():
    q, k, v = _qkv(dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="q_descale.*only the FP8 forward"):
        fa_cute.forward(q, k, v, k_descale=torch.ones(2, 2))


def test_mixed_dtypes_refused():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="v has dtype torch.bfloat16"):
        fa_cute.forward(q, k, v.to(torch.bfloat16))
    with pytest.raises(TypeError, match="k has dtype torch.float8_e4m3fn but q has"):
        fa_cute.forward(q.to(torch.bfloat16), k, v)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(softcap=30.0), ValueError, "softcap: the FP8 forward has no softcap"),
    (dict(window_size=(4, 0)), ValueError, "window_size: the FP8 forward has no sliding window"),
    (dict(causal=1), TypeError, "causal must be True or False"),
    (dict(q_descale=torch.ones(2, 4)), ValueError, r"q_descale has shape \(2, 4\); it must be \(batch, nheads_k\)"),
    (dict(v_descale=torch.ones(2, 2, dtype=torch.float64)), TypeError, "v_descale has dtype torch.float64"),
    (dict(k_descale=[1.0]), TypeError, "k_descale must be a torch.Tensor"),
    (dict(softmax_scale=-1.0), ValueError, "softmax_scale"),
])
def test_bad_options_refused(kwargs, error, match):
    q, k, v = _qkv()
    with pytest.raises(error, match=match):
        fa_cute.forward(q, k, v, **kwargs)


def test_shapes_checked_as_bf16():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="k has stride 0 in its seqlen dim"):
        fa_cute.forward(q, k[:, :1].expand(k.shape), v)
    with pytest.raises(ValueError, match="must have the same shape"):
        fa_cute.forward(q, k, v[:, :3])
    with pytest.raises(ValueError, match="must be 4-D"):
        fa_cute.forward(q[0], k, v)


def test_requires_grad_refused():
    q, k, v = _qkv()
    q = q.float().requires_grad_().to(E4M3)  # a non-leaf e4m3 tensor with a grad_fn
    if not q.requires_grad:
        pytest.skip("this PyTorch does not track e4m3 tensors in autograd")
    with pytest.raises(ValueError, match="q requires grad, but the FP8 forward has no backward"):
        fa_cute.forward(q, k, v)


def test_config_and_device_refusals():
    q, k, v = _qkv()
    bf16_only = next(c["name"] for c in fa_cute.configs() if "e4m3" not in c["dtypes"])
    with pytest.raises(ValueError, match="is not built for e4m3"):
        fa_cute.forward(q, k, v, config=bf16_only)
    if not any(c["head_dim"] == 128 for c in fa_cute.configs() if "e4m3" in c["dtypes"]):
        with pytest.raises(ValueError, match="has no FP8 kernel in this build"):
            fa_cute.forward(q, k, v)
    else:
        with pytest.raises(ValueError, match="on cpu.*CUDA tensors only"):
            fa_cute.forward(q, k, v)


def test_out_must_be_bf16():
    q, k, v = _qkv()
    if not any(c["head_dim"] == 128 for c in fa_cute.configs() if "e4m3" in c["dtypes"]):
        pytest.skip("no d=128 e4m3 config in this build (the config check comes first)")
    with pytest.raises(TypeError, match="out has dtype torch.float16; the FP8 forward writes torch.bfloat16"):
        fa_cute.forward(q, k, v, out=torch.empty(q.shape, dtype=torch.float16))


def test_vt_keys_and_layout_checks():
    assert [_C.fp8_vt_keys(n) for n in (1, 31, 32, 33, 65536)] == [32, 32, 32, 64, 65536]
    # _C checks on its own: a null v, a misaligned vt, a head dim the pass does not take.
    with pytest.raises(ValueError, match="v: the data pointer is null"):
        _C.fp8_v_layout(0, 4096, 1, 16, 1, 64, (0, 64, 0), 0, 0)
    with pytest.raises(ValueError, match="vt: data pointer must be 16-byte aligned"):
        _C.fp8_v_layout(4096, 4100, 1, 16, 1, 64, (0, 64, 0), 0, 0)
    with pytest.raises(ValueError, match="head_dim: must be a multiple of 16"):
        _C.fp8_v_layout(4096, 8192, 1, 16, 1, 72, (0, 72, 0), 0, 0)
    with pytest.raises(ValueError, match="v: batch, seqlen and head strides must be multiples of 16"):
        _C.fp8_v_layout(4096, 8192, 1, 16, 1, 64, (0, 72, 0), 0, 0)


def test_default_fp8_config():
    with pytest.raises(ValueError, match="compute capability 9.0"):
        _C.default_fp8_config(128, 1024, 1024, 8, 0)
    fp8 = [c for c in fa_cute.configs() if "e4m3" in c["dtypes"]]
    if not any(c["head_dim"] == 72 for c in fp8):
        with pytest.raises(ValueError, match="head_dim: 72 has no FP8"):
            _C.default_fp8_config(72, 1024, 1024, 9, 0)
    for cfg in fp8:
        picked = _C.default_fp8_config(cfg["head_dim"], 4096, 4096, 9, 0, True)
        by_name = {c["name"]: c for c in fa_cute.configs()}
        assert "e4m3" in by_name[picked]["dtypes"] and by_name[picked]["head_dim"] == cfg["head_dim"]


def test_fp8_reference_dequantises_and_rounds_p():
    """fp8_attention_ref: the float64 reference is attention_ref of q * q_descale etc. (per K/V
    head, its query heads sharing it); the plain one (P in e4m3, bf16 out) is close to it."""
    from fa_cute._reference import FP8_REL_TOL, attention_ref, fp8_attention_ref, relative_error

    torch.manual_seed(0)
    q = torch.randn(2, 33, 4, 64).to(E4M3)
    k, v = (torch.randn(2, 50, 2, 64).to(E4M3) for _ in range(2))
    descales = [torch.rand(2, 2) + 0.5 for _ in range(3)]
    ref = fp8_attention_ref(q, k, v, 0.125, descales, causal=True)
    group = [d.repeat_interleave(2, dim=1)[:, None, :, None].double() for d in descales]
    kv = [d[:, None, :, None].double() for d in descales[1:]]
    expected = attention_ref(q.double() * group[0], k.double() * kv[0], v.double() * kv[1], 0.125, causal=True)
    assert torch.allclose(ref, expected, rtol=0, atol=1e-12)
    plain = fp8_attention_ref(q, k, v, 0.125, descales, upcast=False, causal=True)
    assert plain.dtype == torch.bfloat16 and 1e-4 < relative_error(plain, ref) < FP8_REL_TOL
    assert torch.equal(fp8_attention_ref(q, k, v, 0.125, [None] * 3),
                       attention_ref(q.double(), k.double(), v.double(), 0.125))
