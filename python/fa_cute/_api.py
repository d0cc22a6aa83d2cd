"""The user API: validate torch tensors, turn them into the integers of the `_C` contract
(docs/design.md) and call the kernel on PyTorch's current stream.

Every check lives in `_validate`, ordered so that the device comes last: CPU tensors then
reach every other check, which lets the tests exercise all of them on a machine with no GPU.
Type problems raise TypeError, everything else ValueError; each message names the argument
and says what is allowed. One exception: inputs that require grad while grad mode is on raise
NotImplementedError (`_check_no_grad`): the values are valid and the same call works under
torch.no_grad(); what is missing is the backward, which the training issue adds.

Under torch.compile the entry points call registered custom ops (`fa_cute::forward`,
`fa_cute::forward_out`, `fa_cute::sdpa`, end of this file) whose real implementations are
the eager code below, so the tuning cache and `_C` are read when the compiled graph runs,
never while it is traced; eager calls skip the dispatcher.
"""

import copy
import functools
import importlib.util
import math
import numbers
import re
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch

if importlib.util.find_spec(f"{__package__}._C") is None:
    raise ImportError(
        "fa_cute._C is not built (this is the source tree, or a broken install): install "
        "fa_cute from a source checkout with `pip install scikit-build-core pybind11 ninja && "
        "pip install --no-deps nvidia-cutlass==4.2.0.0 && pip install --no-build-isolation .` "
        "(see README.md)")
from . import _C  # noqa: E402  (after the check that explains a missing build)
from . import _tuned, _tuning  # noqa: E402

# config="auto" (or None): the tuning cache, else the built-in table, else the heuristic.
AUTO = "auto"

_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}
_ALLOWED_DTYPES = "torch.bfloat16 or torch.float16"

# The kernels load and store 16 bytes at a time, so every row must start 16-byte aligned.
_ALIGN_BYTES = 16

# The kernel addresses a tile's rows with 32-bit offsets.
_MAX_TILE_OFFSET = 2**31

# The bounds of what the kernels take, from the build itself (src/flash_params.h): lengths
# ("max_seqlen") and thread-block tiles of one launch ("max_tiles"), numbered in int.
_LIMITS: Dict[str, int] = _C.limits()

# Compute capability used to pick the default config for tensors that are not on a GPU.
# Such tensors are rejected by the final device check anyway; the placeholder only lets the
# checks before it (the layout against the config's block sizes) run on CPU tensors.
_PLACEHOLDER_CC = (8, 0)

_CONFIGS: Dict[str, dict] = {c["name"]: c for c in _C.configs()}

# The most rows any built tile holds: the bound for the in-tile offsets of a decode launch,
# which is decided before its config is (the config depends on the launch's shape).
_MAX_BLOCK_M = max(c["block_m"] for c in _CONFIGS.values())



class _Names(NamedTuple):
    """The arguments' names in messages: forward's or sdpa's (the same checks serve both)."""

    q: str
    k: str
    v: str
    causal: str
    scale: str

    @property
    def kv(self) -> str:
        return f"{self.k} and {self.v}"


_FORWARD_NAMES = _Names("q", "k", "v", "causal", "softmax_scale")
_SDPA_NAMES = _Names("query", "key", "value", "is_causal", "scale")

Result = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


class _Launch(NamedTuple):
    """What `_validate` resolved: everything `_C.forward` needs besides the tensors.

    Sizes are those of the launch: a grouped-query decode (`packed`) runs as
    nheads // nheads_k query rows of nheads_k heads (`_packed_strides`).
    """

    config: str
    dtype: str
    batch: int
    seqlen_q: int
    seqlen_k: int
    nheads: int
    nheads_k: int
    head_dim: int
    softmax_scale: float
    is_causal: bool
    causal_offset: int
    packed: bool
    # (batch, seqlen, nheads) element strides of q, k and v as launched (`_launch_strides`):
    # the validation cache keys on the strides, so they are computed once per shape.
    q_strides: Tuple[int, int, int]
    k_strides: Tuple[int, int, int]
    v_strides: Tuple[int, int, int]


def configs() -> List[dict]:
    """The kernel configs compiled into this build (a copy: callers may modify it)."""
    return copy.deepcopy(list(_CONFIGS.values()))


def resolve_config(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                   config: Optional[str] = AUTO) -> str:
    """The name of the config that `forward(q, k, v, causal=causal, config=config)` would run.

    With "auto" (or None): the pick of the tuning cache for this GPU and shape, else of the
    built-in table, else of the heuristic. The inputs are validated as `forward` does them,
    with the same errors, and nothing runs on the GPU.
    """
    return _validate(q, k, v, causal=causal, bottom_right=True, softmax_scale=None,
                     config=config, out=None).config


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
            softmax_scale: Optional[float] = None, return_lse: bool = False,
            config: Optional[str] = AUTO, out: Optional[torch.Tensor] = None) -> Result:
    """Attention forward, softmax(q k^T * softmax_scale) v.

    q: (batch, seqlen_q, nheads, headdim); k, v: (batch, seqlen_k, nheads_k, headdim);
    bf16 or fp16 CUDA tensors of one device; any strides whose last dim is contiguous and
    whose other strides are multiples of 16 bytes, so (batch, nheads, seqlen, headdim)
    storage viewed with `.transpose(1, 2)` works without a copy. seqlen_q and seqlen_k are
    independent (>= 1). nheads must be a multiple of nheads_k (grouped-query and multi-query
    attention): query head h reads K/V head h // (nheads // nheads_k), without copies.

    causal: query row i sees key j iff j <= i + seqlen_k - seqlen_q (bottom-right aligned,
    as FlashAttention >= 2.1, the KV-cache convention; torch SDPA and `sdpa` align top-left,
    which differs when seqlen_q != seqlen_k). Rows that see no key (seqlen_q > seqlen_k)
    get output 0 and LSE -inf. softmax_scale defaults to 1/sqrt(headdim).

    return_lse: also return the float32 log-sum-exp of each row's scaled scores (natural
    log), a new contiguous (batch, nheads, seqlen_q) tensor, as `(out, lse)`.

    config names a kernel config from `configs()`, or is "auto" (the default; None means the
    same): the config `python -m fa_cute.tune` measured fastest for this GPU, dtype, head
    dim, causality and seqlen_q bucket (its cache, then a built-in table), else the
    heuristic's pick; see `resolve_config`. Nothing is tuned or timed here.

    out, if given, receives the result and is returned (it may be q itself, not another
    view overlapping q, k or v); otherwise a new tensor with q's memory layout (contiguous
    if q is not dense) is returned. No tensor may be a negated view (`.resolve_neg()` it)
    or lack its memory (a storage freed with `.untyped_storage().resize_(0)`); batch,
    seqlens and head counts are bounded by `fa_cute._C.limits()`. The kernel runs on PyTorch's current stream of the
    tensors' device.

    There is no backward yet: with grad mode on, a q, k or v that requires grad raises
    NotImplementedError (run under torch.no_grad() or torch.inference_mode(), pass
    .detach()ed tensors, or train with torch's own SDPA). Under torch.compile the call
    becomes the custom op fa_cute::forward (fa_cute::forward_out with out=), which
    fullgraph=True traces; its arguments are then checked when the compiled graph runs.
    """
    if _is_compiling() and _OPS:
        return _forward_traced(q, k, v, causal, softmax_scale, return_lse, config, out)
    if _grad_mode():
        _check_no_grad(q, k, v, _FORWARD_NAMES, "forward")
    return _run(q, k, v, causal=causal, bottom_right=True, softmax_scale=softmax_scale,
                return_lse=return_lse, config=config, out=out, timed=False)[0]


