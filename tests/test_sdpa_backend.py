"""fa_cute as PyTorch's flash SDPA kernel (`fa_cute.activate`).

On CPU the dispatcher mechanics run for real on the CPU key: a stand-in for PyTorch's own
kernels (float64 attention, registered for CPU, which has none of these ops) is the
"previous kernel", and fa_cute's side (`forward_lse`, `backward_grads`) is replaced by
recording float64 versions. So routing, fallback, the op's outputs, autograd through aten's
derivative formula and restoring are checked without a GPU. The GPU tests (skipped without
CUDA) run F.scaled_dot_product_attention under the flash backend against fa_cute.sdpa,
float64 and PyTorch's kernel.
"""

import contextlib
import math
import warnings
from typing import Dict, List

import pytest
import torch
import torch.nn.functional as F

import fa_cute
from fa_cute import _C, _sdpa_backend
from fa_cute._backward import BACKWARD_CONFIGS, has_backward
from fa_cute._configs import CONFIGS, PLACEHOLDER_CC
from fa_cute._sdpa_backend import (BACKWARD_OP, CALLS, FORWARD_OP, backward_refusal,
                                   forward_refusal)

BF16 = torch.bfloat16


def _placeholder_backward() -> bool:
    """Whether this build has a d=128 backward for the placeholder GPU that CPU tensors are
    checked against (compute capability 8.0: the sm80 family): a build of a config list
    without an sm80 d=128 backward (FA_CUTE_CONFIGS=...) has none, and refuses these
    tensors' backward by head dim."""
    if not has_backward():
        return False
    try:
        _C.default_backward_config(128, *PLACEHOLDER_CC)
    except ValueError:
        return False
    return True


needs_placeholder_backward = pytest.mark.skipif(
    not _placeholder_backward(), reason="no d=128 backward for the placeholder GPU (compute capability "
    "8.0) in this build: its FA_CUTE_CONFIGS list has no sm80 d=128 backward")
flash_sdpa = torch.ops.aten._scaled_dot_product_flash_attention.default


def _attention64(q, k, v, is_causal, scale):
    """float64 attention in SDPA's layout, top-left causal: (out, lse)."""
    q, k, v = (t.double() for t in (q, k, v))
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ k.transpose(-1, -2) * scale
    if is_causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1), -math.inf)
    lse = s.logsumexp(-1)
    return (s - lse[..., None]).exp() @ v, lse


def _grads64(dout, q, k, v, is_causal, scale):
    """(dq, dk, dv) of `_attention64` in closed form: the stand-in kernels run below
    autograd, where nothing they compute is recorded."""
    dout, q, k, v = (t.detach().double() for t in (dout, q, k, v))
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    out, lse = _attention64(q, k, v, is_causal, scale)
    s = q @ k.transpose(-1, -2) * scale
    if is_causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1), -math.inf)
    p = (s - lse[..., None]).exp()
    ds = p * (dout @ v.transpose(-1, -2) - (dout * out).sum(-1, keepdim=True))
    return ds @ k * scale, ds.transpose(-1, -2) @ q * scale, p.transpose(-1, -2) @ dout


@pytest.fixture
def torch_kernels():
    """A stand-in for PyTorch's CPU kernels of the two ops, counting its calls."""
    calls: Dict[str, int] = {"forward": 0, "backward": 0}

    def forward(q, k, v, dropout_p=0.0, is_causal=False, return_debug_mask=False, *,
                scale=None):
        calls["forward"] += 1
        out, lse = _attention64(q, k, v, is_causal, scale)
        empty = torch.empty(0, dtype=torch.uint64)
        return (out.to(q.dtype), lse.float(), None, None, q.shape[2], k.shape[2], empty,
                empty, q.new_empty((0,)))

    def backward(dout, q, k, v, out, lse, cq, ck, mq, mk, dropout_p, is_causal, seed, offset,
                 *, scale=None):
        calls["backward"] += 1
        return tuple(g.to(q.dtype) for g in _grads64(dout, q, k, v, is_causal, scale))

    lib = torch.library.Library("aten", "IMPL")
    lib.impl(FORWARD_OP.split("::")[1], forward, "CPU")
    lib.impl(BACKWARD_OP.split("::")[1], backward, "CPU")
    yield calls
    fa_cute.deactivate()
    lib._destroy()


