"""Input validation: every check of `forward`'s and `sdpa`'s arguments, and `validate`, which
runs them and resolves what the launch needs (`_launch.Launch`). The checks of q, k and v
alone (`check_inputs`, `check_shapes`) and of one tensor's layout are shared with the
backward's validation (`_backward`).

The checks are ordered so that the device comes last: CPU tensors then reach every other
check, which lets the tests exercise all of them on a machine with no GPU. Type problems
raise TypeError, everything else ValueError; each message names the argument and says what
is allowed. One exception: `forward_timed` with inputs that require grad while grad mode
is on raises NotImplementedError (`check_no_grad`): the values are valid, and `forward`
takes them.
"""

import math
import numbers
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from . import _C
from ._configs import (AUTO, DTYPE_NAMES, check_config_fits, gpu_of, pick_config, sm80_default,
                       smem_limit_of)
from ._launch import (ALIGN_BYTES, MAX_TILE_OFFSET, Launch, launch_strides, packable,
                      row_strides)

__all__ = ["ALLOWED_DTYPES", "FORWARD_NAMES", "LIMITS", "Names", "SDPA_NAMES", "broadcast_dim",
           "check_devices", "check_flag", "check_inputs", "check_layout", "check_memory",
           "check_no_grad", "check_shapes", "check_tensor", "extent_bytes", "grad_mode",
           "layout_hint", "overlaps_itself", "requires_grad", "resolve_scale", "scale_arg",
           "softcap_arg", "spans_overlap", "validate", "window_arg"]

ALLOWED_DTYPES = "torch.bfloat16 or torch.float16"

# The bounds of what the kernels take, from the build itself (src/flash_params.h): lengths
# ("max_seqlen") and thread-block tiles of one launch ("max_tiles"), numbered in int.
LIMITS: Dict[str, int] = _C.limits()


class Names(NamedTuple):
    """The arguments' names in messages: forward's or sdpa's (the same checks serve both)."""

    q: str
    k: str
    v: str
    causal: str
    scale: str

    @property
    def kv(self) -> str:
        return f"{self.k} and {self.v}"


FORWARD_NAMES = Names("q", "k", "v", "causal", "softmax_scale")
SDPA_NAMES = Names("query", "key", "value", "is_causal", "scale")

# Whether autograd would record an op now: False under torch.no_grad() and
# torch.inference_mode(). Asked first, so that inference pays for one call.
grad_mode = torch.is_grad_enabled


def requires_grad(q, k, v) -> bool:
    """Whether q, k or v requires grad (asked in grad mode only). Arguments that are not
    tensors count as not requiring it: the type checks that follow name them."""
    try:
        return q.requires_grad or k.requires_grad or v.requires_grad
    except AttributeError:
        return any(isinstance(t, torch.Tensor) and t.requires_grad for t in (q, k, v))


def check_no_grad(q, k, v, names: Names, api: str) -> None:
    """In grad mode, refuse inputs that require grad for an entry point that records no
    gradient (`forward_timed`): its output would have no grad_fn, and training code would
    run on without training what produced q, k and v."""
    if not requires_grad(q, k, v):
        return
    for name, t in zip(names[:3], (q, k, v)):
        if isinstance(t, torch.Tensor) and t.requires_grad:
            raise NotImplementedError(
                f"{name} requires grad, but fa_cute.{api} records no gradient (it times the "
                "forward kernel alone): call fa_cute.forward to train, or call "
                f"{api} under torch.no_grad() or torch.inference_mode(), or pass .detach()ed "
                "tensors")