def forward_timed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                  softmax_scale: Optional[float] = None, return_lse: bool = False,
                  config: Optional[str] = AUTO, out: Optional[torch.Tensor] = None
                  ) -> Tuple[Result, float]:
    """Like `forward`, and also return the kernel's own time in milliseconds:
    `(result, ms)`, where result is what `forward` returns.

    The time comes from CUDA events recorded around the launch, and the call waits for the
    kernel to finish. An empty problem (batch or nheads 0) launches nothing and returns 0.0.
    Inputs that require grad are refused as in `forward`. Eager only: under torch.compile
    use `forward` (a timing that synchronizes has no place in a graph).
    """
    if _grad_mode():
        _check_no_grad(q, k, v, _FORWARD_NAMES, "forward_timed")
    return _run(q, k, v, causal=causal, bottom_right=True, softmax_scale=softmax_scale,
                return_lse=return_lse, config=config, out=out, timed=True)


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
         attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
         is_causal: bool = False, *, scale: Optional[float] = None,
         enable_gqa: bool = False) -> torch.Tensor:
    """A drop-in for `torch.nn.functional.scaled_dot_product_attention` on 4-D
    (batch, nheads, seqlen, headdim) bf16/fp16 CUDA tensors.

    Same semantics as torch's: is_causal is top-left aligned (query row i sees key j iff
    j <= i, whatever the lengths; `forward` aligns bottom-right), scale defaults to
    1/sqrt(headdim), and query heads that differ from key/value heads need
    enable_gqa=True. What the kernel does not do is refused with a ValueError rather than
    approximated: attn_mask (other than None), dropout_p != 0, tensors that are not 4-D,
    scale <= 0. Returns a new contiguous (batch, nheads, seqlen_q, headdim) tensor. The
    other rules (dtypes, strides, one device, no inputs that require grad, the custom op
    fa_cute::sdpa under torch.compile) are `forward`'s.
    """
    if attn_mask is not None:
        raise ValueError("attn_mask must be None: fa_cute.sdpa supports no masks besides "
                         "is_causal; use torch.nn.functional.scaled_dot_product_attention "
                         "for masked attention")
    if not isinstance(dropout_p, numbers.Real) or isinstance(dropout_p, bool):
        raise TypeError(f"dropout_p must be a real number; got {type(dropout_p).__name__}")
    if dropout_p != 0:
        raise ValueError(f"dropout_p must be 0.0: fa_cute.sdpa has no dropout; got "
                         f"{dropout_p}; use torch.nn.functional.scaled_dot_product_attention "
                         "for dropout")
    _check_flag("is_causal", is_causal)
    _check_flag("enable_gqa", enable_gqa)
    tensors = (query, key, value)
    for name, t in zip(_SDPA_NAMES[:3], tensors):
        _check_tensor(name, t)
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, nheads, seqlen, headdim); got shape "
                             f"{tuple(t.shape)}")
    # The checks that `_validate` also makes, here in sdpa's layout, so that the messages
    # show the shapes as the caller holds them.
    if key.shape != value.shape:
        raise ValueError(f"key and value must have the same shape; got key "
                         f"{tuple(key.shape)} and value {tuple(value.shape)}")
    if query.shape[1] != key.shape[1] and not enable_gqa:
        raise ValueError(f"query has {query.shape[1]} heads but key and value have "
                         f"{key.shape[1]}; pass enable_gqa=True for grouped-query attention "
                         "(query heads a multiple of key/value heads)"
                         + _layout_hint(_SDPA_NAMES, query.shape[2], key.shape[2]))
    if _is_compiling() and _OPS:
        # The checks above read flags and shapes only, which tracing turns into guards.
        return _OPS["sdpa"](query, key, value, is_causal, _scale_arg(scale, "scale"))
    if _grad_mode():
        _check_no_grad(query, key, value, _SDPA_NAMES, "sdpa")
    return _sdpa_run(query, key, value, is_causal, scale)


def _sdpa_run(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, is_causal: bool,
              scale) -> torch.Tensor:
    """sdpa after its own checks: validate the transposed views, launch, return the output."""
    tensors = (query, key, value)
    try:
        q, k, v = tuple(t.transpose(1, 2) for t in tensors)
    except RuntimeError:
        # PyTorch refuses to view a tensor beyond its storage (one freed under it, as FSDP
        # does): say which argument, at no cost to calls that pass.
        for name, t in zip(_SDPA_NAMES[:3], tensors):
            _check_memory(name, t)
        raise
    launch = _validate_cached(q, k, v, causal=is_causal, bottom_right=False,
                              softmax_scale=scale, config=AUTO, out=None, names=_SDPA_NAMES)
    batch, nheads, seqlen_q, head_dim = query.shape
    out = torch.empty((batch, nheads, seqlen_q, head_dim), dtype=query.dtype,
                      device=query.device)
    _launch(launch, q, k, v, out.transpose(1, 2), None, timed=False)
    return out


# Whether autograd would record an op now: False under torch.no_grad() and
# torch.inference_mode(). Asked first, so that inference pays for one call.
_grad_mode = torch.is_grad_enabled


def _check_no_grad(q, k, v, names: "_Names", api: str) -> None:
    """In grad mode, refuse inputs that require grad: the output would have no grad_fn, and
    training code would run on without training what produced q, k and v. Arguments that
    are not tensors are left to the type checks that follow, which name them."""
    try:
        if not (q.requires_grad or k.requires_grad or v.requires_grad):
            return
    except AttributeError:
        pass
    for name, t in zip(names[:3], (q, k, v)):
        if isinstance(t, torch.Tensor) and t.requires_grad:
            raise NotImplementedError(
                f"{name} requires grad, but fa_cute.{api} has no backward yet (its output "
                "would carry no gradient to it): call it under torch.no_grad() or "
                "torch.inference_mode(), pass .detach()ed tensors, or use "
                "torch.nn.functional.scaled_dot_product_attention for training")


def _run(q, k, v, *, causal, bottom_right: bool, softmax_scale, return_lse, config, out,
         timed: bool) -> Tuple[Result, float]:
    _check_flag("return_lse", return_lse)
    launch = _validate_cached(q, k, v, causal=causal, bottom_right=bottom_right,
                              softmax_scale=softmax_scale, config=config, out=out)
    if out is None:
        out = torch.empty_like(q)
    lse = None
    if return_lse:
        batch, seqlen_q, nheads, _ = q.shape
        lse = torch.empty((batch, nheads, seqlen_q), dtype=torch.float32, device=q.device)
    ms = _launch(launch, q, k, v, out, lse, timed)
    return ((out, lse) if return_lse else out), ms


