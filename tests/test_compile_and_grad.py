"""Issue 14 on CPU: torch.compile traces forward and sdpa as custom ops (fullgraph=True) whose
fake implementations give the real outputs' shapes, dtypes and strides, inputs that require
grad go where gradients are recorded (or are refused where they cannot be: forward_timed,
a build without a backward kernel), and SDPA-layout tensors passed to forward get a layout
hint. tests/test_backward.py tests the gradients themselves.

Without a GPU the kernel cannot run, so the compile tests stand a CPU computation in for
it (`cpu_kernel`: the float64 reference written into the output, as the kernel would write
it) and switch the device check off; everything else, validation and the ops included, is
the product's. tests/test_compile_gpu.py runs the real kernel.
"""

import math
from typing import Callable, List

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fa_cute
from fa_cute import _C, _api, _cache, _configs, _launch, _validate
from fa_cute._reference import attention_ref

HEAD_DIM = fa_cute.configs()[0]["head_dim"]
BF16 = torch.bfloat16

needs_ops = pytest.mark.skipif(not _api.OPS, reason="torch.library.custom_op needs PyTorch 2.4")


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(shape).to(BF16)


def qkv(seqlen_q: int = 7, seqlen_k: int = 9, nheads: int = 4, nheads_k: int = 2):
    return (randn(2, seqlen_q, nheads, HEAD_DIM), randn(2, seqlen_k, nheads_k, HEAD_DIM),
            randn(2, seqlen_k, nheads_k, HEAD_DIM))


# Gradients ----------------------------------------------------------------------------------

CALLS = {
    "forward": (lambda q, k, v: fa_cute.forward(q, k, v), ("q", "k", "v")),
    "forward_timed": (lambda q, k, v: fa_cute.forward_timed(q, k, v), ("q", "k", "v")),
    "sdpa": (lambda q, k, v: fa_cute.sdpa(q.transpose(1, 2), k.transpose(1, 2),
                                          v.transpose(1, 2), enable_gqa=True),
             ("query", "key", "value")),
}


@pytest.mark.parametrize("which", [0, 1, 2])
def test_forward_timed_refuses_requires_grad(which: int) -> None:
    """forward_timed records no gradient: refused, not silently detached."""
    tensors = list(qkv())
    tensors[which].requires_grad_()
    name = "qkv"[which]
    with pytest.raises(NotImplementedError,
                       match=rf"^{name} requires grad, but fa_cute\.forward_timed records no "
                             r"gradient .*fa_cute\.forward to train.*torch\.no_grad\(\)"):
        fa_cute.forward_timed(*tensors)


