"""Issue 16 on CPU: `fa_cute.backward`'s checks (every bad argument named), and the autograd
plumbing of forward and sdpa, eager and under torch.compile, with the kernels stood in for.

The stand-ins work on CPU tensors the way the kernels work on GPU ones: the forward is the
float64 reference written into the output and the LSE (`kernels`), and `_C.backward` is a
function that reads its tensors from the pointers and strides it is given (CPU addresses)
and writes dq, dk and dv there, computed in float64 from q, k, v, out, dout and the LSE as
FlashAttention's backward computes them. So a wrong stride, offset, pointer or LSE gives
wrong gradients, which the tests compare with autograd through the float64 reference.
tests/test_backward_gpu.py runs the real kernels.
"""

import ctypes
from types import SimpleNamespace
from typing import Dict, List

import pytest
import torch

import fa_cute
from fa_cute import _C, _api, _backward, _cache, _tuning
from fa_cute._reference import attention_grads_ref, attention_ref, visible_mask

from attention_cases import ToyModel, check_training_matches, training_losses

BF16 = torch.bfloat16
D = 128  # the head dim the CPU build's forward config takes
BACKWARD_HEAD_DIMS = (64, 128)

needs_ops = pytest.mark.skipif(not _api.OPS, reason="torch.library.custom_op needs PyTorch 2.4")


def _cpu_view(ptr: int, dtype: torch.dtype, shape, strides) -> torch.Tensor:
    """The tensor a kernel would see at a CPU address with these element strides."""
    size = torch.empty((), dtype=dtype).element_size()
    span = 1 + sum((n - 1) * s for n, s in zip(shape, strides)) if all(shape) else 1
    memory = (ctypes.c_byte * (span * size)).from_address(ptr)
    return torch.frombuffer(memory, dtype=dtype).as_strided(shape, strides)


def _fake_backward(calls: List[Dict]):
    """`_C.backward` on CPU memory: D = rowsum(dO * O), P = exp(S * scale - LSE) on the
    visible keys, dS = P * (dO V^T - D), dQ = dS K * scale, dK = dS^T Q * scale, dV = P^T dO,
    dK and dV summed over each K/V head's query heads."""
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}

    def backward(config, dtype, dout, q, k, v, out, lse, dq, dk, dv, dq_accum, softmax_d, batch,
                 seqlen_q, seqlen_k, nheads, nheads_k, head_dim, q_strides, k_strides, v_strides,
                 o_strides, do_strides, dq_strides, dk_strides, dv_strides, softmax_scale,
                 is_causal, causal_offset, device, stream, dq_semaphore=0, softcap=0.0,
                 window_left=-1, window_right=-1):
        calls.append(dict(locals()))
        dt = dtypes[dtype]

        def rows(ptr, strides, seqlen, heads):
            return _cpu_view(ptr, dt, (batch, seqlen, heads, head_dim), (*strides, 1))

        group = nheads // nheads_k
        q_, o_, do_ = (rows(p, s, seqlen_q, nheads).double()
                       for p, s in ((q, q_strides), (out, o_strides), (dout, do_strides)))
        k_, v_ = (rows(p, s, seqlen_k, nheads_k).double().repeat_interleave(group, dim=2)
                  for p, s in ((k, k_strides), (v, v_strides)))
        lse_ = _cpu_view(lse, torch.float32, (batch, nheads, seqlen_q),
                         (nheads * seqlen_q, seqlen_q, 1)).double()
        scores = torch.einsum("bqhd,bkhd->bhqk", q_, k_) * softmax_scale
        tanh_grad = 1.0
        if softcap:
            t = torch.tanh(scores / softcap)
            scores, tanh_grad = softcap * t, 1 - t * t
        visible = visible_mask(seqlen_q, seqlen_k, causal_offset, is_causal,
                               (window_left, window_right))
        if visible is None:
            visible = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool)
        probs = torch.where(visible, torch.exp(scores - lse_[..., None]), 0.0).nan_to_num(0.0)
        d_row = (do_ * o_).sum(-1).transpose(1, 2)
        ds = probs * (torch.einsum("bqhd,bkhd->bhqk", do_, v_) - d_row[..., None]) * tanh_grad

        def fold(t):
            return t.reshape(batch, seqlen_k, nheads_k, group, head_dim).sum(3)

        rows(dq, dq_strides, seqlen_q, nheads).copy_(
            torch.einsum("bhqk,bkhd->bqhd", ds, k_) * softmax_scale)
        rows(dk, dk_strides, seqlen_k, nheads_k).copy_(
            fold(torch.einsum("bhqk,bqhd->bkhd", ds, q_) * softmax_scale))
        rows(dv, dv_strides, seqlen_k, nheads_k).copy_(
            fold(torch.einsum("bhqk,bqhd->bkhd", probs, do_)))

    return backward


def _default_backward_config(head_dim: int, cc_major: int, cc_minor: int) -> str:
    if head_dim not in BACKWARD_HEAD_DIMS:
        raise ValueError(f"head_dim {head_dim} has no backward config; built: 64, 128")
    return f"bwd_d{head_dim}"


@pytest.fixture
def backward_c(monkeypatch: pytest.MonkeyPatch) -> List[Dict]:
    """`_C.backward` and `_C.default_backward_config` as the contract states them, on CPU
    tensors (no device check, stream 0); returns the backward calls' arguments."""
    return install_backward_c(monkeypatch)


def install_backward_c(monkeypatch: pytest.MonkeyPatch) -> List[Dict]:
    """`backward_c`'s stand-in, for a caller without fixtures (a spawned process)."""
    calls: List[Dict] = []
    monkeypatch.setattr(_C, "backward", _fake_backward(calls), raising=False)
    monkeypatch.setattr(_C, "default_backward_config", _default_backward_config, raising=False)
    # The stand-in configs' tiles (deterministic=True sizes its counters by block_m).
    monkeypatch.setattr(_backward, "BACKWARD_CONFIGS", dict(
        _backward.BACKWARD_CONFIGS, **{f"bwd_d{d}": dict(name=f"bwd_d{d}", family="sm80", head_dim=d,
                                                          block_m=64, block_n=128)
                                        for d in BACKWARD_HEAD_DIMS}))
    monkeypatch.setattr(_backward, "check_devices", lambda *args, **kwargs: None)
    monkeypatch.setattr(_backward, "current_stream", lambda index: 0)
    # CPU tensors have device index None: the launch then needs no device switch.
    monkeypatch.setattr(torch.cuda, "current_device", lambda: None)
    return calls


@pytest.fixture
def kernels(backward_c: List[Dict], reference_forward) -> List[Dict]:
    """Both kernels stood in for: the forward writes the float64 reference's output and LSE
    (conftest's `reference_forward`); returns the backward calls' arguments."""
    return backward_c


