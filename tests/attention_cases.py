"""What the attention GPU tests share (test_attention_grid_gpu.py and
test_attention_random_gpu.py): the dtypes and head dims, inputs with a NaN-filled output,
and the check of one forward call (output by the 2x rule, LSE) against the float64
reference; the toy model the training tests (test_backward.py, test_backward_gpu.py) train.
Not a test module itself."""

import math
from typing import List, Optional, Tuple

import pytest
import torch

import fa_cute
from fa_cute._reference import ABS_SLACK, attention_ref, check_close, check_lse

DEVICE = "cuda"
DTYPES = [torch.bfloat16, torch.float16]
DTYPE_IDS = ["bf16", "fp16"]
HEAD_DIMS = [64, 96, 128, 192, 256]
# The bf16/fp16 kernels' configs (an FP8-only config, e4m3 alone in its dtypes, is
# tests/test_fp8_gpu.py's).
PRODUCTION_CONFIGS = [c for c in fa_cute.configs() if c["rung"] is None and c["dtypes"] != ["e4m3"]]
BUILT_HEAD_DIMS = sorted({c["head_dim"] for c in PRODUCTION_CONFIGS})


def require_head_dim(head_dim: int) -> None:
    """A build with FA_CUTE_CONFIGS holds only some head dims; the others cannot run."""
    if head_dim not in BUILT_HEAD_DIMS:
        pytest.skip(f"head dim {head_dim} is not in this build (built: {BUILT_HEAD_DIMS})")


def require_dtype(head_dim: int, dtype: torch.dtype) -> None:
    """A build with FA_CUTE_DTYPES holds one dtype or both; a call in the other cannot run."""
    name = DTYPE_IDS[DTYPES.index(dtype)]
    if not any(c["head_dim"] == head_dim and name in c["dtypes"] for c in PRODUCTION_CONFIGS):
        pytest.skip(f"no {name} config for head dim {head_dim} in this build")


def built_dtype(head_dim: int) -> torch.dtype:
    """bf16 where this build has it for head_dim, else fp16."""
    return torch.bfloat16 if any(c["head_dim"] == head_dim and "bf16" in c["dtypes"]
                                 for c in PRODUCTION_CONFIGS) else torch.float16


KERNEL_FAMILIES = ["sm80", "sm90a"]  # the Ampere-style kernel, the Hopper kernel


def family_config(family: str, head_dim: int, seqlen_q: int, seqlen_k: int, causal: bool) -> str:
    """The config of kernel `family` that serves these shapes: the heuristic's pick on a
    GPU of that family (sm80: compute capability 8.0, whatever the dispatcher prefers on
    this one; sm90a: 9.0), else any built config of the family for the head dim. Skips
    where this GPU or build has no such kernel."""
    if family == "sm80":
        return fa_cute._C.default_config(head_dim, seqlen_q, seqlen_k, 8, 0, causal)
    props = torch.cuda.get_device_properties(DEVICE)
    if (props.major, props.minor) != (9, 0):
        pytest.skip(f"{family} kernels run on compute capability 9.0 only")
    names = [c["name"] for c in PRODUCTION_CONFIGS if c["family"] == family and c["head_dim"] == head_dim]
    if not names:
        pytest.skip(f"no {family} config for head dim {head_dim} in this build")
    picked = fa_cute._C.default_config(head_dim, seqlen_q, seqlen_k, 9, 0, causal)
    return picked if picked in names else names[0]


def check_grad_errors(got, ref, plain, dtype: torch.dtype) -> List[float]:
    """FlashAttention's rule for gradients: each of got (dq, dk, dv) within twice the plain
    (input-dtype) computation's max abs error against the float64 reference ref, plus
    ABS_SLACK relative to the gradients' size: the largest of the three, since a gradient
    that is exactly zero (dq and dk with one key: dS = dP - D = 0) still gets fp32
    cancellation noise from terms of that size. Returns the max abs errors."""
    errors = []
    scale_of_grads = max(1.0, *(r.abs().max().item() if r.numel() else 0.0 for r in ref))
    for name, g, r, p in zip(("dq", "dk", "dv"), got, ref, plain):
        assert g.shape == r.shape and g.dtype == dtype, name
        assert torch.isfinite(g).all(), f"{name} has NaN/inf"
        if not g.numel():
            errors.append(0.0)
            continue
        err = (g.double().cpu() - r.cpu()).abs().max().item()
        plain_err = (p.double().cpu() - r.cpu()).abs().max().item()
        bound = 2 * plain_err + ABS_SLACK * scale_of_grads
        assert err <= bound, f"{name}: max abs error {err:.3e} > 2 x plain {plain_err:.3e} + slack"
        errors.append(err)
    return errors