@pytest.mark.parametrize("api", ["forward", "sdpa"])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_requires_grad_without_a_backward_kernel_is_refused(
        api: str, which: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build of _C without the backward: the forward refuses inputs that require grad
    before it runs, instead of returning an output whose backward would fail."""
    monkeypatch.delattr(_C, "backward", raising=False)
    call, _ = CALLS[api]
    tensors = list(qkv())
    tensors[which].requires_grad_()
    with pytest.raises(NotImplementedError,
                       match=r"^this build of fa_cute\._C has no backward kernel .*"
                             r"torch\.no_grad\(\).*scaled_dot_product_attention"):
        call(*tensors)


@pytest.mark.parametrize("api", CALLS)
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "detach"])
def test_requires_grad_passes_without_grad_mode(api: str, mode: str) -> None:
    """Only grad mode with a tensor that requires grad is refused: these reach the last
    check, the device (CPU tensors here)."""
    call, _ = CALLS[api]
    q, k, v = qkv()
    q.requires_grad_()
    with pytest.raises(ValueError, match="CUDA tensors only"):
        if mode == "detach":
            call(q.detach(), k, v)
        else:
            with getattr(torch, mode)():
                call(q, k, v)


def test_grad_check_leaves_type_errors_to_the_type_checks() -> None:
    """A non-tensor has no requires_grad: the type check names it, not an AttributeError."""
    q, k, v = qkv()
    with pytest.raises(TypeError, match=r"^k must be a torch\.Tensor; got list"):
        fa_cute.forward(q, [1.0], v)


# The SDPA-layout hint -----------------------------------------------------------------------

def test_sdpa_layout_passed_to_forward_gets_a_hint() -> None:
    # A decode step held as SDPA holds it: (batch, nheads, seqlen, headdim).
    q, k, v = randn(2, 8, 1, HEAD_DIM), randn(2, 2, 300, HEAD_DIM), randn(2, 2, 300, HEAD_DIM)
    with pytest.raises(ValueError, match=r"^nheads of q \(1\) must be a multiple of nheads of "
                                         r"k and v \(300\); if q, k and v are \(batch, nheads, "
                                         r"seqlen, headdim\) tensors .*transpose\(1, 2\).*"
                                         r"fa_cute\.sdpa"):
        fa_cute.forward(q, k, v)
    # Transposed as the hint says, they reach the device check.
    with pytest.raises(ValueError, match="CUDA tensors only"):
        fa_cute.forward(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))


def test_forward_layout_passed_to_sdpa_gets_a_hint() -> None:
    q, k, v = qkv(seqlen_q=1, seqlen_k=300, nheads=8, nheads_k=2)
    with pytest.raises(ValueError, match=r"^query has 1 heads but key and value have 300; "
                                         r"pass enable_gqa=True .*; if query, key and value "
                                         r"are \(batch, seqlen, nheads, headdim\).*"
                                         r"fa_cute\.forward"):
        fa_cute.sdpa(q, k, v)
    with pytest.raises(ValueError, match=r"^nheads of query \(1\) must be a multiple of "
                                         r"nheads of key and value \(300\); if query.*"
                                         r"fa_cute\.forward"):
        fa_cute.sdpa(q, k, v, enable_gqa=True)


def test_no_hint_where_the_other_layout_fails_too() -> None:
    q, k, v = randn(2, 3, 5, HEAD_DIM), randn(2, 2, 2, HEAD_DIM), randn(2, 2, 2, HEAD_DIM)
    with pytest.raises(ValueError, match=r"^nheads of q \(5\) must be a multiple of nheads of "
                                         r"k and v \(2\)$"):
        fa_cute.forward(q, k, v)


# torch.compile ------------------------------------------------------------------------------

@pytest.fixture
def cpu_kernel(reference_forward: List[_launch.Launch]) -> List[_launch.Launch]:
    """The kernel's results computed on CPU (conftest's `reference_forward`)."""
    return reference_forward


def compiled(fn: Callable) -> Callable:
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


FORWARD_CASES = {
    "plain": dict(),
    "causal": dict(causal=True),
    "lse": dict(return_lse=True),
    "causal-lse-scale": dict(causal=True, return_lse=True, softmax_scale=0.3),
}


@needs_ops
@pytest.mark.parametrize("case", FORWARD_CASES)
@pytest.mark.parametrize("shape", [(7, 9, 4, 2), (1, 300, 8, 2), (9, 9, 2, 2)],
                         ids=["gqa", "decode-gqa", "mha"])
def test_compiled_forward_matches_eager(cpu_kernel, case: str, shape) -> None:
    q, k, v = qkv(*shape)
    kwargs = FORWARD_CASES[case]
    eager = fa_cute.forward(q, k, v, **kwargs)
    got = compiled(lambda q, k, v: fa_cute.forward(q, k, v, **kwargs))(q, k, v)
    for a, b in zip(*((eager, got) if kwargs.get("return_lse") else ((eager,), (got,)))):
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
        assert torch.equal(a, b)


@needs_ops
def test_compiled_forward_keeps_qs_layout(cpu_kernel) -> None:
    """out is laid out like q (torch.empty_like), in the fake implementation as in the real."""
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in qkv())
    out = compiled(lambda q, k, v: fa_cute.forward(q, k, v) * 1)(q, k, v)
    assert torch.equal(out, fa_cute.forward(q, k, v))
    with FakeTensorMode() as mode:
        fq, fk, fv = (mode.from_tensor(t) for t in (q, k, v))
        fake_out, fake_lse = _api.OPS["forward"](fq, fk, fv, False, None, True, None)
    real_out, real_lse = fa_cute.forward(q, k, v, return_lse=True)
    assert fake_out.stride() == real_out.stride() == q.stride()
    assert (fake_lse.shape, fake_lse.stride(), fake_lse.dtype) == \
        (real_lse.shape, real_lse.stride(), real_lse.dtype)


@needs_ops
@pytest.mark.parametrize("return_lse", [False, True])
def test_compiled_forward_with_out(cpu_kernel, return_lse: bool) -> None:
    q, k, v = qkv()
    out_eager, out_compiled = torch.empty_like(q), torch.empty_like(q)
    eager = fa_cute.forward(q, k, v, causal=True, return_lse=return_lse, out=out_eager)

    def fn(q, k, v, out):
        return fa_cute.forward(q, k, v, causal=True, return_lse=return_lse, out=out)

    got = compiled(fn)(q, k, v, out_compiled)
    assert torch.equal(out_compiled, out_eager)
    if return_lse:
        assert got[0] is out_compiled or torch.equal(got[0], out_compiled)
        assert torch.equal(got[1], eager[1])


@needs_ops
@pytest.mark.parametrize("is_causal", [False, True])
def test_compiled_sdpa_matches_eager(cpu_kernel, is_causal: bool) -> None:
    q, k, v = (t.transpose(1, 2) for t in qkv(7, 9, 4, 2))
    eager = fa_cute.sdpa(q, k, v, is_causal=is_causal, enable_gqa=True)
    got = compiled(lambda q, k, v: fa_cute.sdpa(q, k, v, is_causal=is_causal,
                                                enable_gqa=True))(q, k, v)
    assert got.shape == eager.shape and got.stride() == eager.stride() == q.stride()
    assert torch.equal(got, eager)


@needs_ops
def test_compiled_call_validates_when_it_runs() -> None:
    """Traced without reading the tensors; the checks run with the graph, same messages."""
    q, k, v = qkv()
    fn = compiled(lambda q, k, v: fa_cute.forward(q, k, v))
    with pytest.raises(ValueError, match=r"^q is on cpu; fa_cute runs on CUDA tensors only"):
        fn(q, k, v)
    with pytest.raises(ValueError, match=r"^k and v must have the same shape"):
        fn(q, k, v[:, :3])


@needs_ops
def test_compiled_call_without_a_backward_kernel_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused while traced (the op's autograd setup asks for the backward); Dynamo wraps
    the error (fullgraph=True) in an exception that quotes it."""
    monkeypatch.delattr(_C, "backward", raising=False)
    q, k, v = qkv()
    with pytest.raises(Exception, match=r"this build of fa_cute\._C has no backward kernel"):
        compiled(lambda q, k, v: fa_cute.forward(q, k, v))(q.requires_grad_(), k, v)