@pytest.fixture
def fa_cute_side(monkeypatch) -> List[str]:
    """fa_cute's forward and backward (SDPA layout) as float64 on CPU, recording calls."""
    called: List[str] = []

    def forward_lse(q, k, v, is_causal, scale):
        called.append("forward")
        out, lse = _attention64(q, k, v, is_causal, scale)
        return out.to(q.dtype), lse.float()

    def backward_grads(dout, q, k, v, out, lse, is_causal, scale):
        called.append("backward")
        return tuple(g.to(q.dtype) for g in _grads64(dout, q, k, v, is_causal, scale))

    monkeypatch.setattr(_sdpa_backend, "forward_lse", forward_lse)
    monkeypatch.setattr(_sdpa_backend, "backward_grads", backward_grads)
    return called


# Head dims taken from this build, not assumed: which ones have kernels changes with the
# build (the GPU build has forward kernels for 64 and 128, backward ones for 64 to 256).
_FORWARD_DIMS = {c["head_dim"] for c in CONFIGS.values()}
_BACKWARD_DIMS = {c["head_dim"] for c in BACKWARD_CONFIGS.values()}
#: a head dim (a multiple of 8, as PyTorch's flash kernel takes) no fa_cute kernel supports
NO_KERNEL_DIM = next(d for d in (80, 72, 88, 104, 40, 56, 120, 24)
                     if d not in _FORWARD_DIMS | _BACKWARD_DIMS)
#: a head dim PyTorch's flash kernel takes and fa_cute's forward does not (preferring one
#: that has a backward kernel: its backward must fall back all the same)
NO_FORWARD_DIM = next(d for d in sorted(_BACKWARD_DIMS - _FORWARD_DIMS) + [NO_KERNEL_DIM]
                      if d <= 256 and d % 8 == 0)


def _qkv(nq=33, nk=47, d=128, dtype=BF16, requires_grad=True):
    shapes = ((2, 3, nq, d), (2, 3, nk, d), (2, 3, nk, d))
    return tuple(torch.randn(s, dtype=dtype).requires_grad_(requires_grad) for s in shapes)