def _launch(launch: _Launch, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            out: torch.Tensor, lse: Optional[torch.Tensor], timed: bool) -> float:
    """Call the kernel on validated tensors (nothing for an empty problem); its ms if timed.

    lse, when given, is contiguous (batch, nheads, seqlen_q) float32; a packed decode
    writes it as (batch, nheads_k, nheads // nheads_k), the same memory.
    """
    if launch.batch == 0 or launch.nheads == 0:
        return 0.0
    # Entering torch.cuda.device costs microseconds, as much as a decode step's kernel:
    # only when the tensors are not on the current device.
    device = q.device
    if device.index == torch.cuda.current_device():
        return _launch_on_current_device(launch, q, k, v, out, lse, timed)
    with torch.cuda.device(device):
        return _launch_on_current_device(launch, q, k, v, out, lse, timed)


# PyTorch's current-stream handle for a device index, without building a torch.cuda.Stream
# object: torch.cuda.current_stream(device).cuda_stream costs 3-6 us of host time a call on
# an H100 host (benchmarks/host_overhead.py), a fifth of a decode step's Python. The
# private binding is used where this PyTorch has it (tests/test_forward_gpu.py checks that
# it names the stream torch.cuda.current_stream does, inside torch.cuda.stream too).
_raw_current_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _current_stream(device_index: int) -> int:
    """The handle (cudaStream_t as an int) of the current CUDA stream of a device."""
    if _raw_current_stream is not None:
        return _raw_current_stream(device_index)
    return torch.cuda.current_stream(device_index).cuda_stream


def _launch_on_current_device(launch: _Launch, q: torch.Tensor, k: torch.Tensor,
                              v: torch.Tensor, out: torch.Tensor, lse: Optional[torch.Tensor],
                              timed: bool) -> float:
    stream = _current_stream(q.device.index)
    # The split buffers must stay referenced until the launch is queued (then the caching
    # allocator orders their reuse after the kernel on this stream).
    buffers = _split_kv_buffers(launch, q.device)
    return _C.forward(*_kernel_args(launch, q, k, v, out, lse), q.device.index, stream,
                      timed, *_split_kv_args(buffers))


def _split_kv_buffers(launch: _Launch, device: torch.device
                      ) -> Optional[Tuple[int, torch.Tensor, torch.Tensor]]:
    """(num_splits, o_accum, lse_accum) when the kernel's split-KV heuristic splits this
    launch (a decode step too small to fill the GPU), else None: fp32 buffers from
    PyTorch's caching allocator on the current stream."""
    splits = _num_splits(launch, device.index)
    if splits <= 1:
        return None
    # One allocation for both: (splits, rows, head_dim) O, then (splits, rows) LSE.
    rows = launch.batch * launch.nheads * launch.seqlen_q
    o_size = splits * rows * launch.head_dim
    accum = torch.empty(o_size + splits * rows, dtype=torch.float32, device=device)
    return splits, accum[:o_size], accum[o_size:]


@functools.lru_cache(maxsize=1024)
def _num_splits(launch: _Launch, device_index: int) -> int:
    """The kernel's split-KV heuristic for a launch; it depends on nothing else (the GPU's
    resident block slots are fixed), so it is asked once per shape."""
    return _C.num_splits(launch.config, launch.dtype, launch.batch, launch.seqlen_q,
                         launch.seqlen_k, launch.nheads, launch.nheads_k, launch.is_causal,
                         device_index)


def _split_kv_args(buffers: Optional[Tuple[int, torch.Tensor, torch.Tensor]]) -> tuple:
    """`_C.forward`'s trailing (num_splits, o_accum, lse_accum), or () for no split."""
    if buffers is None:
        return ()
    splits, o_accum, lse_accum = buffers
    return splits, o_accum.data_ptr(), lse_accum.data_ptr()


def _kernel_args(launch: _Launch, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 out: torch.Tensor, lse: Optional[torch.Tensor]) -> tuple:
    """`_C.forward`'s arguments up to softmax_scale, is_causal and causal_offset (device,
    stream and timed follow), in the contract's order; apart from `_launch` so that tests
    can check them on CPU tensors."""
    # A packed decode's views of q and out (`_packed_strides`) start where q and out do:
    # only their strides differ, and those of q, k and v come with the launch.
    return (launch.config, launch.dtype,
            q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
            0 if lse is None else lse.data_ptr(),
            launch.batch, launch.seqlen_q, launch.seqlen_k,
            launch.nheads, launch.nheads_k, launch.head_dim,
            launch.q_strides, launch.k_strides, launch.v_strides,
            _launch_strides(out, launch.packed, launch.nheads_k),
            launch.softmax_scale, launch.is_causal, launch.causal_offset)