@needs_ops
def test_compiled_call_checks_plain_arguments_when_traced() -> None:
    q, k, v = qkv()
    with pytest.raises(Exception, match=r"softmax_scale must be a finite number > 0"):
        compiled(lambda q, k, v: fa_cute.forward(q, k, v, softmax_scale=-1.0))(q, k, v)


@needs_ops
def test_trace_reads_no_tuning_cache(cpu_kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """config="auto" is resolved where the op runs: while the graph is traced nothing asks
    auto's pick (the tuning cache, `_C.default_config`)."""
    picks: List[bool] = []
    resolve = _configs.pick_config

    def recording(*args, **kwargs):
        picks.append(torch.compiler.is_compiling())
        return resolve(*args, **kwargs)

    monkeypatch.setattr(_validate, "pick_config", recording)
    monkeypatch.setattr(_cache, "pick_config", recording)
    q, k, v = qkv()
    compiled(lambda q, k, v: fa_cute.forward(q, k, v, causal=True))(q, k, v)
    assert picks == [False]


@needs_ops
@pytest.mark.parametrize("layout", ["bnhd", "bhnd"])
def test_fake_impls_on_fake_cuda_tensors(layout: str) -> None:
    """The fake implementations as the tracer calls them, with CUDA tensors (FakeTensorMode
    makes them without a GPU): shapes, dtypes, strides and device of the real outputs."""
    with FakeTensorMode():
        def make(seqlen: int, heads: int) -> torch.Tensor:
            if layout == "bnhd":
                return torch.empty(2, seqlen, heads, HEAD_DIM, dtype=BF16, device="cuda")
            return torch.empty(2, heads, seqlen, HEAD_DIM, dtype=BF16,
                               device="cuda").transpose(1, 2)

        q, k = make(100, 8), make(300, 2)
        out, lse = torch.ops.fa_cute.forward(q, k, k, True, None, True, None)
        assert (out.shape, out.stride(), out.dtype, out.device) == \
            (q.shape, q.stride(), q.dtype, q.device)
        assert (lse.shape, lse.stride(), lse.dtype) == ((2, 8, 100), (800, 100, 1), torch.float32)
        assert torch.ops.fa_cute.forward(q, k, k, False, None, False, None)[1].numel() == 0
        assert torch.ops.fa_cute.forward_out(q, k, k, torch.empty_like(q), False, 0.5, True,
                                             "auto").shape == (2, 8, 100)
        s, s_lse = torch.ops.fa_cute.sdpa(q.transpose(1, 2), k.transpose(1, 2),
                                          k.transpose(1, 2), False, None, True)
        # sdpa's output keeps query's order of the heads and sequence dims in memory
        assert s.shape == (2, 8, 100, HEAD_DIM) and s.device == q.device
        assert s.stride() == q.transpose(1, 2).stride()
        assert (s_lse.shape, s_lse.stride(), s_lse.dtype) == \
            ((2, 8, 100), (800, 100, 1), torch.float32)
        assert torch.ops.fa_cute.sdpa(q.transpose(1, 2), k.transpose(1, 2), k.transpose(1, 2),
                                      False, None, False)[1].numel() == 0
        dq, dk, dv = torch.ops.fa_cute.backward(q, q, k, k, q, lse, True, None, False, True)
        for grad, like in ((dq, q), (dk, k), (dv, k)):
            assert (grad.shape, grad.stride(), grad.dtype, grad.device) == \
                (like.shape, like.stride(), like.dtype, like.device)


@needs_ops
@pytest.mark.parametrize("op, args", [
    ("forward", (False, None, False, None)),
    ("forward", (True, 0.25, True, "auto")),
    ("sdpa", (True, None, False)),
    ("sdpa", (False, 0.5, True)),
], ids=["forward", "forward-causal-lse", "sdpa", "sdpa-lse"])
def test_opcheck(cpu_kernel, op: str, args) -> None:
    """torch.library.opcheck: schema, fake against real (on the CPU stand-in), AOT dispatch."""
    q, k, v = qkv()
    tensors = (q, k, v) if op == "forward" else tuple(t.transpose(1, 2) for t in (q, k, v))
    torch.library.opcheck(getattr(torch.ops.fa_cute, op).default, (*tensors, *args),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


@needs_ops
def test_opcheck_forward_out(cpu_kernel) -> None:
    q, k, v = qkv()
    torch.library.opcheck(torch.ops.fa_cute.forward_out.default,
                          (q, k, v, torch.empty_like(q), True, None, True, None),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


def test_eager_calls_skip_the_ops(cpu_kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eager calls run the implementation directly: no dispatcher on the hot path."""
    monkeypatch.setattr(_api, "OPS", {name: None for name in ("forward", "forward_out",
                                                              "sdpa")})
    q, k, v = qkv()
    fa_cute.forward(q, k, v)
    fa_cute.forward(q, k, v, out=torch.empty_like(q))
    fa_cute.sdpa(*(t.transpose(1, 2) for t in (q, k, v)), enable_gqa=True)
    assert len(cpu_kernel) == 3 and math.isfinite(cpu_kernel[0].softmax_scale)