def validate(q, k, v, *, causal, bottom_right: bool, softmax_scale, config, out,
             names: Names = FORWARD_NAMES, softcap=0.0, window_size=(-1, -1)) -> Launch:
    """Check every argument, the device last; return what the launch needs.

    bottom_right: forward's causal alignment, else sdpa's top-left. names: the arguments'
    names in messages. Messages are built only when a check fails, so a valid call pays for
    comparisons alone.
    """
    q_name = names.q
    check_flag(names.causal, causal)
    cap = softcap_arg(softcap)
    window_left, window_right = window_arg(window_size, causal)
    inputs = check_inputs(q, k, v, names)
    if out is not None:
        # Before the packing decision reads out's strides: a bad out gets the same error
        # whatever the shapes.
        _check_out_like_q(out, q, q_name)
    batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim = check_shapes(q, k, v, names)

    # A causal mask that hides nothing (row 0 already sees the last key: one query row
    # aligned bottom-right, or one key aligned top-left) is launched as non-causal, which
    # spares the masking and lets a decode step pack.
    offset = seqlen_k - seqlen_q if bottom_right else 0
    is_causal = causal and offset < seqlen_k - 1
    # A bound at or past every key of every row is none (and keeps the kernel's block
    # arithmetic within int).
    if window_left >= seqlen_q + seqlen_k:
        window_left = -1
    if window_right >= seqlen_q + seqlen_k:
        window_right = -1
    windowed = window_left >= 0 or window_right >= 0
    # A packed decode's tile rows are heads, not queries: a window's mask needs the query.
    packed = (seqlen_q == 1 and nheads > nheads_k and not is_causal and not windowed
              and packable(q) and (out is None or packable(out)))
    launch_seqlen_q, launch_nheads = ((nheads // nheads_k, nheads_k) if packed
                                      else (seqlen_q, nheads))

    cfg = pick_config(config, q, head_dim, is_causal, launch_seqlen_q, seqlen_k, names)
    scale = resolve_scale(softmax_scale, head_dim, names.scale)
    if cfg["family"] == "sm90a":
        # TMA (the Hopper kernel's loads) cannot broadcast: an expanded tensor (stride 0 in
        # a dim of size > 1) goes to the sm80 kernel, which reads it row by row.
        broadcast = next(((name, dim) for name, t in inputs
                          if (dim := broadcast_dim(t)) is not None), None)
        if broadcast is not None:
            if config not in (None, AUTO):
                raise ValueError(
                    f"{broadcast[0]} has stride 0 in its {broadcast[1]} "
                    f"dim (an expanded tensor); config {cfg['name']!r} loads with TMA, which "
                    f"cannot broadcast: call .contiguous() on it, or use config='auto'")
            cfg = sm80_default(head_dim, launch_seqlen_q, seqlen_k, is_causal,
                               f"{broadcast[0]} has stride 0 in its {broadcast[1]} dim (an "
                               "expanded tensor, which TMA cannot load; call .contiguous() on it)")
    if cfg["family"] == "sm90a" and cap and cfg["head_dim"] >= 256:
        # The Hopper d=256 kernels have no softcap (src/sm90/fwd_launch_sm90.h).
        if config not in (None, AUTO):
            raise ValueError(f"softcap: config {cfg['name']!r} (Hopper, head dim 256) has no "
                             "softcap; use config='auto' or an sm80 config")
        cfg = sm80_default(head_dim, launch_seqlen_q, seqlen_k, is_causal,
                           "softcap (the Hopper d=256 kernels have none)")

    for (name, t), rows in zip(inputs, ("block_m", "block_n", "block_n")):
        check_layout(name, t, cfg[rows])
    if out is not None:
        _check_out(out, q, k, v, cfg["block_m"], names)
        inputs.append(("out", out))
    check_devices(inputs, cfg, q_name)
    return Launch(cfg["name"], DTYPE_NAMES[q.dtype], batch, launch_seqlen_q, seqlen_k,
                  launch_nheads, nheads_k, head_dim, scale, is_causal,
                  offset if is_causal or windowed else 0, packed,
                  launch_strides(q, packed, nheads_k), row_strides(k), row_strides(v), cap,
                  window_left, -1 if causal else window_right)


def check_inputs(q, k, v, names: Names) -> List[Tuple[str, torch.Tensor]]:
    """q, k and v are 4-D strided tensors of one allowed dtype whose storages hold them;
    returns them by name, in order."""
    q_name = names.q
    inputs = [(q_name, q), (names.k, k), (names.v, v)]
    for name, t in inputs:
        check_tensor(name, t)
    if q.dtype not in DTYPE_NAMES:
        raise TypeError(f"{q_name} has dtype {q.dtype}; allowed: {ALLOWED_DTYPES}")
    for name, t in inputs[1:]:
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {q_name} has {q.dtype}; "
                            f"{q_name}, {names.k} and {names.v} must share one dtype "
                            f"({ALLOWED_DTYPES})")
    for name, t in inputs:
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, seqlen, nheads, headdim); got shape "
                             f"{tuple(t.shape)}")
        check_memory(name, t)
    return inputs


