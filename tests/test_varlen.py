"""varlen_forward's and varlen_backward's argument checks on CPU tensors (the device check
comes last, so every other check is reachable without a GPU): each bad argument raises
TypeError or ValueError naming it. tests/test_varlen_gpu.py runs the kernels."""

import pytest
import torch

import fa_cute


def _args(total_q=40, total_k=50, nheads=4, nheads_k=2, head_dim=128, dtype=torch.bfloat16):
    q = torch.randn(total_q, nheads, head_dim).to(dtype)
    k = torch.randn(total_k, nheads_k, head_dim).to(dtype)
    v = torch.randn(total_k, nheads_k, head_dim).to(dtype)
    cu_q = torch.tensor([0, 10, 40], dtype=torch.int32)
    cu_k = torch.tensor([0, 20, 50], dtype=torch.int32)
    return q, k, v, cu_q, cu_k, 30, 30


def _raises(exc, match, *args, **kwargs):
    with pytest.raises(exc, match=match):
        fa_cute.varlen_forward(*args, **kwargs)


def test_valid_call_reaches_the_device_check() -> None:
    _raises(ValueError, "CUDA tensors only", *_args())


def test_tensor_types_and_shapes() -> None:
    q, k, v, cu_q, cu_k, mq, mk = _args()
    _raises(TypeError, "q must be a torch.Tensor", q.float().numpy(), k, v, cu_q, cu_k, mq, mk)
    _raises(TypeError, "k has dtype torch.float32", q, k.float(), v, cu_q, cu_k, mq, mk)
    _raises(ValueError, "q must be 3-D", q[None], k, v, cu_q, cu_k, mq, mk)
    _raises(ValueError, "v must have k's shape", q, k, v[:-1], cu_q, cu_k, mq, mk)
    _raises(ValueError, "headdim", q, k[..., :64], v[..., :64], cu_q, cu_k, mq, mk)
    _raises(ValueError, "multiple of nheads", q[:, :3], k, v, cu_q, cu_k, mq, mk)
    _raises(TypeError, "one dtype", q, k.half(), v.half(), cu_q, cu_k, mq, mk)


def test_cu_seqlens() -> None:
    q, k, v, cu_q, cu_k, mq, mk = _args()
    _raises(TypeError, "cu_seqlens_q must have dtype torch.int32", q, k, v, cu_q.long(), cu_k, mq, mk)
    _raises(TypeError, "cu_seqlens_k must be a torch.Tensor", q, k, v, cu_q, [0, 20, 50], mq, mk)
    _raises(ValueError, "cu_seqlens_q must be a contiguous 1-D", q, k, v, cu_q[None], cu_k, mq, mk)
    _raises(ValueError, "cu_seqlens_q must hold batch", q, k, v, cu_q[:1], cu_k[:1], mq, mk)
    _raises(ValueError, "cu_seqlens_k must hold as many", q, k, v, cu_q, cu_k[:2], mq, mk)
    _raises(ValueError, "seqused_k must hold one length", q, k, v, cu_q, cu_k, mq, mk,
            seqused_k=torch.tensor([1], dtype=torch.int32))
    _raises(TypeError, "max_seqlen_q must be a Python int", q, k, v, cu_q, cu_k, torch.tensor(30), mk)
    _raises(ValueError, r"max_seqlen_k must be in \[1", q, k, v, cu_q, cu_k, mq, 0)


def test_options() -> None:
    args = _args()
    _raises(TypeError, "causal", *args, causal=1)
    _raises(ValueError, "softcap", *args, softcap=-1.0)
    _raises(ValueError, "window_size", *args, window_size=(-2, 0))
    _raises(ValueError, "is not built", *args, config="no_such_config")
    q, k, v, *rest = args
    _raises(ValueError, "out must be a", q, k, v, *rest, out=q[:-1].clone())
    buf = torch.empty(40 * 4 * 128, dtype=torch.bfloat16)
    k_in_buf = buf[:50 * 2 * 128].view(50, 2, 128)
    _raises(ValueError, "out overlaps k or v", q, k_in_buf, v, *rest, out=buf.view(40, 4, 128))


def test_grad_options() -> None:
    q, k, v, *rest = _args()
    q.requires_grad_()
    _raises(ValueError, "out: varlen_forward records gradients", q, k, v, *rest,
            out=torch.empty_like(q))
    # Recorded (softcap and windows included): checked to the end, the device last.
    _raises(ValueError, "CUDA tensors only", q, k, v, *rest)
    _raises(ValueError, "CUDA tensors only", q, k, v, *rest, softcap=5.0, window_size=(8, 0))
    _raises(TypeError, "window_size must be a pair", q, k, v, *rest, window_size=8)


def _backward_raises(exc, match, *args, **kwargs):
    with pytest.raises(exc, match=match):
        fa_cute.varlen_backward(*args, **kwargs)


def test_backward_args() -> None:
    q, k, v, cu_q, cu_k, mq, mk = _args()
    out, dout = torch.randn_like(q), torch.randn_like(q)
    lse = torch.zeros(4, 40)
    rest = (cu_q, cu_k, mq, mk)
    _backward_raises(ValueError, "CUDA tensors only", dout, q, k, v, out, lse, *rest)
    _backward_raises(ValueError, "dout has shape", dout[:-1], q, k, v, out, lse, *rest)
    _backward_raises(TypeError, "out has dtype", dout, q, k, v, out.half(), lse, *rest)
    _backward_raises(TypeError, "lse has dtype", dout, q, k, v, out, lse.double(), *rest)
    _backward_raises(ValueError, r"lse must be a contiguous \(nheads, total_q\)", dout, q, k, v,
                     out, lse.t(), *rest)
    _backward_raises(TypeError, "deterministic must be True or False", dout, q, k, v, out, lse, *rest,
                     deterministic=1)
    _backward_raises(ValueError, "not a backward config", dout, q, k, v, out, lse, *rest,
                     config="nope")
    _backward_raises(ValueError, "dk has shape", dout, q, k, v, out, lse, *rest,
                     dk=torch.empty_like(q))
    _backward_raises(ValueError, "dq overlaps the memory of q", dout, q, k, v, out, lse, *rest,
                     dq=q)
    _backward_raises(TypeError, "cu_seqlens_k must have dtype torch.int32", dout, q, k, v, out,
                     lse, cu_q, cu_k.long(), mq, mk)
    _backward_raises(ValueError, "max_seqlen_q must be in", dout, q, k, v, out, lse, cu_q, cu_k,
                     0, mk)


def test_layout() -> None:
    q, k, v, *rest = _args(head_dim=128)
    strided = torch.randn(40, 4, 256).to(torch.bfloat16)[..., ::2]
    _raises(ValueError, "contiguous in its last", strided, k, v, *rest)
    odd_rows = torch.randn(40, 4 * 128 + 4).to(torch.bfloat16)[:, :512].view(40, 4, 128)
    _raises(ValueError, "row stride", odd_rows, k, v, *rest)


def test_config_without_varlen_refused() -> None:
    no_varlen = [c["name"] for c in fa_cute.configs() if not c["varlen"] and c["head_dim"] == 128]
    if not no_varlen:
        pytest.skip("no d=128 config without a varlen variant in this build")
    _raises(ValueError, "takes no variable-length batches", *_args(), config=no_varlen[0])