def make_inputs(batch: int, seqlen_q: int, seqlen_k: int, nheads: int, nheads_k: int,
                head_dim: int, dtype: torch.dtype, layout: str = "bnhd"
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q, k, v and a NaN-filled out, each (batch, seqlen, heads, head_dim); layout
    "bhnd" holds each in (batch, heads, seqlen, head_dim) storage viewed with
    .transpose(1, 2), the way SDPA users hold them."""
    def tensor(seqlen: int, heads: int, fill: Optional[float] = None) -> torch.Tensor:
        shape = ((batch, seqlen, heads, head_dim) if layout == "bnhd"
                 else (batch, heads, seqlen, head_dim))
        t = (torch.randn(shape, device=DEVICE).to(dtype) if fill is None
             else torch.full(shape, fill, device=DEVICE, dtype=dtype))
        return t if layout == "bnhd" else t.transpose(1, 2)

    return (tensor(seqlen_q, nheads), tensor(seqlen_k, nheads_k), tensor(seqlen_k, nheads_k),
            tensor(seqlen_q, nheads, math.nan))


def check_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  causal: bool, config: str = "auto") -> torch.Tensor:
    """forward(..., return_lse=True) into out, then the output by the 2x rule and the LSE
    against the float64 reference (bottom-right causal, as forward). Returns the LSE."""
    result, lse = fa_cute.forward(q, k, v, causal=causal, return_lse=True, config=config,
                                  out=out)
    assert result is out
    batch, seqlen_q, nheads, head_dim = q.shape
    assert lse.shape == (batch, nheads, seqlen_q)
    assert lse.dtype == torch.float32 and lse.is_contiguous() and lse.device == q.device
    scale = 1.0 / math.sqrt(head_dim)
    ref, ref_lse = attention_ref(q, k, v, scale, causal=causal, return_lse=True)
    plain = attention_ref(q, k, v, scale, upcast=False, causal=causal)
    check_close(out, ref, plain)
    check_lse(lse, ref_lse)
    return lse


class ToyModel(torch.nn.Module):
    """Residual causal self-attention layers over (batch, seqlen, width) inputs, heads of 128,
    their attention `attention(q, k, v)` on (batch, nheads, seqlen, 128) tensors (torch
    SDPA's signature), so that one model trains on fa_cute and on torch SDPA."""

    def __init__(self, attention, width: int, layers: int = 2,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.attention, self.heads, self.dtype = attention, width // 128, dtype
        self.qkv = torch.nn.ModuleList(torch.nn.Linear(width, 3 * width).to(dtype)
                                       for _ in range(layers))
        self.proj = torch.nn.ModuleList(torch.nn.Linear(width, width).to(dtype)
                                        for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        for qkv, proj in zip(self.qkv, self.proj):
            b, n, width = x.shape
            q, k, v = qkv(x).view(b, n, 3, self.heads, 128).permute(2, 0, 3, 1, 4)
            x = x + proj(self.attention(q, k, v).transpose(1, 2).reshape(b, n, width))
        return x


def training_losses(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor,
                    optimizer: torch.optim.Optimizer, steps: int,
                    autocast: Optional[torch.dtype] = None) -> List[float]:
    """The mean-square losses of `steps` optimizer steps of model(x) towards target."""
    losses = []
    for _ in range(steps):
        with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            loss = (model(x).float() - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def check_training_matches(ours: List[float], theirs: List[float], rel_tol: float) -> None:
    """Both losses fall, and agree step by step within rel_tol."""
    assert ours[-1] < ours[0] and theirs[-1] < theirs[0], (ours, theirs)
    assert all(math.isclose(a, b, rel_tol=rel_tol) for a, b in zip(ours, theirs)), \
        (ours, theirs)