def check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 names: Names) -> Tuple[int, int, int, int, int, int]:
    """The shapes of q, k and v (`check_inputs` passed) agree and are within the kernels'
    bounds; returns (batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim)."""
    q_name, k_name, v_name = names.q, names.k, names.v
    batch, seqlen_q, nheads, head_dim = q.shape
    if k.shape != v.shape:
        raise ValueError(f"{names.kv} must have the same shape; got {k_name} "
                         f"{tuple(k.shape)} and {v_name} {tuple(v.shape)}")
    _, seqlen_k, nheads_k, _ = k.shape
    if k.shape[0] != batch:
        raise ValueError(f"batch of {names.kv} ({k.shape[0]}) must equal batch of {q_name} "
                         f"({batch})")
    if k.shape[3] != head_dim:
        raise ValueError(f"headdim of {names.kv} ({k.shape[3]}) must equal headdim of "
                         f"{q_name} ({head_dim})")
    if seqlen_q < 1:
        raise ValueError(f"seqlen of {q_name} must be >= 1; got {seqlen_q}")
    if seqlen_k < 1:
        raise ValueError(f"seqlen of {names.kv} must be >= 1; got {seqlen_k}")
    # The kernels take these sizes as 32-bit ints (beyond them pybind11 refuses the call with
    # a dump of its signature) and index within them in 32 bits. Heads count as lengths too:
    # a grouped-query decode launches nheads // nheads_k as its query length.
    max_len = LIMITS["max_seqlen"]
    for dim, of_q, n in (("batch", True, batch), ("seqlen", True, seqlen_q),
                         ("seqlen", False, seqlen_k), ("nheads", True, nheads),
                         ("nheads", False, nheads_k)):
        if n > max_len:
            raise ValueError(f"{dim} of {q_name if of_q else names.kv} is {n}; at most "
                             f"{max_len} is supported (the kernels index in 32 bits: "
                             "fa_cute._C.limits()['max_seqlen'])")
    if batch * nheads > LIMITS["max_tiles"]:
        raise ValueError(f"batch * nheads of {q_name} is {batch} * {nheads} = {batch * nheads}; "
                         f"at most {LIMITS['max_tiles']} is supported (the kernels number "
                         "their tiles in 32 bits: fa_cute._C.limits()['max_tiles'])")
    # Only 0 is a multiple of 0: nheads_k 0 passes with nheads 0 alone (an empty problem).
    if (nheads % nheads_k if nheads_k else nheads):
        raise ValueError(f"nheads of {q_name} ({nheads}) must be a multiple of nheads of "
                         f"{names.kv} ({nheads_k})"
                         + layout_hint(names, seqlen_q, seqlen_k))
    return batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim


def layout_hint(names: Names, other_nheads: int, other_nheads_k: int) -> str:
    """A clause for a heads mismatch that the other layout would not have (other_nheads and
    other_nheads_k: the sizes the heads would have if dims 1 and 2 were swapped): SDPA's
    (batch, nheads, seqlen, headdim) tensors passed to forward, or FlashAttention's
    (batch, seqlen, nheads, headdim) passed to sdpa. Built on the error path only."""
    if not (other_nheads_k and other_nheads % other_nheads_k == 0):
        return ""
    if names is SDPA_NAMES:
        return ("; if query, key and value are (batch, seqlen, nheads, headdim) tensors "
                "(FlashAttention's layout), call fa_cute.forward on them, or pass "
                ".transpose(1, 2) views to sdpa, which takes (batch, nheads, seqlen, headdim)")
    return (f"; if {names.q}, {names.k} and {names.v} are (batch, nheads, seqlen, headdim) "
            f"tensors (torch SDPA's layout), pass {names.q}.transpose(1, 2), "
            f"{names.k}.transpose(1, 2) and {names.v}.transpose(1, 2) (views, no copies) or "
            "call fa_cute.sdpa: forward takes (batch, seqlen, nheads, headdim)")


def broadcast_dim(t: torch.Tensor) -> Optional[str]:
    """The name of t's first dim of size > 1 with stride 0, or None."""
    for dim, n, s in zip(("batch", "seqlen", "nheads", "headdim"), t.shape, t.stride()):
        if n > 1 and s == 0:
            return dim
    return None