def randn(*shape: int, dtype: torch.dtype = BF16) -> torch.Tensor:
    return torch.randn(shape).to(dtype)


def inputs(batch=2, seqlen_q=7, seqlen_k=9, nheads=4, nheads_k=2, head_dim=D, causal=False,
           scale=None):
    """Valid backward arguments (dout, q, k, v, out, lse), out and lse from the reference."""
    q = randn(batch, seqlen_q, nheads, head_dim)
    k, v = randn(batch, seqlen_k, nheads_k, head_dim), randn(batch, seqlen_k, nheads_k, head_dim)
    out, lse = attention_ref(q, k, v, scale or head_dim ** -0.5, causal=causal, return_lse=True)
    return randn(batch, seqlen_q, nheads, head_dim), q, k, v, out.to(BF16), lse.float()


def assert_grads_close(got, ref) -> None:
    """Within bf16's rounding of the reference gradients (the stand-in computes in float64
    from the bf16 output the forward stored): a wrong stride or offset is off by O(1)."""
    for name, g, r in zip("qkv", got, ref):
        assert g is not None and g.shape == r.shape, name
        err = (g.double() - r).abs().max().item()
        assert err <= 0.02 * r.abs().max().item() + 1e-3, (name, err, r.abs().max().item())


# The checks of fa_cute.backward ---------------------------------------------------------------

def _bad(args: dict, name: str, value) -> dict:
    args = dict(args)
    args[name] = value(args) if callable(value) else value
    return args


def _transposed_lse(a):
    return a["lse"].transpose(1, 2).contiguous().transpose(1, 2)


BAD_ARGUMENTS = {
    "dout-type": ("dout", [1.0], TypeError, r"^dout must be a torch\.Tensor; got list"),
    "q-dtype": ("q", lambda a: a["q"].float(), TypeError,
                r"^q has dtype torch\.float32; allowed: torch\.bfloat16 or torch\.float16"),
    "k-dtype": ("k", lambda a: a["k"].half(), TypeError,
                r"^k has dtype torch\.float16 but q has torch\.bfloat16"),
    "q-3d": ("q", lambda a: a["q"][0], ValueError, r"^q must be 4-D"),
    "out-dtype": ("out", lambda a: a["out"].half(), TypeError,
                  r"^out has dtype torch\.float16; it must match q \(torch\.bfloat16"),
    "out-shape": ("out", lambda a: a["out"][:, :3], ValueError,
                  r"^out has shape \(2, 3, 4, 128\); it must match q \(2, 7, 4, 128\)"),
    "dout-shape": ("dout", lambda a: a["dout"][:1], ValueError,
                   r"^dout has shape \(1, 7, 4, 128\); it must match q"),
    "dout-dtype": ("dout", lambda a: a["dout"].float(), TypeError, r"^dout has dtype"),
    "lse-type": ("lse", None, TypeError, r"^lse must be a torch\.Tensor; got NoneType"),
    "lse-dtype": ("lse", lambda a: a["lse"].double(), TypeError,
                  r"^lse has dtype torch\.float64; it must be torch\.float32"),
    "lse-shape": ("lse", lambda a: a["lse"].transpose(1, 2), ValueError,
                  r"^lse has shape \(2, 7, 4\); it must be \(batch, nheads, seqlen_q\) of q: "
                  r"\(2, 4, 7\)"),
    "lse-strides": ("lse", _transposed_lse, ValueError, r"^lse must be contiguous"),
    "kv-shape": ("v", lambda a: a["v"][:, :3], ValueError,
                 r"^k and v must have the same shape"),
    "heads": ("q", lambda a: randn(2, 7, 3, D), ValueError,
              r"^nheads of q \(3\) must be a multiple of nheads of k and v \(2\)"),
    "headdim": ("q", lambda a: randn(2, 7, 4, 64), ValueError,
                r"^headdim of k and v \(128\) must equal headdim of q \(64\)"),
    "q-layout": ("q", lambda a: a["q"].transpose(2, 3).contiguous().transpose(2, 3),
                 ValueError, r"^q must have a contiguous last dim"),
    "dout-layout": ("dout", lambda a: randn(2, 7, 4, D + 1)[..., :D], ValueError,
                    r"^dout has strides .*multiples of 8 elements"),
    "causal": ("causal", 1, TypeError, r"^causal must be True or False; got int"),
    "deterministic-type": ("deterministic", "yes", TypeError,
                           r"^deterministic must be True or False; got str"),
    "scale": ("softmax_scale", -1.0, ValueError,
              r"^softmax_scale must be a finite number > 0; got -1\.0"),
    "dq-type": ("dq", "buffer", TypeError, r"^dq must be a torch\.Tensor; got str"),
    "dq-shape": ("dq", lambda a: torch.empty_like(a["k"]), ValueError,
                 r"^dq has shape \(2, 9, 2, 128\); it must match q \(2, 7, 4, 128\)"),
    "dk-dtype": ("dk", lambda a: torch.empty_like(a["k"], dtype=torch.float16), TypeError,
                 r"^dk has dtype torch\.float16; it must match k"),
    "dv-expanded": ("dv", lambda a: torch.empty(2, 1, 2, D, dtype=BF16).expand(2, 9, 2, D),
                    ValueError, r"^dv has elements that share memory"),
    "dk-aliases-k": ("dk", lambda a: a["k"], ValueError, r"^dk overlaps the memory of k"),
    "dq-aliases-dout": ("dq", lambda a: a["dout"], ValueError,
                        r"^dq overlaps the memory of dout"),
    "dv-layout": ("dv", lambda a: torch.empty(2, 9, 2, D + 1, dtype=BF16)[..., :D], ValueError,
                  r"^dv has strides"),
}


def _valid_args() -> dict:
    dout, q, k, v, out, lse = inputs()
    return dict(dout=dout, q=q, k=k, v=v, out=out, lse=lse)


def _call(args: dict):
    args = dict(args)
    positional = [args.pop(name) for name in ("dout", "q", "k", "v", "out", "lse")]
    return fa_cute.backward(*positional, **args)


@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_argument_is_named(backward_c, case: str) -> None:
    name, value, error, pattern = BAD_ARGUMENTS[case]
    with pytest.raises(error, match=pattern):
        _call(_bad(_valid_args(), name, value))
    assert backward_c == []


def test_buffers_may_not_overlap_each_other(backward_c) -> None:
    args = _valid_args()
    grads = torch.empty(2, 9, 2, D, dtype=BF16)
    with pytest.raises(ValueError, match=r"^dv overlaps the memory of dk"):
        _call(dict(args, dk=grads, dv=grads))


