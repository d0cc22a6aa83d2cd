"""The FP8 (e4m3) forward: `fa_cute.forward` on torch.float8_e4m3fn q, k and v (docs/design.md,
FP8 forward). Hopper only (the e4m3 configs are sm_90a kernels), dense attention (causal or
not, GQA/MQA), no gradient.

Per call: V goes through the layout pass (`_C.fp8_v_layout`: 8-bit wgmma reads its B operand
K-major, so the kernel takes Vt, keys contiguous, in the key order its P registers hold), then
the kernel (`_C.fp8_forward`) computes softmax(q k^T * q_descale * k_descale * softmax_scale)
(v * v_descale) with P quantised to e4m3 for the P V product, into a bf16 output.
"""

from typing import Optional

import torch

from . import _C
from ._configs import AUTO, CONFIGS, check_config_type, gpu_of
from ._launch import current_stream, row_strides
from ._validate import (FORWARD_NAMES, broadcast_dim, check_devices, check_flag, check_layout, check_memory,
                        check_shapes, check_tensor, overlaps_itself, resolve_scale, spans_overlap)

__all__ = ["DTYPE", "DTYPE_NAME", "forward"]

DTYPE = torch.float8_e4m3fn
DTYPE_NAME = "e4m3"  # the configs' name for it (`_C.configs()`'s dtypes)
OUT_DTYPE = torch.bfloat16


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
            softmax_scale: Optional[float], return_lse: bool, config, out: Optional[torch.Tensor],
            softcap, window_size, q_descale: Optional[torch.Tensor], k_descale: Optional[torch.Tensor],
            v_descale: Optional[torch.Tensor]):
    """`fa_cute.forward` for e4m3 q (its docstring has the contract); validated here."""
    names = FORWARD_NAMES
    check_flag("causal", causal)
    check_flag("return_lse", return_lse)
    if softcap != 0.0:
        raise ValueError(f"softcap: the FP8 forward has no softcap (got {softcap!r}); pass 0.0")
    if tuple(window_size) != (-1, -1):
        raise ValueError(f"window_size: the FP8 forward has no sliding window (got {window_size!r}); "
                         "pass (-1, -1)")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t)
        if t.dtype != DTYPE:
            raise TypeError(f"{name} has dtype {t.dtype}; the FP8 forward takes q, k and v all in "
                            f"{DTYPE} (or all in torch.bfloat16 / torch.float16)")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, seqlen, nheads, headdim); got shape "
                             f"{tuple(t.shape)}")
        check_memory(name, t)
        if t.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{name} requires grad, but the FP8 forward has no backward; call it "
                             "under torch.no_grad() or pass .detach()ed tensors")
    batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim = check_shapes(q, k, v, names)
    for name, t in (("q", q), ("k", k)):
        # TMA reads q and k (the layout pass reads v row by row, any strides).
        dim = broadcast_dim(t)
        if dim is not None:
            raise ValueError(f"{name} has stride 0 in its {dim} dim (an expanded tensor); the FP8 kernel "
                             "loads it with TMA, which cannot broadcast: call .contiguous() on it")
    scale = resolve_scale(softmax_scale, head_dim)
    descales = tuple(_check_descale(name, t, batch, nheads_k, q.device)
                     for name, t in (("q_descale", q_descale), ("k_descale", k_descale),
                                     ("v_descale", v_descale)))
    cfg = _pick_config(config, q, head_dim, seqlen_q, seqlen_k, causal)
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_layout(name, t, cfg["block_m"] if name == "q" else cfg["block_n"])
    inputs = [("q", q), ("k", k), ("v", v)]
    inputs += [(name, t) for name, t in zip(("q_descale", "k_descale", "v_descale"), descales)
               if t is not None]
    if out is not None:
        _check_out(out, q, inputs, cfg["block_m"])
        inputs.append(("out", out))
    check_devices(inputs, cfg)
    if out is None:
        out = torch.empty(q.shape, dtype=OUT_DTYPE, device=q.device)
    lse = (torch.empty((batch, nheads, seqlen_q), dtype=torch.float32, device=q.device)
           if return_lse else None)
    if batch and nheads:
        # Bottom-right causal alignment, as forward's; a mask that hides nothing runs as none.
        offset = seqlen_k - seqlen_q
        is_causal = causal and offset < seqlen_k - 1
        _launch(cfg["name"], q, k, v, out, lse, descales, scale, is_causal, offset if is_causal else 0)
    elif lse is not None:
        lse.fill_(float("-inf"))
    return (out, lse) if return_lse else out