def _packed_strides(t: torch.Tensor, nheads_k: int) -> Tuple[int, int, int, int]:
    """Strides that view q or out of a one-row grouped-query decode, (batch, 1, nheads,
    headdim), as (batch, group, nheads_k, headdim) with group = nheads // nheads_k: row j of
    K/V head hk is query head hk * group + j, the head that reads K/V head hk.

    One query row per head would give each (batch, head) its own launch tile, nearly all
    of it masked, and load every K/V head group times; as rows of one tile the group's
    heads share each K/V load. The view aliases q and out (no copies; the launch passes
    only its strides, `_launch_strides`), and the LSE needs none: (batch, nheads_k, group)
    contiguous is (batch, nheads, 1) contiguous.
    """
    s = t.stride()
    return (s[0], s[2], t.shape[2] // nheads_k * s[2], s[3])


def _launch_strides(t: torch.Tensor, packed: bool, nheads_k: int) -> Tuple[int, int, int]:
    """`_row_strides` of t as launched: of its `_packed_strides` view where the decode is
    packed, computed without building the view (as_strided costs microseconds a call)."""
    if not packed:
        return _row_strides(t)
    batch, _, nheads, _ = t.shape
    return _kernel_strides((batch, nheads // nheads_k, nheads_k), _packed_strides(t, nheads_k))


# Launches that passed `_validate`, by everything the checks read (see `_launch_key`): a
# decode step in a serving loop repeats one shape thousands of times, and the checks cost
# about 60 us of Python per call on an H100 host, more than the step's kernel (FLASH's
# whole SDPA call costs 18 us). Bounded: the oldest entry goes when full. Each entry is
# (launch, element size, q's, k's and v's `_extent_bytes`): what a hit needs to ask whether
# each storage still holds its tensor (`_validate_cached`).
_VALIDATED: Dict[tuple, Tuple[_Launch, int, int, int, int]] = {}
_VALIDATED_MAX = 1024


def _launch_key(q, k, v, causal, bottom_right, softmax_scale, config, names) -> Optional[tuple]:
    """What `_validate` depends on when out is None, or None where a key cannot stand in
    for the checks (not all tensors, or not on a GPU: errors are never cached).

    Tensor types, layouts, dtypes, shapes, strides, devices, negation bits and 16-byte
    alignment of the data pointers; the flags and the scale with their types (a bool scale
    is an error, an int one is not); the config name; the argument names of the messages.
    Not the storages' sizes: `_validate_cached` checks those on every call.
    """
    # Written out for q, k and v rather than looped over: the generators cost about 0.7 us
    # a call on a 2-core CPU VM, most of what the is_neg() here and the storage checks of a
    # hit added (benchmarks/cache_hit_cpu.py).
    if not (type(q) is torch.Tensor and type(k) is torch.Tensor and type(v) is torch.Tensor
            and q.is_cuda and k.is_cuda and v.is_cuda):
        return None
    # Only hashable values of the allowed types make a key; anything else goes to the
    # checks, whose error names the argument.
    if type(causal) is not bool or not (config is None or type(config) is str) or not (
            softmax_scale is None or type(softmax_scale) in (int, float)):
        return None
    try:
        return ((q.dtype, q.shape, q.stride(), q.device, q.layout, q.is_neg(),
                 q.data_ptr() % _ALIGN_BYTES),
                (k.dtype, k.shape, k.stride(), k.device, k.layout, k.is_neg(),
                 k.data_ptr() % _ALIGN_BYTES),
                (v.dtype, v.shape, v.stride(), v.device, v.layout, v.is_neg(),
                 v.data_ptr() % _ALIGN_BYTES),
                type(causal), causal, bottom_right, type(softmax_scale), softmax_scale,
                type(config), config, names)
    except RuntimeError:
        # A sparse tensor has no data_ptr(), a nested one no shape: the checks name them.
        # (Free where nothing raises, unlike asking each tensor's layout first.)
        return None


def _validate_cached(q, k, v, *, causal, bottom_right: bool, softmax_scale, config, out,
                     names: "_Names" = None) -> _Launch:
    """`_validate`, answered from `_VALIDATED` for a shape seen before (out=None only: an
    output tensor brings aliasing checks that depend on exact addresses)."""
    names = _FORWARD_NAMES if names is None else names
    key = None
    if out is None:
        key = _launch_key(q, k, v, causal, bottom_right, softmax_scale, config, names)
        hit = _VALIDATED.get(key) if key is not None else None
        if hit is None and key is not None:
            hit = _plan_hit(key, q, k, v, causal, bottom_right, config, names)
        if hit is not None:
            # A storage can be freed or shrunk under a tensor of a cached shape (FSDP's
            # resize_(0)), and keying on storage sizes and offsets would miss on every step
            # of a window sliding through a fixed buffer: each call asks whether its
            # storages still hold q, k and v. One that does not goes to `_validate`, which
            # names it.
            launch, size, q_end, k_end, v_end = hit
            if (q.storage_offset() * size + q_end <= q.untyped_storage().nbytes()
                    and k.storage_offset() * size + k_end <= k.untyped_storage().nbytes()
                    and v.storage_offset() * size + v_end <= v.untyped_storage().nbytes()):
                return launch
    launch = _validate(q, k, v, causal=causal, bottom_right=bottom_right,
                       softmax_scale=softmax_scale, config=config, out=out, names=names)
    if key is not None:
        entry = (launch, q.element_size(), _extent_bytes(q), _extent_bytes(k), _extent_bytes(v))
        _remember(key, entry)
        # A plan needs k's seqlen stride to be read (`_row_strides` zeroes a length-1 dim's)
        # and auto's pick to be the config launched (not the sm80 fallback for a tensor
        # that TMA cannot broadcast, whose choice `_plan_hit` does not redo).
        pick = _resolve_config(config, q, launch.head_dim, launch.is_causal, launch.seqlen_q,
                               launch.seqlen_k, names)["name"]
        if launch.seqlen_k > 1 and pick == launch.config:
            if len(_PLANS) >= _VALIDATED_MAX:
                _PLANS.clear()
            _PLANS[_plan_key(key)] = (entry, _heuristic_part(config, q, launch))
    return launch


def _heuristic_part(config, q: torch.Tensor, launch: _Launch) -> Optional[tuple]:
    """What of auto's pick for this launch depends on seqlen_k: None where it does not (a
    named config, or a pick of the tuning cache or table, which key on seqlen_q); else the
    heuristic's arguments but seqlen_k, with its answer: (compute capability, answer). Its
    answer alone decides the rest of `_auto_config`, given the same device and dtype."""
    if not (config is None or config == AUTO):
        return None
    gpu, cc, smem = _device_part(q)
    if _tuned_pick(gpu, cc, launch.dtype, launch.head_dim, launch.seqlen_q, launch.is_causal,
                   smem) is not None:
        return None
    return cc, _C.default_config(launch.head_dim, launch.seqlen_q, launch.seqlen_k, cc[0], cc[1],
                                 launch.is_causal)


def _remember(key: tuple, entry: tuple) -> None:
    """Add a validated launch, dropping the oldest when full: a growing KV cache adds one a
    step, and clearing all would make every other shape pay its checks again."""
    if len(_VALIDATED) >= _VALIDATED_MAX:
        del _VALIDATED[next(iter(_VALIDATED))]
    _VALIDATED[key] = entry


# Launch plans by everything `_launch_key` holds but the seqlen of k and v: a decode loop
# over a growing KV cache (`k_cache[:, :n]`) has a new shape every step, and validating
# each in full would cost ~60 us of Python a step. Each value is (the `_VALIDATED` entry
# of a length validated in full, `_heuristic_part`); `_plan_hit` redoes, for a new length,
# what depends on it.
_PLANS: Dict[tuple, Tuple[tuple, Optional[tuple]]] = {}

# The fields of `_Launch` that a new KV length changes.
_SEQLEN_K = _Launch._fields.index("seqlen_k")
_CAUSAL_OFFSET = _Launch._fields.index("causal_offset")


def _plan_key(key: tuple) -> Optional[tuple]:
    """`_launch_key`'s key with k's and v's seqlen left out (their shapes' dim 1); None
    where k or v is not 4-D (no plan covers it: `_validate` names the argument)."""
    k_part, v_part = key[1], key[2]
    if len(k_part[1]) != 4 or len(v_part[1]) != 4:
        return None
    return (key[0], (k_part[0], k_part[1][0], k_part[1][2:]) + k_part[2:],
            (v_part[0], v_part[1][0], v_part[1][2:]) + v_part[2:]) + key[3:]


def _plan_hit(key: tuple, q, k, v, causal: bool, bottom_right: bool, config,
              names: _Names) -> Optional[tuple]:
    """The `_VALIDATED` entry for a seqlen_k that a plan of this key (`_PLANS`) covers, added
    to `_VALIDATED`; None where there is no plan or the length changes more than its own
    fields, and `_validate` must decide.

    What `_validate` reads of seqlen_k: k's and v's lengths equal, >= 1 and within the
    kernels' bound; the causal flag launched (a mask that hides nothing runs non-causal)
    and with it the packing and the launch's query length; auto's pick (the heuristic takes
    seqlen_k); the causal offset; the storage extents (the caller checks those). The plan's
    strides and layout checks hold for every length > 1. Everything else is in the key.
    """
    plan_key = _plan_key(key)
    plan = _PLANS.get(plan_key) if plan_key is not None else None
    if plan is None:
        return None
    (template, size, q_end, k_end, v_end), heuristic = plan
    seqlen_k = k.shape[1]
    if not (1 < seqlen_k <= _LIMITS["max_seqlen"] and v.shape[1] == seqlen_k):
        return None
    offset = seqlen_k - q.shape[1] if bottom_right else 0
    is_causal = causal and offset < seqlen_k - 1
    if is_causal != template.is_causal:
        return None
    if heuristic is not None:
        cc, answer = heuristic
        if _C.default_config(template.head_dim, template.seqlen_q, seqlen_k, cc[0], cc[1],
                             is_causal) != answer:
            return None
    # Written out rather than with _replace and `_extent_bytes` (each ~1 us on a 2-core VM):
    # only the seqlen dim differs from the plan's, so each extent moves by whole seqlen
    # strides (`_row_strides`, the real ones for lengths > 1); an empty K/V stays empty.
    launch = _Launch._make(template[:_SEQLEN_K] + (seqlen_k,)
                           + template[_SEQLEN_K + 1:_CAUSAL_OFFSET]
                           + (offset if is_causal else 0,) + template[_CAUSAL_OFFSET + 1:])
    grown = (seqlen_k - template.seqlen_k) * size
    entry = (launch, size, q_end, k_end and k_end + grown * template.k_strides[1],
             v_end and v_end + grown * template.v_strides[1])
    _remember(key, entry)
    return entry


def _validate(q, k, v, *, causal, bottom_right: bool, softmax_scale, config, out,
              names: _Names = _FORWARD_NAMES) -> _Launch:
    """Check every argument, the device last; return what the launch needs.

    bottom_right: forward's causal alignment, else sdpa's top-left. names: the arguments'
    names in messages. Messages are built only when a check fails, so a valid call pays for
    comparisons alone.
    """
    q_name, k_name, v_name = names.q, names.k, names.v
    _check_flag(names.causal, causal)
    inputs = [(q_name, q), (k_name, k), (v_name, v)]
    for name, t in inputs:
        _check_tensor(name, t)
    if q.dtype not in _DTYPE_NAMES:
        raise TypeError(f"{q_name} has dtype {q.dtype}; allowed: {_ALLOWED_DTYPES}")
    for name, t in inputs[1:]:
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {q_name} has {q.dtype}; "
                            f"{q_name}, {k_name} and {v_name} must share one dtype "
                            f"({_ALLOWED_DTYPES})")
    for name, t in inputs:
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, seqlen, nheads, headdim); got shape "
                             f"{tuple(t.shape)}")
        _check_memory(name, t)
    if out is not None:
        # Before the packing decision reads out's strides: a bad out gets the same error
        # whatever the shapes.
        _check_out_like_q(out, q, q_name)

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
    max_len = _LIMITS["max_seqlen"]
    for dim, of_q, n in (("batch", True, batch), ("seqlen", True, seqlen_q),
                         ("seqlen", False, seqlen_k), ("nheads", True, nheads),
                         ("nheads", False, nheads_k)):
        if n > max_len:
            raise ValueError(f"{dim} of {q_name if of_q else names.kv} is {n}; at most "
                             f"{max_len} is supported (the kernels index in 32 bits: "
                             "fa_cute._C.limits()['max_seqlen'])")
    if batch * nheads > _LIMITS["max_tiles"]:
        raise ValueError(f"batch * nheads of {q_name} is {batch} * {nheads} = {batch * nheads}; "
                         f"at most {_LIMITS['max_tiles']} is supported (the kernels number "
                         "their tiles in 32 bits: fa_cute._C.limits()['max_tiles'])")
    # Only 0 is a multiple of 0: nheads_k 0 passes with nheads 0 alone (an empty problem).
    if (nheads % nheads_k if nheads_k else nheads):
        raise ValueError(f"nheads of {q_name} ({nheads}) must be a multiple of nheads of "
                         f"{names.kv} ({nheads_k})"
                         + _layout_hint(names, seqlen_q, seqlen_k))

    # A causal mask that hides nothing (row 0 already sees the last key: one query row
    # aligned bottom-right, or one key aligned top-left) is launched as non-causal, which
    # spares the masking and lets a decode step pack.
    offset = seqlen_k - seqlen_q if bottom_right else 0
    is_causal = causal and offset < seqlen_k - 1
    packed = (seqlen_q == 1 and nheads > nheads_k and not is_causal and _packable(q)
              and (out is None or _packable(out)))
    launch_seqlen_q, launch_nheads = ((nheads // nheads_k, nheads_k) if packed
                                      else (seqlen_q, nheads))

    cfg = _resolve_config(config, q, head_dim, is_causal, launch_seqlen_q, seqlen_k, names)
    scale = _resolve_scale(softmax_scale, head_dim, names.scale)
    if cfg["family"] == "sm90a":
        # TMA (the Hopper kernel's loads) cannot broadcast: an expanded tensor (stride 0 in
        # a dim of size > 1) goes to the sm80 kernel, which reads it row by row.
        broadcast = next(((name, dim) for name, t in inputs
                          if (dim := _broadcast_dim(t)) is not None), None)
        if broadcast is not None:
            if config not in (None, AUTO):
                raise ValueError(
                    f"{broadcast[0]} has stride 0 in its {broadcast[1]} "
                    f"dim (an expanded tensor); config {cfg['name']!r} loads with TMA, which "
                    f"cannot broadcast: call .contiguous() on it, or use config='auto'")
            cfg = _CONFIGS[_C.default_config(head_dim, launch_seqlen_q, seqlen_k, 8, 0, is_causal)]

    for (name, t), rows in zip(inputs, ("block_m", "block_n", "block_n")):
        _check_layout(name, t, cfg[rows])
    if out is not None:
        _check_out(out, q, k, v, cfg["block_m"], names)
        inputs.append(("out", out))
    _check_devices(inputs, cfg, q_name)
    return _Launch(cfg["name"], _DTYPE_NAMES[q.dtype], batch, launch_seqlen_q, seqlen_k,
                   launch_nheads, nheads_k, head_dim, scale, is_causal,
                   offset if is_causal else 0, packed, _launch_strides(q, packed, nheads_k),
                   _row_strides(k), _row_strides(v))


def _layout_hint(names: _Names, other_nheads: int, other_nheads_k: int) -> str:
    """A clause for a heads mismatch that the other layout would not have (other_nheads and
    other_nheads_k: the sizes the heads would have if dims 1 and 2 were swapped): SDPA's
    (batch, nheads, seqlen, headdim) tensors passed to forward, or FlashAttention's
    (batch, seqlen, nheads, headdim) passed to sdpa. Built on the error path only."""
    if not (other_nheads_k and other_nheads % other_nheads_k == 0):
        return ""
    if names is _SDPA_NAMES:
        return ("; if query, key and value are (batch, seqlen, nheads, headdim) tensors "
                "(FlashAttention's layout), call fa_cute.forward on them, or pass "
                ".transpose(1, 2) views to sdpa, which takes (batch, nheads, seqlen, headdim)")
    return (f"; if {names.q}, {names.k} and {names.v} are (batch, nheads, seqlen, headdim) "
            f"tensors (torch SDPA's layout), pass {names.q}.transpose(1, 2), "
            f"{names.k}.transpose(1, 2) and {names.v}.transpose(1, 2) (views, no copies) or "
            "call fa_cute.sdpa: forward takes (batch, seqlen, nheads, headdim)")


def _broadcast_dim(t: torch.Tensor) -> Optional[str]:
    """The name of t's first dim of size > 1 with stride 0, or None."""
    for dim, n, s in zip(("batch", "seqlen", "nheads", "headdim"), t.shape, t.stride()):
        if n > 1 and s == 0:
            return dim
    return None


def _packable(t: torch.Tensor) -> bool:
    """Whether the `_packed_strides` view of t keeps the kernel's in-tile offsets 32-bit: its row
    stride is t's head stride, bounded for the tallest tile (the config is not known yet).
    Where it is not, the decode runs unpacked, whose single row needs no such bound."""
    return t.stride(2) * _MAX_BLOCK_M < _MAX_TILE_OFFSET


def _check_flag(name: str, value) -> None:
    """A bool option, so that a mask tensor or a string passed by mistake fails loudly."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; got {type(value).__name__}")


def _resolve_config(config, q: torch.Tensor, head_dim: int, causal: bool, seqlen_q: int,
                    seqlen_k: int, names: _Names = _FORWARD_NAMES) -> dict:
    """The named config, or auto's pick for this launch shape and the tensors' GPU."""
    if config is None:
        config = AUTO
    _check_config_type(config)
    if config != AUTO:
        if config not in _CONFIGS:
            raise ValueError(f"config {config!r} is not built; built configs: "
                             f"{', '.join(_CONFIGS)}")
        cfg = _CONFIGS[config]
        if cfg["head_dim"] != head_dim:
            raise ValueError(f"config {config!r} is for head_dim {cfg['head_dim']}, but "
                             f"{names.q}, {names.k} and {names.v} have headdim {head_dim}")
        if _DTYPE_NAMES[q.dtype] not in cfg["dtypes"]:
            raise ValueError(f"config {config!r} supports dtypes {cfg['dtypes']}, not "
                             f"{q.dtype}")
        return cfg
    head_dims = sorted({c["head_dim"] for c in _CONFIGS.values()})
    if head_dim not in head_dims:
        raise ValueError(f"headdim of {names.q} ({head_dim}) is not supported; built head "
                         f"dims: {', '.join(map(str, head_dims))}")
    gpu, cc, smem = _device_part(q)
    return _auto_config(gpu, cc, _DTYPE_NAMES[q.dtype], head_dim, seqlen_q, seqlen_k, causal,
                        smem)


def _device_part(q: torch.Tensor) -> Tuple[str, Tuple[int, int], Optional[int]]:
    """(GPU name, compute capability, shared memory limit) of auto's pick for q's device."""
    if q.is_cuda:
        (gpu, cc), smem = _gpu(q.device.index), _smem_limit(q.device.index)
        return gpu, cc, smem
    return "", _PLACEHOLDER_CC, None


def _check_config_type(config) -> None:
    if not (config is None or isinstance(config, str)):
        raise TypeError(f"config must be a config name (str), 'auto' or None; got "
                        f"{type(config).__name__}")


@functools.lru_cache(maxsize=None)
def _gpu(device_index: int) -> Tuple[str, Tuple[int, int]]:
    """(name, compute capability) of a GPU: the device part of auto's key, asked once."""
    props = torch.cuda.get_device_properties(device_index)
    return props.name, (props.major, props.minor)


@functools.lru_cache(maxsize=None)
def _smem_limit(device_index: int) -> Optional[int]:
    """The most dynamic shared memory one block may opt in to on a GPU, in bytes; None where
    this PyTorch does not report it (before 2.6), and then `_C` is the one to refuse a
    config that needs more (its launch fails with an error naming the config)."""
    return getattr(torch.cuda.get_device_properties(device_index),
                   "shared_memory_per_block_optin", None)


@functools.lru_cache(maxsize=1024)
def _auto_config(gpu: str, cc: Tuple[int, int], dtype: str, head_dim: int, seqlen_q: int,
                 seqlen_k: Optional[int] = None, causal: bool = False,
                 smem_limit: Optional[int] = None) -> dict:
    """config="auto": the tuning cache's pick, else the built-in table's, else the heuristic's.

    seqlen_k defaults to seqlen_q; smem_limit None means no limit is known. Memoized per
    exact shape because the heuristic takes exact lengths; after the first call of a shape
    the hot path pays one dictionary lookup. A pick that is not built, is a ladder config
    or cannot run here (a stale cache, a table for another build or GPU) is passed over.
    """
    seqlen_k = seqlen_q if seqlen_k is None else seqlen_k
    tuned = _tuned_pick(gpu, cc, dtype, head_dim, seqlen_q, causal, smem_limit)
    if tuned is not None:
        return tuned
    default = _CONFIGS[_C.default_config(head_dim, seqlen_q, seqlen_k, cc[0], cc[1], causal)]
    if _tunable(default, dtype, head_dim, cc, smem_limit):
        return default
    # The heuristic knows the compute capability, not this GPU's shared memory (or a build
    # lacks its dtype): the largest tile that fits. If none does, the device check then
    # refuses the default with the reason.
    fitting = [c for c in _CONFIGS.values() if _tunable(c, dtype, head_dim, cc, smem_limit)]
    return max(fitting, key=lambda c: (c["block_m"] * c["block_n"], c["num_warps"]),
               default=default)


def _tuned_pick(gpu: str, cc: Tuple[int, int], dtype: str, head_dim: int, seqlen_q: int,
                causal: bool, smem_limit: Optional[int]) -> Optional[dict]:
    """The tuning cache's pick, else the built-in table's, if usable here; None otherwise.
    Neither depends on seqlen_k (`_plan_hit` relies on it)."""
    key = _tuning.key(dtype, head_dim, causal, seqlen_q)
    for name in (_tuning.cached_configs(gpu).get(key), _tuned.TABLE.get(gpu, {}).get(key)):
        cfg = _CONFIGS.get(name)
        if cfg is not None and _tunable(cfg, dtype, head_dim, cc, smem_limit):
            return cfg
    return None


def _tunable(cfg: dict, dtype: str, head_dim: int, cc: Tuple[int, int],
             smem_limit: Optional[int] = None) -> bool:
    """Whether cfg is a production config (not a ladder rung) for this head dim and dtype
    that runs on a GPU of compute capability cc with smem_limit bytes of shared memory per
    block (None: not known): what auto may pick and `python -m fa_cute.tune` times. Any
    tile runs any seqlen (the kernel masks ragged tails)."""
    return (cfg["rung"] is None and cfg["head_dim"] == head_dim and dtype in cfg["dtypes"]
            and _family_runs_on(cfg["family"], cc)
            and (smem_limit is None or cfg["smem_bytes"] <= smem_limit))


def _forget_tuning() -> None:
    """Make the next auto resolution read the tuning cache again: after the cache was
    written, or FA_CUTE_CACHE_DIR changed, in this process."""
    _tuning.forget()
    _auto_config.cache_clear()
    _VALIDATED.clear()  # auto's picks are part of the validated launches and plans
    _PLANS.clear()


def _resolve_scale(scale, head_dim: int, name: str = "softmax_scale") -> float:
    """1/sqrt(headdim) by default; otherwise a finite real number > 0.

    Zero and negative scales are refused: the kernel's online softmax takes each row's
    maximum of the unscaled scores, which is the row's maximum of the scaled ones only for
    a positive scale.
    """
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    return _scale_arg(scale, name)


def _scale_arg(scale, name: str) -> Optional[float]:
    """`_resolve_scale`'s checks of a given scale, as a float (None stays None): what the
    custom ops take, checked before tracing hands them a float."""
    if scale is None:
        return None
    if not isinstance(scale, numbers.Real) or isinstance(scale, bool):
        raise TypeError(f"{name} must be a real number or None; got {type(scale).__name__}")
    try:
        value = float(scale)
    except OverflowError:  # an int beyond float range
        value = math.inf
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be a finite number > 0; got {scale}")
    return value


def _check_out_like_q(out, q: torch.Tensor, q_name: str) -> None:
    """out is a tensor of q's dtype and shape whose memory holds it: what `_check_out` then
    takes for granted."""
    _check_tensor("out", out)
    if out.dtype != q.dtype:
        raise TypeError(f"out has dtype {out.dtype}; it must match {q_name} ({q.dtype})")
    if out.shape != q.shape:
        raise ValueError(f"out has shape {tuple(out.shape)}; it must match {q_name} "
                         f"{tuple(q.shape)}")
    _check_memory("out", out)


def _check_out(out, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_rows: int,
               names: _Names = _FORWARD_NAMES) -> None:
    """out (already `_check_out_like_q`) must have one memory location per element, and not
    alias k or v.

    Each thread block reads its own Q tile before it writes the same rows of O, so out may
    be q itself (same address and strides); any other overlap with q, and every overlap
    with k or v (read by all blocks while others write), would race.
    """
    q_name = names.q
    _check_layout("out", out, block_rows)
    if _overlaps_itself(out):
        raise ValueError("out has elements that share memory (e.g. an expanded tensor); pass "
                         "a tensor with one memory location per element")
    is_q = out.data_ptr() == q.data_ptr() and out.stride() == q.stride()
    for name, t in ((q_name, q), (names.k, k), (names.v, v)):
        if not (name == q_name and is_q) and _spans_overlap(out, t):
            raise ValueError(f"out overlaps the memory of {name}; pass a separate output "
                             "tensor" + (f" (or {q_name} itself)" if name == q_name else ""))


def _check_layout(name: str, t: torch.Tensor, block_rows: int) -> None:
    """The kernel's 16-byte loads need a contiguous last dim, batch/seqlen/nheads strides
    that are whole multiples of 16 bytes, and a 16-byte aligned start; its 32-bit in-tile
    offsets need block_rows * seqlen stride below 2^31."""
    if t.stride(3) != 1:
        raise ValueError(f"{name} must have a contiguous last dim (headdim stride 1); got "
                         f"strides {_strides_text(t)}; call .contiguous() on it")
    multiple = _ALIGN_BYTES // t.element_size()
    if any(s % multiple for s in _row_strides(t)):
        raise ValueError(f"{name} has strides {_strides_text(t)}; the batch, seqlen and nheads "
                         f"strides must be multiples of {multiple} elements ({_ALIGN_BYTES} "
                         f"bytes) for the kernel's {_ALIGN_BYTES}-byte loads; call "
                         ".contiguous() on it")
    row_stride_limit = _MAX_TILE_OFFSET // block_rows
    if _row_strides(t)[1] >= row_stride_limit:
        raise ValueError(f"{name} has seqlen stride {t.stride(1)}; it must be below "
                         f"{row_stride_limit} elements (2^31 / {block_rows} rows of a tile: the "
                         "kernel's in-tile offsets are 32-bit); call .contiguous() on it")
    if t.data_ptr() % _ALIGN_BYTES:
        raise ValueError(f"{name}.data_ptr() is not {_ALIGN_BYTES}-byte aligned (the kernel "
                         f"uses {_ALIGN_BYTES}-byte loads); pass a copy made with .clone()")


def _strides_text(t: torch.Tensor) -> str:
    """Strides by dim name: sdpa validates transposed views of its arguments, so a bare
    tuple would list them in an order its caller never saw."""
    return ", ".join(f"{dim} {s}" for dim, s in zip(("batch", "seqlen", "nheads", "headdim"),
                                                     t.stride()))


def _check_devices(tensors: Sequence[Tuple[str, torch.Tensor]], cfg: dict,
                   q_name: str = "q") -> None:
    """All tensors on one CUDA device whose compute capability and shared memory the
    config fits."""
    for name, t in tensors:
        if not t.is_cuda:
            raise ValueError(f"{name} is on {t.device}; fa_cute runs on CUDA tensors only "
                             "(move them to a GPU, e.g. with .cuda())")
    device = tensors[0][1].device
    for name, t in tensors[1:]:
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but {q_name} is on {device}; all "
                             "tensors must be on one CUDA device")
    gpu, cc = _gpu(device.index)
    _check_config_fits(cfg, f"{device} ({gpu})", cc, _smem_limit(device.index))