def test_unsupported_head_dim_is_named(backward_c) -> None:
    dout, q, k, v, out, lse = inputs(head_dim=96)
    with pytest.raises(ValueError, match=r"^headdim of q \(96\) has no backward kernel "
                                         r"\(head_dim 96 has no backward config; built: 64, "
                                         r"128\); .*scaled_dot_product_attention"):
        fa_cute.backward(dout, q, k, v, out, lse)


def test_no_backward_in_this_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(_C, "backward", raising=False)
    with pytest.raises(NotImplementedError, match=r"^this build of fa_cute\._C has no backward"):
        fa_cute.backward(*inputs())


def test_device_is_checked_last(monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid call on CPU tensors reaches the device check, which names q."""
    monkeypatch.setattr(_C, "default_backward_config", _default_backward_config, raising=False)
    monkeypatch.setattr(_C, "backward", lambda *args: None, raising=False)
    with pytest.raises(ValueError, match=r"^q is on cpu; fa_cute runs on CUDA tensors only"):
        fa_cute.backward(*inputs())


# The raw backward -------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 7, 9, 4, 2), (1, 9, 4, 4, 1), (2, 1, 17, 8, 2),
                                   (1, 17, 17, 2, 2)],
                         ids=["gqa", "mqa-no-key-rows", "decode", "mha"])
def test_backward_matches_the_reference(backward_c, causal: bool, shape) -> None:
    batch, seqlen_q, seqlen_k, nheads, nheads_k = shape
    dout, q, k, v, out, lse = inputs(*shape, causal=causal)
    got = fa_cute.backward(dout, q, k, v, out, lse, causal=causal)
    assert_grads_close(got, attention_grads_ref(q, k, v, dout, D ** -0.5, causal=causal))
    call = backward_c[-1]
    is_causal = causal and seqlen_k - seqlen_q < seqlen_k - 1
    assert call["is_causal"] == is_causal
    assert call["causal_offset"] == (seqlen_k - seqlen_q if is_causal else 0)
    assert (call["batch"], call["seqlen_q"], call["seqlen_k"], call["nheads"],
            call["nheads_k"], call["head_dim"]) == (batch, seqlen_q, seqlen_k, nheads, nheads_k, D)
    assert call["config"] == "bwd_d128" and call["dtype"] == "bf16"
    if causal and seqlen_q > seqlen_k:
        assert not got[0][:, :seqlen_q - seqlen_k].any()  # rows that see no key


def test_given_buffers_receive_the_gradients(backward_c) -> None:
    dout, q, k, v, out, lse = inputs(scale=0.3)
    # Strided buffers: (batch, nheads, seqlen, headdim) storage viewed as the kernel's layout.
    dq, dk, dv = (torch.empty(t.shape[0], t.shape[2], t.shape[1], D, dtype=BF16).transpose(1, 2)
                  for t in (q, k, v))
    got = fa_cute.backward(dout, q, k, v, out, lse, softmax_scale=0.3, dq=dq, dk=dk, dv=dv)
    assert got[0] is dq and got[1] is dk and got[2] is dv
    assert_grads_close(got, attention_grads_ref(q, k, v, dout, 0.3))
    call = backward_c[-1]
    assert call["dq_strides"] == dq.stride()[:3] and call["dk_strides"] == dk.stride()[:3]
    assert call["softmax_scale"] == 0.3


def test_work_buffers_are_separate_fp32_spans(backward_c, monkeypatch) -> None:
    """dq_accum (batch, nheads, seqlen_q rounded up to 128, d) and softmax_d (batch, nheads,
    seqlen_q), fp32: the kernel writes both, so they may overlap nothing else."""
    spans = []

    def recording(*args, **options):
        spans.append((args, options))

    monkeypatch.setattr(_C, "backward", recording)
    dout, q, k, v, out, lse = inputs()
    fa_cute.backward(dout, q, k, v, out, lse)
    args, options = spans[0]
    assert options == {"softcap": 0.0, "window_left": -1, "window_right": -1}
    dq_accum, softmax_d = args[11], args[12]
    assert softmax_d - dq_accum == 2 * 4 * 128 * D * 4  # bytes of dq_accum: 7 rows padded to 128
    pointers = sorted(args[2:11])
    assert all(not (p <= dq_accum < p + 1) for p in pointers)
    assert args[-2:] == (None, 0)  # device index (None: a CPU tensor here) and stream


def test_merged_partial_attentions(backward_c) -> None:
    """out and LSE merged from two halves of the keys (as a split-KV or ring attention
    holds them) give the gradients of the whole: the kernel only reads them."""
    dout, q, k, v, _, _ = inputs(seqlen_k=16)
    halves = [attention_ref(q, k[:, s], v[:, s], D ** -0.5, return_lse=True)
              for s in (slice(0, 8), slice(8, 16))]
    lse = torch.logaddexp(halves[0][1], halves[1][1])
    out = sum(o * torch.exp(l - lse).transpose(1, 2)[..., None] for o, l in halves)
    got = fa_cute.backward(dout, q, k, v, out.to(BF16), lse.float())
    assert_grads_close(got, attention_grads_ref(q, k, v, dout, D ** -0.5))


def test_empty_problem_launches_nothing(backward_c) -> None:
    dout, q, k, v, out, lse = inputs(batch=0)
    dq, dk, dv = fa_cute.backward(dout, q, k, v, out, lse)
    assert dq.shape == q.shape and dk.shape == k.shape and backward_c == []


# Gradients through forward and sdpa ---------------------------------------------------------------

def leaves(*shape, grads=(True, True, True)):
    q = randn(shape[0], shape[1], shape[3], D)
    k, v = (randn(shape[0], shape[2], shape[4], D) for _ in range(2))
    return [t.requires_grad_(g) for t, g in zip((q, k, v), grads)]


def reference_grads(q, k, v, dout, causal, causal_offset=None):
    return attention_grads_ref(q, k, v, dout, D ** -0.5, causal=causal,
                               causal_offset=causal_offset)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 7, 9, 4, 2), (1, 9, 4, 4, 1), (2, 1, 17, 8, 2)],
                         ids=["gqa", "mqa-no-key-rows", "decode-gqa"])
def test_forward_records_gradients(kernels, causal: bool, shape) -> None:
    q, k, v = leaves(*shape)
    out = fa_cute.forward(q, k, v, causal=causal)
    assert out.grad_fn is not None
    dout = randn(*out.shape)
    out.backward(dout)
    assert_grads_close((q.grad, k.grad, v.grad), reference_grads(q, k, v, dout, causal))
    assert len(kernels) == 1


@pytest.mark.parametrize("opts", [dict(window_size=(3, 1)), dict(causal=True, window_size=(4, 0)),
                                  dict(softcap=2.0), dict(causal=True, window_size=(2, 0), softcap=3.0)],
                         ids=["window", "window-causal", "softcap", "both"])
def test_forward_records_window_and_softcap_gradients(kernels, opts) -> None:
    """The forward's window and softcap reach the backward kernel (bottom-right aligned, with
    causal or not), and the gradients are those of the capped, windowed attention."""
    q, k, v = leaves(2, 7, 9, 4, 2)
    out = fa_cute.forward(q, k, v, **opts)
    dout = randn(*out.shape)
    out.backward(dout)
    ref = attention_grads_ref(q, k, v, dout, D ** -0.5, **opts)
    assert_grads_close((q.grad, k.grad, v.grad), ref)
    call = kernels[-1]
    left, right = opts.get("window_size", (-1, -1))
    assert (call["softcap"], call["window_left"]) == (opts.get("softcap", 0.0), left)
    assert call["window_right"] == (-1 if opts.get("causal") else right)
    aligned = opts.get("causal") or "window_size" in opts  # bottom-right, with causal or not
    assert call["causal_offset"] == (9 - 7 if aligned else 0)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_gradients_only_for_inputs_that_require_them(kernels, which: int) -> None:
    grads = [i == which for i in range(3)]
    tensors = leaves(2, 7, 9, 4, 2, grads=grads)
    fa_cute.forward(*tensors).float().sum().backward()
    for t, g in zip(tensors, grads):
        assert (t.grad is not None) == g
        if g:
            assert t.grad.shape == t.shape and t.grad.dtype == t.dtype


def test_returned_lse_is_not_differentiable(kernels) -> None:
    q, k, v = leaves(2, 7, 9, 4, 2)
    out, lse = fa_cute.forward(q, k, v, causal=True, return_lse=True)
    assert out.requires_grad and not lse.requires_grad and lse.dtype == torch.float32
    ref_out, ref_lse = attention_ref(q.detach(), k.detach(), v.detach(), D ** -0.5, causal=True,
                                     return_lse=True)
    assert torch.allclose(lse.double(), ref_lse, atol=1e-4)
    out.float().square().sum().backward()
    dout = 2 * out.detach().float()
    assert_grads_close((q.grad, k.grad, v.grad), reference_grads(q, k, v, dout.to(BF16), True))


def test_loss_of_a_sum_gets_an_expanded_dout(kernels) -> None:
    """out.sum()'s gradient is an expanded tensor (stride 0): passed on as a contiguous copy."""
    q, k, v = leaves(2, 7, 9, 4, 2)
    fa_cute.forward(q, k, v).sum().backward()
    assert kernels[-1]["do_strides"] == (7 * 4 * D, 4 * D, D)
    ones = torch.ones(2, 7, 4, D, dtype=BF16)
    assert_grads_close((q.grad, k.grad, v.grad), reference_grads(q, k, v, ones, False))