def test_activate_is_idempotent_and_deactivate_restores():
    assert not fa_cute.is_active()
    had_cuda = torch._C._dispatch_has_kernel_for_dispatch_key(FORWARD_OP, "CUDA")
    fa_cute.activate()
    fa_cute.activate()
    assert fa_cute.is_active()
    assert torch._C._dispatch_has_kernel_for_dispatch_key(FORWARD_OP, "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(BACKWARD_OP, "CUDA")
    fa_cute.deactivate()
    fa_cute.deactivate()
    assert not fa_cute.is_active()
    assert torch._C._dispatch_has_kernel_for_dispatch_key(FORWARD_OP, "CUDA") == had_cuda
    with fa_cute.activated():
        assert fa_cute.is_active()
        with fa_cute.activated():
            pass
        assert fa_cute.is_active()
    assert not fa_cute.is_active()


def test_activation_leaves_cpu_sdpa_alone():
    q, k, v = (t.detach() for t in _qkv(d=64, dtype=torch.float32))
    before = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    with fa_cute.activated():
        after = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.equal(before, after)


@pytest.mark.skipif(not hasattr(torch.nn.attention, "register_flash_attention_impl"),
                    reason="PyTorch has no flash-attention registry")
def test_torch_registry_activates_and_restores():
    attention = torch.nn.attention
    assert "fa_cute" in attention.list_flash_attention_impls()
    attention.activate_flash_attention_impl("fa_cute")
    try:
        assert fa_cute.is_active()
        assert attention.current_flash_attention_impl() == "fa_cute"
    finally:
        attention.restore_flash_attention_impl()
    assert not fa_cute.is_active()


@needs_placeholder_backward
def test_refusals():
    q, k, v = _qkv(requires_grad=False)
    assert forward_refusal(q, k, v, 0.0, False) is None
    assert "dropout" in forward_refusal(q, k, v, 0.1, False)
    assert "debug" in forward_refusal(q, k, v, 0.0, True)
    # causal with seqlen_q != seqlen_k stays PyTorch's (its kernel defines that alignment);
    # square causal is fa_cute's
    assert forward_refusal(k, k, v, 0.0, False, is_causal=True) is None
    assert "alignment" in forward_refusal(q[:, :, :5], k, v, 0.0, False, is_causal=True)
    assert forward_refusal(q[:, :, :5], k, v, 0.0, False) is None
    out = q.clone()
    lse = torch.zeros(q.shape[:3], dtype=torch.float32)
    assert "alignment" in backward_refusal(q[:, :, :5], q[:, :, :5], k, v, out[:, :, :5],
                                           lse[:, :, :5], 0.0, is_causal=True)
    assert "bfloat16" in forward_refusal(q.float(), k.float(), v.float(), 0.0, False)
    assert "bfloat16" in forward_refusal(q, k.half(), v.half(), 0.0, False)
    assert "head count" in forward_refusal(q, k[:, :1], v[:, :1], 0.0, False)
    assert "4-D" in forward_refusal(q[0], k[0], v[0], 0.0, False)
    d = NO_KERNEL_DIM
    assert "head dim" in forward_refusal(q[..., :d], k[..., :d], v[..., :d], 0.0, False)
    assert "one shape" in forward_refusal(q, k, v[..., :64], 0.0, False)
    out, lse = q.clone(), torch.zeros(q.shape[:3])
    assert "dropout" in backward_refusal(q, q, k, v, out, lse, 0.5)
    assert "logsumexp" in backward_refusal(q, q, k, v, out, lse[..., :1], 0.0)
    assert "logsumexp" in backward_refusal(q, q, k, v, out, lse.double(), 0.0)
    # This build's backward takes d=128 (the CPU tensors' placeholder GPU), not NO_KERNEL_DIM.
    assert backward_refusal(q, q, k, v, out, lse, 0.0) is None
    assert "head dim" in backward_refusal(*(t[..., :d] for t in (q, q, k, v, out)), lse, 0.0)


@needs_placeholder_backward
def test_backward_refuses_head_dims_without_a_forward(monkeypatch):
    """A head dim with a backward kernel but no forward one (d=96, 192, 256 in the GPU
    build): the forward ran PyTorch's kernel, and the backward is refused too."""
    q, k, v = _qkv(requires_grad=False)
    out, lse = q.clone(), torch.zeros(q.shape[:3])
    assert backward_refusal(q, q, k, v, out, lse, 0.0) is None
    monkeypatch.setattr(_sdpa_backend, "FORWARD_HEAD_DIMS", frozenset())
    assert "forward" in backward_refusal(q, q, k, v, out, lse, 0.0)


def test_forward_fallback_takes_the_backward_with_it(torch_kernels, fa_cute_side, monkeypatch):
    """Through the dispatcher: no forward kernel for the head dim (patched away here), so
    PyTorch's kernel runs both passes, not its forward and fa_cute's backward."""
    monkeypatch.setattr(_sdpa_backend, "FORWARD_HEAD_DIMS", frozenset())
    fa_cute.activate("CPU")
    q, k, v = _qkv()
    flash_sdpa(q, k, v, is_causal=True)[0].sum().backward()
    assert fa_cute_side == [] and torch_kernels == {"forward": 1, "backward": 1}


@needs_placeholder_backward
@pytest.mark.parametrize("is_causal", [False, True])
def test_op_and_its_gradients_reach_fa_cute(torch_kernels, fa_cute_side, is_causal):
    # causal only square: non-square causal stays PyTorch's (test_refusals)
    q, k, v = _qkv(nq=47) if is_causal else _qkv()
    start = dict(CALLS)
    fa_cute.activate("CPU")
    result = flash_sdpa(q, k, v, is_causal=is_causal, scale=0.3)
    out, lse = result[0], result[1]
    assert result[4:6] == (q.shape[2], k.shape[2])
    dout = torch.randn_like(out)
    out.backward(dout)
    assert fa_cute_side == ["forward", "backward"]
    assert torch_kernels == {"forward": 0, "backward": 0}
    assert CALLS["forward"] == start["forward"] + 1
    assert CALLS["backward"] == start["backward"] + 1
    ref_out, ref_lse = _attention64(q, k, v, is_causal, 0.3)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-4, rtol=1e-4)
    leaves = tuple(t.detach().double().requires_grad_() for t in (q, k, v))
    expected = torch.autograd.grad(_attention64(*leaves, is_causal, 0.3)[0], leaves,
                                   dout.double())
    for got, want in zip((q.grad, k.grad, v.grad), expected):
        torch.testing.assert_close(got.double(), want, atol=2e-2, rtol=2e-2)

    fa_cute.deactivate()
    flash_sdpa(q, k, v, is_causal=is_causal)
    assert fa_cute_side == ["forward", "backward"]
    assert torch_kernels["forward"] == 1


def test_unsupported_inputs_fall_back(torch_kernels, fa_cute_side):
    start = dict(CALLS)
    fa_cute.activate("CPU")
    q, k, v = _qkv(d=NO_KERNEL_DIM)
    out = flash_sdpa(q, k, v, is_causal=True)[0]
    out.sum().backward()
    # NO_KERNEL_DIM has no kernel; dropout goes to PyTorch's kernel in both passes.
    q, k, v = _qkv()
    flash_sdpa(q, k, v, 0.25)[0].sum().backward()
    assert fa_cute_side == []
    assert torch_kernels == {"forward": 2, "backward": 1 + 1}
    assert CALLS["forward_fallback"] == start["forward_fallback"] + 2
    assert CALLS["backward_fallback"] == start["backward_fallback"] + 2