def check_flag(name: str, value) -> None:
    """A bool option, so that a mask tensor or a string passed by mistake fails loudly."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; got {type(value).__name__}")


def resolve_scale(scale, head_dim: int, name: str = "softmax_scale") -> float:
    """1/sqrt(headdim) by default; otherwise a finite real number > 0.

    Zero and negative scales are refused: the kernel's online softmax takes each row's
    maximum of the unscaled scores, which is the row's maximum of the scaled ones only for
    a positive scale.
    """
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    return scale_arg(scale, name)


def window_arg(window_size, causal) -> Tuple[int, int]:
    """window_size as (left, right) ints, each -1 (unbounded) or >= 0; with causal the right
    bound is the diagonal, so only -1 or 0 may be given for it."""
    # A tuple of two ints (the default's type) is read without the ABC checks, which cost
    # microseconds on every recorded training call.
    if type(window_size) is tuple and len(window_size) == 2 and type(window_size[0]) is int \
            and type(window_size[1]) is int:
        left, right = window_size
    elif (not isinstance(window_size, (tuple, list)) or len(window_size) != 2
            or not all(isinstance(w, numbers.Integral) and not isinstance(w, bool)
                       for w in window_size)):
        raise TypeError(f"window_size must be a pair of ints (left, right), -1 for unbounded; "
                        f"got {window_size!r}")
    else:
        left, right = (int(w) for w in window_size)
    if left < -1 or right < -1:
        raise ValueError(f"window_size must hold -1 (unbounded) or ints >= 0; got {window_size!r}")
    if causal is True and right > 0:
        raise ValueError(f"window_size={window_size!r} with causal=True: causal bounds each row "
                         "at its diagonal, so the right bound must be -1 or 0")
    return left, right


def softcap_arg(softcap) -> float:
    """The logits softcap as a float: 0 (none) or a finite real number > 0."""
    if type(softcap) is float and 0.0 <= softcap < math.inf:  # the default's type, no ABC check
        return softcap
    if not isinstance(softcap, numbers.Real) or isinstance(softcap, bool):
        raise TypeError(f"softcap must be a real number (0.0 for none); got "
                        f"{type(softcap).__name__}")
    try:
        value = float(softcap)
    except OverflowError:  # an int beyond float range
        value = math.inf
    # Comparisons, not math.isfinite: torch.compile(dynamic=True) traces a float argument as
    # a symbolic one, which math.isfinite cannot take (NaN fails both comparisons).
    if not 0.0 <= value < math.inf:
        raise ValueError(f"softcap must be 0.0 (none) or a finite number > 0; got {softcap}")
    return value


def scale_arg(scale, name: str) -> Optional[float]:
    """`resolve_scale`'s checks of a given scale, as a float (None stays None): what the
    custom ops take, checked before tracing hands them a float."""
    if scale is None:
        return None
    if not isinstance(scale, numbers.Real) or isinstance(scale, bool):
        raise TypeError(f"{name} must be a real number or None; got {type(scale).__name__}")
    try:
        value = float(scale)
    except OverflowError:  # an int beyond float range
        value = math.inf
    if not 0.0 < value < math.inf:  # as softcap_arg's (NaN fails both)
        raise ValueError(f"{name} must be a finite number > 0; got {scale}")
    return value


def _check_out_like_q(out, q: torch.Tensor, q_name: str) -> None:
    """out is a tensor of q's dtype and shape whose memory holds it: what `_check_out` then
    takes for granted."""
    check_tensor("out", out)
    if out.dtype != q.dtype:
        raise TypeError(f"out has dtype {out.dtype}; it must match {q_name} ({q.dtype})")
    if out.shape != q.shape:
        raise ValueError(f"out has shape {tuple(out.shape)}; it must match {q_name} "
                         f"{tuple(q.shape)}")
    check_memory("out", out)


def _check_out(out, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_rows: int,
               names: Names = FORWARD_NAMES) -> None:
    """out (already `_check_out_like_q`) must have one memory location per element, and not
    alias k or v.

    Each thread block reads its own Q tile before it writes the same rows of O, so out may
    be q itself (same address and strides); any other overlap with q, and every overlap
    with k or v (read by all blocks while others write), would race.
    """
    q_name = names.q
    check_layout("out", out, block_rows)
    if overlaps_itself(out):
        raise ValueError("out has elements that share memory (e.g. an expanded tensor); pass "
                         "a tensor with one memory location per element")
    is_q = out.data_ptr() == q.data_ptr() and out.stride() == q.stride()
    for name, t in ((q_name, q), (names.k, k), (names.v, v)):
        if not (name == q_name and is_q) and spans_overlap(out, t):
            raise ValueError(f"out overlaps the memory of {name}; pass a separate output "
                             "tensor" + (f" (or {q_name} itself)" if name == q_name else ""))


def check_layout(name: str, t: torch.Tensor, block_rows: int) -> None:
    """The kernel's 16-byte loads need a contiguous last dim, batch/seqlen/nheads strides
    that are whole multiples of 16 bytes, and a 16-byte aligned start; its 32-bit in-tile
    offsets need block_rows * seqlen stride below 2^31."""
    if t.stride(3) != 1:
        raise ValueError(f"{name} must have a contiguous last dim (headdim stride 1); got "
                         f"strides {_strides_text(t)}; call .contiguous() on it")
    multiple = ALIGN_BYTES // t.element_size()
    if any(s % multiple for s in row_strides(t)):
        raise ValueError(f"{name} has strides {_strides_text(t)}; the batch, seqlen and nheads "
                         f"strides must be multiples of {multiple} elements ({ALIGN_BYTES} "
                         f"bytes) for the kernel's {ALIGN_BYTES}-byte loads; call "
                         ".contiguous() on it")
    row_stride_limit = MAX_TILE_OFFSET // block_rows
    if row_strides(t)[1] >= row_stride_limit:
        raise ValueError(f"{name} has seqlen stride {t.stride(1)}; it must be below "
                         f"{row_stride_limit} elements (2^31 / {block_rows} rows of a tile: the "
                         "kernel's in-tile offsets are 32-bit); call .contiguous() on it")
    if t.data_ptr() % ALIGN_BYTES:
        raise ValueError(f"{name}.data_ptr() is not {ALIGN_BYTES}-byte aligned (the kernel "
                         f"uses {ALIGN_BYTES}-byte loads); pass a copy made with .clone()")


def _strides_text(t: torch.Tensor) -> str:
    """Strides by dim name: sdpa validates transposed views of its arguments, so a bare
    tuple would list them in an order its caller never saw."""
    return ", ".join(f"{dim} {s}" for dim, s in zip(("batch", "seqlen", "nheads", "headdim"),
                                                    t.stride()))


def check_devices(tensors: Sequence[Tuple[str, torch.Tensor]], cfg: Optional[dict],
                  q_name: str = "q") -> None:
    """All tensors on one CUDA device whose compute capability and shared memory the
    config fits (cfg None: a config `_C.configs()` does not describe, which `_C` checks)."""
    for name, t in tensors:
        if not t.is_cuda:
            raise ValueError(f"{name} is on {t.device}; fa_cute runs on CUDA tensors only "
                             "(move them to a GPU, e.g. with .cuda())")
    device = tensors[0][1].device
    for name, t in tensors[1:]:
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but {q_name} is on {device}; all "
                             "tensors must be on one CUDA device")
    if cfg is None:
        return
    gpu, cc = gpu_of(device.index)
    check_config_fits(cfg, f"{device} ({gpu})", cc, smem_limit_of(device.index))


def overlaps_itself(t: torch.Tensor) -> bool:
    """Whether two elements of t may share memory (stride 0, or interleaved dims).

    Conservative: sorted by stride, each dim must step past everything the smaller dims
    reach. Dense tensors and slices of larger tensors pass.
    """
    if t.numel() == 0:
        return False
    reach = 0
    for stride, size in sorted((s, n) for n, s in zip(t.shape, t.stride()) if n > 1):
        if stride <= reach:
            return True
        reach += stride * (size - 1)
    return False


def spans_overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the byte ranges [first element, last element] of a and b intersect."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + extent_bytes(b) and b0 < a0 + extent_bytes(a)


def extent_bytes(t: torch.Tensor) -> int:
    """The bytes t's elements span from its first: 0 for an empty tensor."""
    if t.numel() == 0:
        return 0
    last = sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return (last + 1) * t.element_size()