def test_sdpa_layout_inputs_pass_their_strides(kernels) -> None:
    """(batch, nheads, seqlen, headdim) storage viewed with .transpose(1, 2): no copies,
    gradients laid out like the inputs."""
    q, k, v = (randn(2, h, n, D).transpose(1, 2).requires_grad_()
               for h, n in ((4, 7), (2, 9), (2, 9)))
    out = fa_cute.forward(q, k, v, causal=True)
    dout = randn(*out.shape)
    out.backward(dout)
    call = kernels[-1]
    assert call["q_strides"] == q.stride()[:3] and call["k_strides"] == k.stride()[:3]
    assert call["o_strides"] == out.stride()[:3]
    assert q.grad.stride() == q.stride() and k.grad.stride() == k.stride()
    assert_grads_close((q.grad, k.grad, v.grad), reference_grads(q, k, v, dout, True))


@pytest.mark.parametrize("heads_inner", [False, True])
def test_sdpa_output_keeps_the_query_layout(kernels, heads_inner: bool) -> None:
    """A query viewed from (batch, seqlen, heads, d) gets an output stored so, as PyTorch's
    FLASH and cuDNN backends give it: the model's transpose back is a view, not a copy."""
    query = randn(2, 9, 4, D).transpose(1, 2) if heads_inner else randn(2, 4, 9, D)
    query.requires_grad_()
    key, value = (randn(2, 4, 5, D).requires_grad_() for _ in range(2))
    out = fa_cute.sdpa(query, key, value)
    assert out.shape == (2, 4, 9, D)
    assert out.transpose(1, 2).is_contiguous() == heads_inner
    assert out.is_contiguous() != heads_inner
    model_out = out.transpose(1, 2).reshape(2, 9, 4 * D)  # a view where heads are inner
    assert (model_out.data_ptr() == out.data_ptr()) == heads_inner
    dout = randn(2, 9, 4 * D)
    model_out.backward(dout)
    assert kernels[-1]["o_strides"] == out.transpose(1, 2).stride()[:3]
    assert query.grad.stride() == query.stride()
    ref = reference_grads(*(t.transpose(1, 2) for t in (query, key, value)),
                          dout.view(2, 9, 4, D), False)
    assert_grads_close((query.grad, key.grad, value.grad), [g.transpose(1, 2) for g in ref])


@pytest.mark.parametrize("api", ["forward", "sdpa-heads-inner", "sdpa-contiguous"])
def test_repeated_call_takes_the_recorded_plan(kernels, monkeypatch, api: str) -> None:
    """The second fwd+bwd of a shape skips the backward's checks (`_cache.RECORDED_BACKWARD`)
    and reads sdpa's tensors without views: its kernel arguments are the first call's but for
    the addresses, and its gradients the reference's, on fresh inputs each call."""
    _cache.RECORDED_BACKWARD.clear()
    checked = []
    real = _backward.validate_backward
    monkeypatch.setattr(_backward, "validate_backward",
                        lambda *args, **kwargs: checked.append(1) or real(*args, **kwargs))
    calls = []
    for _ in range(2):
        if api == "forward":
            q, k, v = leaves(2, 7, 9, 4, 2)
            out = fa_cute.forward(q, k, v, causal=True)
            dout = randn(2, 7, 4, D)
            ref = reference_grads(q, k, v, dout, True, causal_offset=2)
        else:
            shape = (2, 7, 4, D) if api == "sdpa-heads-inner" else (2, 4, 7, D)
            q = randn(*shape).transpose(1, 2) if api == "sdpa-heads-inner" else randn(*shape)
            k, v = randn(2, 2, 9, D), randn(2, 2, 9, D)
            for t in (q, k, v):
                t.requires_grad_()
            out = fa_cute.sdpa(q, k, v, is_causal=True, enable_gqa=True)
            dout = randn(2, 4, 7, D)
            ref = [g.transpose(1, 2) for g in reference_grads(
                *(t.transpose(1, 2) for t in (q, k, v)), dout.transpose(1, 2), True, causal_offset=0)]
        out.backward(dout)
        assert_grads_close((q.grad, k.grad, v.grad), ref)
        assert q.grad.stride() == q.stride() and k.grad.stride() == k.stride()
        calls.append(kernels[-1])
    assert len(checked) == 1 and len(_cache.RECORDED_BACKWARD) == 1
    addresses = {"dout", "q", "k", "v", "out", "lse", "dq", "dk", "dv", "dq_accum", "softmax_d"}
    assert {n: a for n, a in calls[0].items() if n not in addresses} == \
        {n: a for n, a in calls[1].items() if n not in addresses}