def _check_config_fits(cfg: dict, where: str, cc: Tuple[int, int],
                       smem_limit: Optional[int]) -> None:
    """The GPU `where` (compute capability cc, smem_limit bytes of shared memory per block
    or None where unknown) runs cfg's kernel family and holds its shared memory."""
    if not _family_runs_on(cfg["family"], cc):
        needed, exact = _family_cc(cfg["family"])
        rule = "exactly" if exact else "or newer"
        raise ValueError(f"config {cfg['name']!r} needs a GPU of compute capability "
                         f"{needed[0]}.{needed[1]} {rule}; {where} has {cc[0]}.{cc[1]}")
    if smem_limit is not None and cfg["smem_bytes"] > smem_limit:
        raise ValueError(f"config {cfg['name']!r} needs {cfg['smem_bytes']} bytes of shared "
                         f"memory per block; {where} allows at most {smem_limit}; pick a config "
                         "with smaller tiles, or config='auto'")


def _family_cc(family: str) -> Tuple[Tuple[int, int], bool]:
    """'sm80' -> ((8, 0), False): runs on 8.0 and newer. 'sm90a' -> ((9, 0), True): code
    for an arch-specific target (wgmma, TMA, setmaxnreg) runs on that compute capability
    only."""
    match = re.fullmatch(r"sm(\d+)(\d)(a?)", family)
    if match is None:
        raise RuntimeError(f"fa_cute._C reports an unknown kernel family {family!r}")
    return (int(match.group(1)), int(match.group(2))), match.group(3) == "a"