def test_inputs_fa_cute_checks_refuse_fall_back(torch_kernels):
    """CPU tensors pass the refusal functions (dtype, shapes) but not fa_cute's own checks
    (the device): the real forward_lse raises ValueError, and the call falls back."""
    fa_cute.activate("CPU")
    q, k, v = _qkv(requires_grad=False)
    flash_sdpa(q, k, v)
    assert torch_kernels["forward"] == 1


def test_activation_over_another_python_kernel_and_back(torch_kernels):
    """fa_cute overrides a kernel another Python Library registered for the key (the
    fixture's here; FlashAttention-4's on CUDA), and deactivate() puts that kernel back:
    PyTorch 2.9 to 2.12 refuse such an override unless told `allow_override=True`."""
    q, k, v = _qkv(requires_grad=False)
    for _ in range(2):
        fa_cute.activate("CPU")
        assert fa_cute.is_active()
        flash_sdpa(q, k, v)  # CPU tensors: fa_cute's checks refuse, the fixture's kernel runs
        fa_cute.deactivate()
        flash_sdpa(q, k, v)
    assert torch_kernels["forward"] == 4


def test_failed_activation_registers_nothing(torch_kernels, fa_cute_side, monkeypatch):
    """A backward registration that fails takes the forward one back with it: nothing of
    fa_cute's stays in force, and a later activate() works."""
    real_impl = torch.library.Library.impl

    def impl(self, op_name, *args, **kwargs):
        if op_name == BACKWARD_OP.split("::")[1]:
            raise RuntimeError("refused for the test")
        return real_impl(self, op_name, *args, **kwargs)

    monkeypatch.setattr(torch.library.Library, "impl", impl)
    with pytest.raises(RuntimeError, match="refused for the test"):
        fa_cute.activate("CPU")
    monkeypatch.setattr(torch.library.Library, "impl", real_impl)
    assert not fa_cute.is_active()
    q, k, v = _qkv(requires_grad=False)
    flash_sdpa(q, k, v)
    assert fa_cute_side == [] and torch_kernels["forward"] == 1
    fa_cute.activate("CPU")
    flash_sdpa(q, k, v)
    assert fa_cute_side == ["forward"] and torch_kernels["forward"] == 1


# GPU ---------------------------------------------------------------------------------------

def _gpu_qkv(nq, nk, d, requires_grad=True):
    shapes = ((2, 4, nq, d), (2, 4, nk, d), (2, 4, nk, d))
    return tuple(torch.randn(s, dtype=BF16, device="cuda").requires_grad_(requires_grad)
                 for s in shapes)