@pytest.mark.parametrize("layout", ["heads-inner", "contiguous"])
@pytest.mark.parametrize("hooked_first", [True, False])
def test_recorded_plan_follows_saved_tensor_hooks(kernels, layout: str, hooked_first: bool) -> None:
    """Two sdpa calls of one shape, one under a saved-tensor hook that repacks q, k and v
    into contiguous buffers (as torch.autograd.graph.save_on_cpu does), in either order: the
    backward reads each call's saved tensors with their own strides (a plan made for the
    other layout takes the full checks), and dout in a new layout on the second call."""
    _cache.RECORDED_BACKWARD.clear()
    for call, hooked in enumerate((hooked_first, not hooked_first)):
        if layout == "heads-inner":
            q, k, v = (randn(2, 7, 4, D).transpose(1, 2).requires_grad_() for _ in range(3))
        else:
            q, k, v = (randn(2, 4, 7, D).requires_grad_() for _ in range(3))
        if hooked:
            with torch.autograd.graph.saved_tensors_hooks(lambda t: t.contiguous(), lambda t: t):
                out = fa_cute.sdpa(q, k, v, is_causal=True)
        else:
            out = fa_cute.sdpa(q, k, v, is_causal=True)
        dout = randn(2, 4, 7, D) if call == 0 else randn(2, 7, 4, D).transpose(1, 2)
        out.backward(dout)
        ref = reference_grads(*(t.detach().transpose(1, 2) for t in (q, k, v)),
                              dout.transpose(1, 2), True, causal_offset=0)
        assert_grads_close((q.grad, k.grad, v.grad), [g.transpose(1, 2) for g in ref])
        assert kernels[-1]["do_strides"] == (dout.stride(0), dout.stride(2), dout.stride(1))


class _Saved(torch.Tensor):
    """A tensor subclass, as a saved-tensor hook may hand one back: no key of `_cache.tensors_key`."""


def test_hooked_calls_without_a_key_never_share_a_plan(kernels) -> None:
    """Two sdpa calls of one shape and layout, each under a hook that hands back a tensor
    subclass (which `_cache.tensors_key` does not key), the first repacking q, k and v into
    contiguous buffers: the second call's saved tensors, in the caller's heads-inner layout,
    are not read through the plan made for the first call's (a key that cannot be made
    matches no plan), and both calls get the reference's gradients."""
    _cache.RECORDED_BACKWARD.clear()
    for repack in (True, False):
        q, k, v = (randn(2, 7, 4, D).transpose(1, 2).requires_grad_() for _ in range(3))
        pack = (lambda t: t.contiguous().as_subclass(_Saved)) if repack else (lambda t: t.as_subclass(_Saved))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fa_cute.sdpa(q, k, v, is_causal=True)
        dout = randn(2, 4, 7, D)
        out.backward(dout)
        ref = reference_grads(*(t.detach().transpose(1, 2) for t in (q, k, v)),
                              dout.transpose(1, 2), True, causal_offset=0)
        assert_grads_close((q.grad, k.grad, v.grad), [g.transpose(1, 2) for g in ref])
        assert kernels[-1]["q_strides"] == ((q.stride(0), q.stride(2), q.stride(1)) if not repack else
                                            (4 * 7 * D, D, 7 * D))


def test_planned_call_reads_a_negated_dout_negated(kernels) -> None:
    """A negated view as dout (`_neg_view`, whose memory holds the un-negated values) on the
    second call of a shape, the one that takes the recorded plan: the gradients of the
    negated values, as on the first call (the full checks)."""
    _cache.RECORDED_BACKWARD.clear()
    for _ in range(2):
        q, k, v = leaves(2, 7, 9, 4, 2)
        out = fa_cute.forward(q, k, v, causal=True)
        g = randn(2, 7, 4, D)
        out.backward(g._neg_view())
        assert_grads_close((q.grad, k.grad, v.grad),
                           reference_grads(q, k, v, -g, True, causal_offset=2))
    assert len(_cache.RECORDED_BACKWARD) == 1


def test_planned_call_checks_what_a_hook_hands_over(kernels) -> None:
    """After a plan for a shape exists: saved tensors that a hook hands back in another dtype
    (fp16 bits of the bf16 values) and a k whose storage was freed between the forward and
    the backward each go to the full checks, which refuse them by name, instead of a launch
    that reads the wrong type or freed memory."""
    _cache.RECORDED_BACKWARD.clear()
    q, k, v = leaves(2, 7, 9, 4, 2)
    fa_cute.forward(q, k, v).backward(randn(2, 7, 4, D))
    assert len(_cache.RECORDED_BACKWARD) == 1
    launches = len(kernels)
    q, k, v = leaves(2, 7, 9, 4, 2)
    retyped = (lambda t: t, lambda t: t.view(torch.float16) if t.dtype == BF16 else t)
    with torch.autograd.graph.saved_tensors_hooks(*retyped):
        out = fa_cute.forward(q, k, v)
    with pytest.raises((TypeError, ValueError), match="dtype|float16"):
        out.backward(randn(2, 7, 4, D))
    q, k, v = leaves(2, 7, 9, 4, 2)
    k_used = k * 1  # a tensor of its own storage, saved by the forward
    out = fa_cute.forward(q, k_used, v)
    k_used.untyped_storage().resize_(0)
    with pytest.raises(ValueError, match="k "):
        out.backward(randn(2, 7, 4, D))
    assert len(kernels) == launches


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointed_calls_take_their_gradients(kernels, use_reentrant: bool) -> None:
    """torch.utils.checkpoint around sdpa (the non-reentrant form recomputes through
    saved-tensor hooks, the reentrant one re-runs the forward under grad): three calls of
    one shape, each with the reference's gradients, whether or not a plan exists."""
    from torch.utils.checkpoint import checkpoint
    _cache.RECORDED_BACKWARD.clear()
    for _ in range(3):
        q, k, v = (randn(2, 4, 7, D).requires_grad_() for _ in range(3))
        out = checkpoint(lambda a, b, c: fa_cute.sdpa(a, b, c, is_causal=True), q, k, v,
                         use_reentrant=use_reentrant)
        dout = randn(2, 4, 7, D)
        out.backward(dout)
        ref = reference_grads(*(t.detach().transpose(1, 2) for t in (q, k, v, dout)), True,
                              causal_offset=0)
        assert_grads_close((q.grad, k.grad, v.grad), [g.transpose(1, 2) for g in ref])