def _family_runs_on(family: str, cc: Tuple[int, int]) -> bool:
    needed, exact = _family_cc(family)
    return cc == needed if exact else cc >= needed


def _row_strides(t: torch.Tensor) -> Tuple[int, int, int]:
    """(batch, seqlen, nheads) element strides for the kernel; 0 for dims of size 1.

    A size-1 dim's stride never enters an address, and PyTorch treats a tensor as
    contiguous whatever that stride is, so it must neither fail the alignment check (the
    advice ".contiguous()" would not change it) nor reach the kernel.
    """
    return _kernel_strides(t.shape, t.stride())


def _kernel_strides(shape: Sequence[int], stride: Sequence[int]) -> Tuple[int, int, int]:
    """`_row_strides` from a shape and strides (written out: this runs on every call)."""
    return (stride[0] if shape[0] > 1 else 0, stride[1] if shape[1] > 1 else 0,
            stride[2] if shape[2] > 1 else 0)


def _overlaps_itself(t: torch.Tensor) -> bool:
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


def _spans_overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the byte ranges [first element, last element] of a and b intersect."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + _extent_bytes(b) and b0 < a0 + _extent_bytes(a)


def _extent_bytes(t: torch.Tensor) -> int:
    """The bytes t's elements span from its first: 0 for an empty tensor."""
    if t.numel() == 0:
        return 0
    last = sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return (last + 1) * t.element_size()