def check_memory(name: str, t: torch.Tensor) -> None:
    """t's values are what the kernel reads at t.data_ptr(): its storage holds every element
    (a storage freed with .untyped_storage().resize_(0), as FSDP does to sharded parameters,
    holds none: the kernel would read freed memory) and no lazy negation is pending (a
    `_neg_view` negates on read in PyTorch's kernels only). Conjugate views are complex,
    which the dtype check refuses first."""
    if t.is_neg():
        raise ValueError(f"{name} is a negated view (is_neg() is True), whose values the kernel "
                         "would read un-negated; call .resolve_neg() on it")
    end = t.storage_offset() * t.element_size() + extent_bytes(t)
    if t.numel() and end > t.untyped_storage().nbytes():
        raise ValueError(f"{name} reaches byte {end} of its storage, which holds "
                         f"{t.untyped_storage().nbytes()} bytes (a storage freed with "
                         ".untyped_storage().resize_(0), as FSDP does, holds 0); pass a tensor "
                         "whose storage holds all its elements")


def check_tensor(name: str, t) -> None:
    """A strided torch.Tensor: the kernel needs data_ptr() and strides."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) torch.Tensor; got layout {t.layout}")
    if t.is_nested:  # a nested tensor of strided layout has neither shape nor strides
        raise TypeError(f"{name} must be a dense (strided) torch.Tensor; got a nested tensor")