@pytest.mark.parametrize("api", ["backward", "autograd"])
def test_no_query_heads_give_zero_key_gradients(kernels, api: str) -> None:
    """nheads = 0 next to nheads_k = 2 (which the shape checks allow: 0 is a multiple of any
    count): nothing is launched, and dk and dv are 0, not the uninitialised memory they were
    allocated with."""
    q, k, v = leaves(2, 7, 9, 0, 2)
    if api == "backward":
        dout, out = randn(2, 7, 0, D), randn(2, 7, 0, D)
        _, dk, dv = fa_cute.backward(dout, q.detach(), k.detach(), v.detach(), out,
                                     torch.zeros(2, 0, 7))
    else:
        fa_cute.forward(q, k, v).backward(randn(2, 7, 0, D))
        dk, dv = k.grad, v.grad
    assert dk.shape == k.shape and not dk.any() and not dv.any()


def test_second_order_gradients_raise(kernels) -> None:
    """create_graph=True: the first gradients come back, and a backward through them raises
    rather than dropping attention's second-order term in silence."""
    q, k, v = leaves(2, 7, 9, 4, 2)
    out = fa_cute.forward(q, k, v)
    (dq,) = torch.autograd.grad(out.float().square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|not differentiable|twice"):
        dq.float().sum().backward()


def test_recorded_plan_work_buffer(kernels) -> None:
    """The recorded path's work buffer: softmax_d right after dq_accum's fp32 elements (batch
    x nheads x dq_accum_rows(seqlen_q) x head_dim), for a batch of 1 (size-1 dims have
    stride 0 as launched)."""
    _cache.RECORDED_BACKWARD.clear()
    for _ in range(2):
        q, k, v, dout = (randn(1, 4, 7, D) for _ in range(4))
        for t in (q, k, v):
            t.requires_grad_()
        fa_cute.sdpa(q, k, v).backward(dout)
        call = kernels[-1]
        accum = 4 * _backward.dq_accum_rows(7) * D
        assert call["softmax_d"] - call["dq_accum"] == 4 * accum
        assert call["q_strides"][0] == 0 and call["dq_strides"][0] == 0
        ref = reference_grads(*(t.detach().transpose(1, 2) for t in (q, k, v, dout)), False)
        assert_grads_close((q.grad, k.grad, v.grad), [g.transpose(1, 2) for g in ref])
    assert len(_cache.RECORDED_BACKWARD) == 1


@pytest.mark.parametrize("heads_inner", [False, True])
def test_activate_backward_grads(backward_c, heads_inner: bool) -> None:
    """activate()'s backward (`_sdpa_backend.backward_grads`) on (batch, nheads, seqlen,
    headdim) tensors, heads inner in memory or not: the reference's top-left causal
    gradients, each laid out like its input, through the kernel's contract (the stand-in
    reads every tensor by address and the strides passed)."""
    from fa_cute import _sdpa_backend

    def bhnd(seqlen):
        t = randn(2, seqlen, 4, D).transpose(1, 2) if heads_inner else randn(2, 4, seqlen, D)
        return t

    query, key, value, dout = bhnd(7), bhnd(9), bhnd(9), bhnd(7)
    views = [t.transpose(1, 2) for t in (query, key, value)]
    out, lse = attention_ref(*views, D ** -0.5, causal=True, causal_offset=0, return_lse=True)
    out = out.to(BF16).transpose(1, 2)
    out = out.contiguous() if not heads_inner else out.transpose(1, 2).contiguous().transpose(1, 2)
    grads = _sdpa_backend.backward_grads(dout, query, key, value, out, lse.float(), True, None)
    ref = reference_grads(*views, dout.transpose(1, 2), True, causal_offset=0)
    assert_grads_close(grads, [g.transpose(1, 2) for g in ref])
    assert [g.stride() for g in grads] == [t.stride() for t in (query, key, value)]
    assert backward_c[-1]["do_strides"] == (dout.stride(0), dout.stride(2), dout.stride(1))


@pytest.mark.parametrize("is_causal", [False, True])
def test_sdpa_records_gradients_top_left(kernels, is_causal: bool) -> None:
    query = randn(2, 4, 9, D).requires_grad_()
    key, value = (randn(2, 2, 5, D).requires_grad_() for _ in range(2))
    out = fa_cute.sdpa(query, key, value, is_causal=is_causal, enable_gqa=True)
    assert out.is_contiguous() and out.shape == (2, 4, 9, D)
    dout = randn(2, 4, 9, D)
    out.backward(dout)
    call = kernels[-1]
    assert call["is_causal"] == is_causal and call["causal_offset"] == 0
    assert call["seqlen_q"] == 9 and call["seqlen_k"] == 5 and call["nheads"] == 4
    ref = reference_grads(*(t.transpose(1, 2) for t in (query, key, value)),
                          dout.transpose(1, 2), is_causal, 0 if is_causal else None)
    assert_grads_close((query.grad, key.grad, value.grad),
                       tuple(g.transpose(1, 2) for g in ref))
    assert query.grad.shape == query.shape and key.grad.shape == key.shape


def test_sdpa_matches_torch_sdpa_gradients(kernels) -> None:
    """Against torch's own SDPA in float64 (is_causal top-left, enable_gqa)."""
    query = randn(1, 4, 6, D).requires_grad_()
    key, value = (randn(1, 2, 6, D).requires_grad_() for _ in range(2))
    fa_cute.sdpa(query, key, value, is_causal=True, enable_gqa=True).float().sum().backward()
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (query, key, value))
    torch.nn.functional.scaled_dot_product_attention(q64, k64, v64, is_causal=True,
                                                     enable_gqa=True).sum().backward()
    assert_grads_close((query.grad, key.grad, value.grad), (q64.grad, k64.grad, v64.grad))


def test_out_is_refused_with_grad(kernels) -> None:
    q, k, v = leaves(2, 7, 9, 4, 2)
    with pytest.raises(ValueError, match=r"^out must be None when q, k or v requires grad"):
        fa_cute.forward(q, k, v, out=torch.empty_like(q))
    with torch.no_grad():
        fa_cute.forward(q, k, v, out=torch.empty_like(q))