def _check_memory(name: str, t: torch.Tensor) -> None:
    """t's values are what the kernel reads at t.data_ptr(): its storage holds every element
    (a storage freed with .untyped_storage().resize_(0), as FSDP does to sharded parameters,
    holds none: the kernel would read freed memory) and no lazy negation is pending (a
    `_neg_view` negates on read in PyTorch's kernels only). Conjugate views are complex,
    which the dtype check refuses first."""
    if t.is_neg():
        raise ValueError(f"{name} is a negated view (is_neg() is True), whose values the kernel "
                         "would read un-negated; call .resolve_neg() on it")
    end = t.storage_offset() * t.element_size() + _extent_bytes(t)
    if t.numel() and end > t.untyped_storage().nbytes():
        raise ValueError(f"{name} reaches byte {end} of its storage, which holds "
                         f"{t.untyped_storage().nbytes()} bytes (a storage freed with "
                         ".untyped_storage().resize_(0), as FSDP does, holds 0); pass a tensor "
                         "whose storage holds all its elements")


def _check_tensor(name: str, t) -> None:
    """A strided torch.Tensor: the kernel needs data_ptr() and strides."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) torch.Tensor; got layout {t.layout}")
    if t.is_nested:  # a nested tensor of strided layout has neither shape nor strides
        raise TypeError(f"{name} must be a dense (strided) torch.Tensor; got a nested tensor")


# torch.compile. Dynamo cannot trace the eager path (it opens the tuning cache and calls
# `_C`), so under compilation the entry points call custom ops: opaque to the tracer, shaped
# by their fake implementations, and run eagerly, with every check, when the graph runs.
# Eager calls do not go through them: the dispatcher would add microseconds to a decode
# step whose host time is ~22 us. A functional op returns new tensors; an op that writes
# `out` must say it mutates it, so `out=` has an op of its own. Custom ops cannot return
# None: without return_lse the LSE slot holds an empty tensor.

_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def _forward_traced(q, k, v, causal, softmax_scale, return_lse, config, out) -> Result:
    """forward while torch.compile traces it: the checks of plain Python values here (the
    tracer folds them), the tensor checks in the op's implementation when the graph runs."""
    _check_flag("causal", causal)
    _check_flag("return_lse", return_lse)
    if _grad_mode():
        _check_no_grad(q, k, v, _FORWARD_NAMES, "forward")
    scale = _scale_arg(softmax_scale, "softmax_scale")
    _check_config_type(config)
    if out is None:
        result, lse = _OPS["forward"](q, k, v, causal, scale, return_lse, config)
    else:
        lse = _OPS["forward_out"](q, k, v, out, causal, scale, return_lse, config)
        result = out
    return (result, lse) if return_lse else result