def _launch(config: str, q, k, v, out, lse, descales, scale: float, is_causal: bool,
            causal_offset: int) -> None:
    batch, seqlen_q, nheads, head_dim = q.shape
    seqlen_k, nheads_k = k.shape[1], k.shape[2]
    device = q.device.index
    with torch.cuda.device(device):
        stream = current_stream(device)
        vt = torch.empty((batch, nheads_k, head_dim, _C.fp8_vt_keys(seqlen_k)), dtype=DTYPE, device=q.device)
        _C.fp8_v_layout(v.data_ptr(), vt.data_ptr(), batch, seqlen_k, nheads_k, head_dim, row_strides(v),
                        device, stream)
        ptr = [0 if t is None else t.data_ptr() for t in descales]
        vt_strides = (vt.stride(0) if batch > 1 else 0, vt.stride(2), vt.stride(1) if nheads_k > 1 else 0)
        _C.fp8_forward(config, q.data_ptr(), k.data_ptr(), vt.data_ptr(), out.data_ptr(),
                       0 if lse is None else lse.data_ptr(), *ptr, batch, seqlen_q, seqlen_k, nheads,
                       nheads_k, head_dim, row_strides(q), row_strides(k), vt_strides, row_strides(out),
                       scale, is_causal, causal_offset, device, stream)


def _check_descale(name: str, t, batch: int, nheads_k: int, device: torch.device) -> Optional[torch.Tensor]:
    """None (a factor of 1), or a float32 (batch, nheads_k) tensor on q's device, returned
    contiguous (a copy only where it is not)."""
    if t is None:
        return None
    check_tensor(name, t)
    if t.dtype != torch.float32:
        raise TypeError(f"{name} has dtype {t.dtype}; descale factors are torch.float32")
    if tuple(t.shape) != (batch, nheads_k):
        raise ValueError(f"{name} has shape {tuple(t.shape)}; it must be (batch, nheads_k) = "
                         f"({batch}, {nheads_k}): one factor per batch entry and K/V head")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but q is on {device}; all tensors must be on one "
                         "CUDA device")
    check_memory(name, t)
    return t.contiguous()


def _pick_config(config, q: torch.Tensor, head_dim: int, seqlen_q: int, seqlen_k: int,
                 causal: bool) -> dict:
    """A config built for e4m3: the named one, or auto's pick (`_C.default_fp8_config`: the tile
    of src/tile_size.h's sm90_fp8_fwd_tile). The FP8 configs are not tuned."""
    fp8 = [c for c in CONFIGS.values() if DTYPE_NAME in c["dtypes"]]
    if config is None:
        config = AUTO
    check_config_type(config)
    if config != AUTO:
        cfg = CONFIGS.get(config)
        if cfg is None or DTYPE_NAME not in cfg["dtypes"]:
            raise ValueError(f"config {config!r} is not built for e4m3; the FP8 configs of this build: "
                             f"{', '.join(c['name'] for c in fp8) or 'none'}")
        if cfg["head_dim"] != head_dim:
            raise ValueError(f"config {config!r} is for head_dim {cfg['head_dim']}, but q, k and v "
                             f"have headdim {head_dim}")
        return cfg
    if not any(c["head_dim"] == head_dim for c in fp8):
        dims = sorted({c["head_dim"] for c in fp8})
        raise ValueError(f"headdim of q ({head_dim}) has no FP8 kernel in this build; FP8 head dims: "
                         f"{', '.join(map(str, dims)) or 'none (built without e4m3)'}")
    if not q.is_cuda:
        # The device check refuses a CPU tensor; any e4m3 config lets the checks before it run.
        return next(c for c in fp8 if c["head_dim"] == head_dim)
    gpu, cc = gpu_of(q.device.index)
    if cc != (9, 0):
        raise ValueError(f"the FP8 forward runs on Hopper GPUs (compute capability 9.0); {q.device} "
                         f"({gpu}) has {cc[0]}.{cc[1]}")
    return CONFIGS[_C.default_fp8_config(head_dim, seqlen_q, seqlen_k, cc[0], cc[1], causal)]


def _check_out(out, q: torch.Tensor, inputs, block_rows: int) -> None:
    """out: a bf16 tensor of q's shape, laid out as the kernel stores, apart from every input
    (q, k, v and the descales: (name, tensor) pairs)."""
    check_tensor("out", out)
    if out.dtype != OUT_DTYPE:
        raise TypeError(f"out has dtype {out.dtype}; the FP8 forward writes {OUT_DTYPE}")
    if out.shape != q.shape:
        raise ValueError(f"out has shape {tuple(out.shape)}; it must match q {tuple(q.shape)}")
    check_memory("out", out)
    check_layout("out", out, block_rows)
    if overlaps_itself(out):
        raise ValueError("out has elements that share memory (e.g. an expanded tensor); pass a tensor "
                         "with one memory location per element")
    for name, t in inputs:
        if spans_overlap(out, t):
            raise ValueError(f"out overlaps the memory of {name}; pass a separate output tensor")