@pytest.mark.parametrize("api", ["forward", "sdpa"])
def test_unsupported_head_dim_fails_before_the_forward(backward_c, api: str,
                                                       monkeypatch) -> None:
    """head dim 96 (a forward config may exist for it): refused when grad is required,
    before any kernel runs, naming the head dim; without grad mode it is the forward's."""
    launched = []
    monkeypatch.setattr(_api, "launch_kernel", lambda *args, **kwargs: launched.append(args))
    q, k, v = randn(2, 7, 4, 96), randn(2, 9, 2, 96), randn(2, 9, 2, 96)
    v.requires_grad_()
    names = ("q", "v") if api == "forward" else ("query", "value")

    def call():
        if api == "forward":
            return fa_cute.forward(q, k, v)
        return fa_cute.sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                            enable_gqa=True)

    with pytest.raises(ValueError, match=rf"^headdim of {names[0]} \(96\) has no backward "
                                         r"kernel .*torch\.no_grad\(\)"):
        call()
    with torch.no_grad(), pytest.raises(ValueError, match=r"headdim .*\(96\) is not supported"):
        call()
    assert launched == [] and backward_c == []


def test_grad_mode_off_takes_the_forward_path(kernels, monkeypatch) -> None:
    """No gradients recorded: no autograd.Function, no LSE."""
    launches = []
    real = _api.launch_kernel
    monkeypatch.setattr(_api, "launch_kernel",
                        lambda launch, q, k, v, out, lse, timed: launches.append(lse) or
                        real(launch, q, k, v, out, lse, timed))
    q, k, v = leaves(2, 7, 9, 4, 2)
    with torch.no_grad():
        out = fa_cute.forward(q, k, v)
    assert out.grad_fn is None and launches == [None]


def test_two_layer_toy_model_trains(kernels) -> None:
    """A few SGD steps through two attention layers: the loss falls as the same model's on
    torch SDPA (float64 stand-ins on both sides, so the losses agree closely)."""
    def run(attention) -> List[float]:
        torch.manual_seed(1)
        model = ToyModel(attention, 256, dtype=BF16)
        x, target = torch.randn(2, 16, 256), torch.randn(2, 16, 256)
        return training_losses(model, x, target, torch.optim.SGD(model.parameters(), lr=0.5),
                               steps=4)

    ours = run(lambda q, k, v: fa_cute.sdpa(q, k, v, is_causal=True))
    theirs = run(lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True))
    check_training_matches(ours, theirs, rel_tol=2e-2)


# torch.compile ------------------------------------------------------------------------------------

def compiled(fn):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


@needs_ops
@pytest.mark.parametrize("api", ["forward", "forward-lse", "sdpa"])
def test_compiled_training_step_matches_eager(kernels, api: str) -> None:
    def step(q, k, v):
        if api == "sdpa":
            out = fa_cute.sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                               is_causal=True, enable_gqa=True).transpose(1, 2)
        elif api == "forward-lse":
            out, lse = fa_cute.forward(q, k, v, causal=True, return_lse=True)
            return out.float().square().sum() + lse.sum()
        else:
            out = fa_cute.forward(q, k, v, causal=True)
        return out.float().square().sum()

    eager = leaves(2, 7, 9, 4, 2)
    step(*eager).backward()
    got = [t.detach().clone().requires_grad_() for t in eager]
    loss = compiled(step)(*got)
    loss.backward()
    for a, b in zip(eager, got):
        assert torch.equal(a.grad, b.grad)


@needs_ops
def test_compiled_public_backward(kernels) -> None:
    dout, q, k, v, out, lse = inputs()
    dq = torch.empty_like(q)
    got = compiled(lambda *args: fa_cute.backward(*args, causal=True, dq=dq))(
        dout, q, k, v, out, lse)
    eager = fa_cute.backward(dout, q, k, v, out, lse, causal=True)
    assert torch.equal(dq, eager[0]) and torch.equal(got[1], eager[1])


@needs_ops
def test_compiled_out_with_grad_is_refused(kernels) -> None:
    q, k, v = leaves(2, 7, 9, 4, 2)
    with pytest.raises(Exception, match=r"out must be None when q, k or v requires grad"):
        compiled(lambda q, k, v, o: fa_cute.forward(q, k, v, out=o))(q, k, v,
                                                                     torch.empty_like(q))