def _lse_like(q: torch.Tensor, return_lse: bool) -> torch.Tensor:
    """The LSE the ops return: (batch, nheads, seqlen_q) float32 as `_run` allocates it, or
    an empty placeholder without return_lse (or for a q that validation will refuse)."""
    if return_lse and q.dim() == 4:
        batch, seqlen_q, nheads, _ = q.shape
        return q.new_empty((batch, nheads, seqlen_q), dtype=torch.float32)
    return q.new_empty((0,), dtype=torch.float32)


def _register_ops() -> Dict[str, object]:
    """The custom ops by name; none before PyTorch 2.4 (no torch.library.custom_op), where a
    compiled caller graph-breaks at fa_cute's call instead."""
    custom_op = getattr(torch.library, "custom_op", None)
    if custom_op is None:
        return {}
    Tensor = torch.Tensor

    @custom_op("fa_cute::forward", mutates_args=())
    def forward_op(q: Tensor, k: Tensor, v: Tensor, causal: bool,
                   softmax_scale: Optional[float], return_lse: bool,
                   config: Optional[str]) -> Tuple[Tensor, Tensor]:
        result, _ = _run(q, k, v, causal=causal, bottom_right=True, softmax_scale=softmax_scale,
                         return_lse=return_lse, config=config, out=None, timed=False)
        return result if return_lse else (result, _lse_like(q, False))

    @forward_op.register_fake
    def _(q, k, v, causal, softmax_scale, return_lse, config):
        # empty_like keeps q's layout (contiguous if q is not dense), as `_run`'s does.
        return torch.empty_like(q), _lse_like(q, return_lse)

    @custom_op("fa_cute::forward_out", mutates_args=("out",))
    def forward_out_op(q: Tensor, k: Tensor, v: Tensor, out: Tensor, causal: bool,
                       softmax_scale: Optional[float], return_lse: bool,
                       config: Optional[str]) -> Tensor:
        result, _ = _run(q, k, v, causal=causal, bottom_right=True, softmax_scale=softmax_scale,
                         return_lse=return_lse, config=config, out=out, timed=False)
        return result[1] if return_lse else _lse_like(q, False)

    @forward_out_op.register_fake
    def _(q, k, v, out, causal, softmax_scale, return_lse, config):
        return _lse_like(q, return_lse)

    @custom_op("fa_cute::sdpa", mutates_args=())
    def sdpa_op(query: Tensor, key: Tensor, value: Tensor, is_causal: bool,
                scale: Optional[float]) -> Tensor:
        return _sdpa_run(query, key, value, is_causal, scale)

    @sdpa_op.register_fake
    def _(query, key, value, is_causal, scale):
        # sdpa's output is a new contiguous (batch, nheads, seqlen_q, headdim) tensor.
        return query.new_empty(query.shape)

    return {"forward": forward_op, "forward_out": forward_out_op, "sdpa": sdpa_op}


_OPS: Dict[str, object] = _register_ops()