def _flash_only():
    """SDPA's flash backend alone: the one whose ops fa_cute.activate() takes over. Pinned,
    since PyTorch's own order puts cuDNN first on sm90/sm100 with a recent cuDNN
    (check_prefer_cudnn_attention: torch 2.11's CUDA 13 wheels on an H100), where an
    unpinned call never reaches the flash ops."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel(SDPBackend.FLASH_ATTENTION)


def _flash(q, k, v, **kwargs):
    with _flash_only():
        return F.scaled_dot_product_attention(q, k, v, **kwargs)


def _within_2x(got, ref64, baseline, name="out"):
    """FlashAttention's rule: the error against float64 at most twice PyTorch's bf16 one."""
    err = (got.double() - ref64).abs().max().item()
    base = (baseline.double() - ref64).abs().max().item()
    assert err <= 2 * base + 1e-5, f"{name}: max abs error {err:.3e} > 2 x PyTorch's {base:.3e}"


@pytest.mark.cuda
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("nq,nk", [(128, 128), (77, 200), (200, 77)])
def test_gpu_sdpa_flash_backend_runs_fa_cute(is_causal, nq, nk):
    if not has_backward():
        pytest.skip("this build has no backward kernel")
    q, k, v = _gpu_qkv(nq, nk, 128)
    dout = torch.randn(2, 4, nq, 128, dtype=BF16, device="cuda")
    if is_causal and nq != nk:
        # PyTorch's flash backend refuses is_causal with seqlen_q != seqlen_k in its backend
        # selection (check_flash_causal_non_square_seqlens: FA2 aligns such masks bottom-right,
        # SDPA's is_causal is top-left), before any op is called: pinned to flash, SDPA raises
        # "No available kernel", activated or not, and fa_cute is never reached. fa_cute
        # cannot change PyTorch's selection; it must only not change the outcome.
        start = dict(CALLS)
        for activation in (contextlib.nullcontext(), fa_cute.activated()):
            with activation, warnings.catch_warnings(), \
                    pytest.raises(RuntimeError, match="No available kernel"):
                warnings.simplefilter("ignore")  # the backends' reasons, as UserWarnings
                _flash(q, k, v, is_causal=True)
        assert CALLS == start
        return
    torch_out = _flash(q, k, v, is_causal=is_causal)
    torch_grads = torch.autograd.grad(torch_out, (q, k, v), dout)
    start = dict(CALLS)
    with fa_cute.activated():
        out = _flash(q, k, v, is_causal=is_causal)
        grads = torch.autograd.grad(out, (q, k, v), dout)
    calls = {key: CALLS[key] - start[key] for key in CALLS}
    assert calls == {"forward": 1, "backward": 1, "forward_fallback": 0,
                     "backward_fallback": 0}, calls
    ours = fa_cute.sdpa(q, k, v, is_causal=is_causal)
    our_grads = torch.autograd.grad(ours, (q, k, v), dout)
    torch.testing.assert_close(out, ours, atol=0, rtol=0, msg=lambda m: f"out vs sdpa: {m}")
    for name, g, g_ours in zip(("dq", "dk", "dv"), grads, our_grads):
        torch.testing.assert_close(g, g_ours, atol=2e-2, rtol=2e-2,
                                   msg=lambda m, name=name: f"{name} vs fa_cute.sdpa's: {m}")
    ref = _attention64(q, k, v, is_causal, None)[0]
    _within_2x(out, ref, torch_out, "out")
    for name, g, g_ref, g_torch in zip(("dq", "dk", "dv"), grads,
                                       _grads64(dout, q, k, v, is_causal, None), torch_grads):
        _within_2x(g, g_ref, g_torch, name)
    # Deactivated, the same call runs PyTorch's kernel again.
    _flash(q, k, v, is_causal=is_causal)
    assert CALLS["forward"] == start["forward"] + 1


@pytest.mark.cuda
def test_gpu_fallbacks_equal_pytorch():
    # a head dim PyTorch's flash kernel takes and fa_cute's forward does not: both passes
    # (the backward too, where fa_cute has a backward kernel for it) go to PyTorch's kernel
    q, k, v = _gpu_qkv(100, 100, NO_FORWARD_DIM)
    dout = torch.randn_like(q)
    torch_out = _flash(q, k, v, is_causal=True)
    torch_grads = torch.autograd.grad(torch_out, (q, k, v), dout)
    start = dict(CALLS)
    with fa_cute.activated():
        out = _flash(q, k, v, is_causal=True)
        grads = torch.autograd.grad(out, (q, k, v), dout)
        torch.manual_seed(0)
        dropped = _flash(q, k, v, dropout_p=0.5)
    torch.manual_seed(0)
    torch.testing.assert_close(dropped, _flash(q, k, v, dropout_p=0.5), atol=0, rtol=0)
    assert CALLS["backward"] == start["backward"]
    assert CALLS["backward_fallback"] == start["backward_fallback"] + 1
    assert CALLS["forward_fallback"] >= start["forward_fallback"] + 1
    torch.testing.assert_close(out, torch_out, atol=2e-2, rtol=2e-2)
    for g, g_torch in zip(grads, torch_grads):
        torch.testing.assert_close(g, g_torch, atol=0, rtol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_gpu_compiled_step_reaches_fa_cute(backend):
    if not has_backward():
        pytest.skip("this build has no backward kernel")
    q, k, v = _gpu_qkv(256, 256, 128)

    def step(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).float().square().sum()

    with _flash_only():
        eager_grads = torch.autograd.grad(step(q, k, v), (q, k, v))
    torch._dynamo.reset()
    start = dict(CALLS)
    with fa_cute.activated(), _flash_only():
        loss = torch.compile(step, backend=backend, fullgraph=True)(q, k, v)
        grads = torch.autograd.grad(loss, (q, k, v))
    torch._dynamo.reset()
    calls = {key: CALLS[key] - start[key] for key in CALLS}
    assert calls["forward"] > 0 and calls["backward"] > 0, calls
    for g, g_eager in zip(grads, eager_grads):
        torch.testing.assert_close(g, g_eager, atol=5e-2, rtol=5e-2)