@needs_ops
@pytest.mark.parametrize("causal, bottom_right", [(False, True), (True, True), (True, False)])
def test_opcheck_backward(kernels, causal: bool, bottom_right: bool) -> None:
    dout, q, k, v, out, lse = inputs(causal=causal)
    torch.library.opcheck(torch.ops.fa_cute.backward.default,
                          (dout, q, k, v, out, lse, causal, None, False, bottom_right),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


@needs_ops
def test_opcheck_forward_with_autograd(kernels) -> None:
    """The registered autograd of fa_cute::forward and fa_cute::sdpa, through opcheck's
    AOT dispatch with inputs that require grad."""
    q, k, v = leaves(2, 7, 9, 4, 2)
    torch.library.opcheck(torch.ops.fa_cute.forward.default, (q, k, v, True, None, True, None),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor", "test_aot_dispatch_dynamic"))
    tensors = tuple(t.transpose(1, 2) for t in (q, k, v))
    torch.library.opcheck(torch.ops.fa_cute.sdpa.default, (*tensors, False, None, True),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor", "test_aot_dispatch_dynamic"))


@needs_ops
def test_op_called_without_lse_says_so(kernels) -> None:
    q, k, v = leaves(2, 7, 9, 4, 2)
    out, _ = torch.ops.fa_cute.forward(q, k, v, False, None, False, None)
    with pytest.raises(RuntimeError, match=r"needs the forward's LSE: .*return_lse=False"):
        out.float().sum().backward()


def test_backward_config_takes_the_tuned_winner(monkeypatch):
    """With a winner that `python -m fa_cute.tune --bwd` cached for the shape, the backward
    runs it where it fits the GPU; a winner this GPU cannot run, or none, gives the
    default. (A stand-in CUDA tensor: only the attributes backward_config reads.)"""
    tuned = {"name": "bwd_tuned", "head_dim": 128, "dtypes": ["bf16"], "family": "sm80",
             "smem_bytes": 64 << 10}
    monkeypatch.setattr(_backward, "has_backward", lambda: True)
    monkeypatch.setattr(_backward, "BACKWARD_CONFIGS", {"bwd_tuned": tuned})
    monkeypatch.setattr(_backward, "gpu_of", lambda index: ("Some GPU", (9, 0)))
    monkeypatch.setattr(_backward, "smem_limit_of", lambda index: 227 << 10)
    monkeypatch.setattr(_C, "default_backward_config", lambda d, major, minor: "default",
                        raising=False)
    entries = {_tuning.backward_key("bf16", 128, True, 4096): "bwd_tuned"}
    monkeypatch.setattr(_tuning, "cached_configs", lambda gpu: entries)
    q = SimpleNamespace(shape=(1, 4096, 8, 128), is_cuda=True, device=SimpleNamespace(index=0),
                        dtype=torch.bfloat16)
    assert _backward.backward_config(q, causal=True, seqlen_q=4096) == "bwd_tuned"
    assert _backward.backward_config(q, causal=False, seqlen_q=4096) == "default"
    assert _backward.backward_config(q) == "default"
    monkeypatch.setattr(_backward, "smem_limit_of", lambda index: 48 << 10)
    assert _backward.backward_config(q, causal=True, seqlen_q=4096) == "default"


# deterministic=True ----------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_deterministic_passes_the_counters(backward_c, causal: bool) -> None:
    """deterministic=True: the same gradients, and `_C.backward` gets the int32 counters
    (batch, nheads, ceil(seqlen_q / block_m)) right after softmax_d in the one work
    allocation; without it, no counters (dq_semaphore 0)."""
    dout, q, k, v, out, lse = inputs(batch=2, seqlen_q=130, seqlen_k=9, nheads=4, nheads_k=2,
                                     causal=causal)
    ref = attention_grads_ref(q, k, v, dout, D ** -0.5, causal=causal)
    assert_grads_close(fa_cute.backward(dout, q, k, v, out, lse, causal=causal), ref)
    assert backward_c[-1]["dq_semaphore"] == 0
    got = fa_cute.backward(dout, q, k, v, out, lse, causal=causal, deterministic=True)
    assert_grads_close(got, ref)
    call = backward_c[-1]
    rows = 2 * 4 * 130
    assert call["softmax_d"] - call["dq_accum"] == 2 * 4 * 256 * D * 4  # 130 rows padded to 256
    assert call["dq_semaphore"] == call["softmax_d"] + rows * 4
    assert call["dq_semaphore"] % 4 == 0


def test_work_buffers_sizes(backward_c) -> None:
    """backward_work_buffers: dq_accum, softmax_d and (deterministic) the counters, views of
    one allocation in that order; the counters sized by the config's block_m."""
    dout, q, k, v, out, lse = inputs(batch=2, seqlen_q=130, seqlen_k=9, nheads=4, nheads_k=2)
    launch = _backward.validate_backward(dout, q, k, v, out, lse, causal=False,
                                         bottom_right=True, softmax_scale=None,
                                         deterministic=True, dq=None, dk=None, dv=None)
    assert _backward.dq_semaphore_count(launch.config, 2, 4, 130) == 2 * 4 * 3
    dq_accum, softmax_d, sem = _backward.backward_work_buffers(launch, q.device, True)
    assert dq_accum.dtype == softmax_d.dtype == torch.float32 and sem.dtype == torch.int32
    assert (dq_accum.numel(), softmax_d.numel(), sem.numel()) == (2 * 4 * 256 * D, 2 * 4 * 130,
                                                                   2 * 4 * 3)
    assert _backward.dq_accum_rows(130) == 256 and _backward.dq_accum_rows(128) == 128
    assert dq_accum.untyped_storage().data_ptr() == sem.untyped_storage().data_ptr()
    assert softmax_d.data_ptr() == dq_accum.data_ptr() + dq_accum.numel() * 4
    assert sem.data_ptr() == softmax_d.data_ptr() + softmax_d.numel() * 4
    assert _backward.semaphore_arg(sem) == {"dq_semaphore": sem.data_ptr()}
    dq_accum, softmax_d, sem = _backward.backward_work_buffers(launch, q.device, False)
    assert sem is None and _backward.semaphore_arg(sem) == {}
    assert dq_accum.untyped_storage().nbytes() == 2 * 4 * (256 * D + 130) * 4


def test_deterministic_must_be_a_bool(backward_c) -> None:
    with pytest.raises(TypeError, match=r"^deterministic must be True or False; got int"):
        fa_cute.backward(*inputs(), deterministic=1)
    assert backward_c == []


@needs_ops
def test_backward_op_passes_deterministic_on(backward_c) -> None:
    """The op fa_cute::backward (torch.compile's path of fa_cute.backward) hands its
    deterministic argument to the launch."""
    dout, q, k, v, out, lse = inputs(causal=True)
    for deterministic in (False, True):
        torch.ops.fa_cute.backward(dout, q, k, v, out, lse, True, None, deterministic, True)
        assert (backward_c[-1]["dq_semaphore"] != 0) == deterministic


def test_deterministic_takes_a_family_that_has_it(backward_c, monkeypatch) -> None:
    """Where the pick is a config of a family without a deterministic mode (a made-up one
    here: both built families have it), deterministic=True runs the sm80 config of the head
    dim (the default for compute capability 8.0); naming such a config with
    deterministic=True is refused."""
    assert "sm_future" not in _backward.DETERMINISTIC_FAMILIES
    monkeypatch.setitem(_backward.BACKWARD_CONFIGS, "bwd_hopper_d128",
                        dict(name="bwd_hopper_d128", family="sm_future", head_dim=D, block_m=64,
                             block_n=128, dtypes=["bf16", "fp16"]))
    monkeypatch.setattr(_backward, "backward_config", lambda *a, **k: "bwd_hopper_d128")
    dout, q, k, v, out, lse = inputs()
    launch = _backward.validate_backward(dout, q, k, v, out, lse, causal=False,
                                         bottom_right=True, softmax_scale=None,
                                         deterministic=False, dq=None, dk=None, dv=None)
    assert launch.config == "bwd_hopper_d128"
    launch = _backward.validate_backward(dout, q, k, v, out, lse, causal=False,
                                         bottom_right=True, softmax_scale=None,
                                         deterministic=True, dq=None, dk=None, dv=None)
    assert launch.config == "bwd_d128"
    if "config" in _backward.validate_backward.__code__.co_varnames:
        with pytest.raises(ValueError, match=r"^config 'bwd_hopper_d128' has no deterministic"):
            _backward.validate_backward(dout, q, k, v, out, lse, causal=False, bottom_right=True,
                                        softmax_scale=None, deterministic=True, dq=None,
                                        dk=None, dv=None, config="bwd_hopper_d128")


def test_bench_deterministic_option(capsys) -> None:
    """`python -m fa_cute.bench --bwd --deterministic`: fa_cute's column runs the
    deterministic backward; without --bwd the option is refused."""
    from fa_cute import bench
    assert bench.parse_args(["--bwd", "--deterministic"]).deterministic
    assert not bench.parse_args(["--bwd"]).deterministic
    with pytest.raises(SystemExit):
        bench.parse_args(["--deterministic"])
    assert "add --bwd" in capsys.readouterr().err
