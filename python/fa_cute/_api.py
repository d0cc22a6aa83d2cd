"""The user API: validate torch tensors, turn them into the integers of the `_C` contract
(docs/design.md) and call the kernel on PyTorch's current stream.

Every check lives in `_validate`, ordered so that the device comes last: CPU tensors then
reach every other check, which lets the tests exercise all of them on a machine with no GPU.
Dtype problems raise TypeError, everything else ValueError; each message names the argument
and says what is allowed.
"""

import copy
import functools
import importlib.util
import math
import numbers
import re
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

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

# Compute capability used to pick the default config for tensors that are not on a GPU.
# Such tensors are rejected by the final device check anyway; the placeholder only lets the
# checks before it (seqlen against the config's block sizes) run on CPU tensors.
_PLACEHOLDER_CC = (8, 0)

_CONFIGS: Dict[str, dict] = {c["name"]: c for c in _C.configs()}


class _Launch(NamedTuple):
    """What `_validate` resolved: everything `_C.forward` needs besides the tensors."""

    config: str
    dtype: str
    batch: int
    seqlen: int
    nheads: int
    head_dim: int
    softmax_scale: float


def configs() -> List[dict]:
    """The kernel configs compiled into this build (a copy: callers may modify it)."""
    return copy.deepcopy(list(_CONFIGS.values()))


def resolve_config(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                   config: Optional[str] = AUTO) -> str:
    """The name of the config that `forward(q, k, v, config=config)` would run.

    With "auto" (or None): the pick of the tuning cache for this GPU and shape, else of the
    built-in table, else of the heuristic. The inputs are validated as `forward` does them,
    with the same errors, and nothing runs on the GPU.
    """
    return _validate(q, k, v, None, config, None).config


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
            softmax_scale: Optional[float] = None, config: Optional[str] = AUTO,
            out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Attention forward, softmax(q k^T * softmax_scale) v, non-causal.

    q, k, v: (batch, seqlen, nheads, headdim) bf16 or fp16 CUDA tensors of one device; any
    strides whose last dim is contiguous, so (batch, nheads, seqlen, headdim) storage viewed
    with `.transpose(1, 2)` works without a copy. softmax_scale defaults to 1/sqrt(headdim).
    config names a kernel config from `configs()`, or is "auto" (the default; None means the
    same): the config `python -m fa_cute.tune` measured fastest for this GPU, dtype, head dim
    and seqlen bucket (its cache, then a built-in table), else the heuristic's pick; see
    `resolve_config`. Nothing is tuned or timed here. out, if given, receives the result and
    is returned; otherwise a new tensor with q's memory layout (contiguous if q is not dense)
    is returned. The kernel runs on PyTorch's current stream of the tensors' device. There is
    no autograd support.
    """
    return _run(q, k, v, softmax_scale, config, out, timed=False)[0]


def forward_timed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                  softmax_scale: Optional[float] = None, config: Optional[str] = AUTO,
                  out: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, float]:
    """Like `forward`, and also return the kernel's own time in milliseconds.

    The time comes from CUDA events recorded around the launch, and the call waits for the
    kernel to finish. An empty problem (batch or nheads 0) launches nothing and returns 0.0.
    """
    return _run(q, k, v, softmax_scale, config, out, timed=True)


def _run(q, k, v, softmax_scale, config, out, timed: bool) -> Tuple[torch.Tensor, float]:
    launch = _validate(q, k, v, softmax_scale, config, out)
    if out is None:
        out = torch.empty_like(q)
    if launch.batch == 0 or launch.nheads == 0:
        return out, 0.0
    with torch.cuda.device(q.device):
        stream = torch.cuda.current_stream(q.device).cuda_stream
        ms = _C.forward(launch.config, launch.dtype,
                        q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                        launch.batch, launch.seqlen, launch.seqlen, launch.nheads, launch.nheads,
                        launch.head_dim,
                        _row_strides(q), _row_strides(k), _row_strides(v), _row_strides(out),
                        launch.softmax_scale, q.device.index, stream, timed)
    return out, ms


def _validate(q, k, v, softmax_scale, config, out) -> _Launch:
    """Check every argument, the device last; return what the launch needs.

    Messages are built only when a check fails, so a valid call pays for comparisons alone.
    """
    inputs = [("q", q), ("k", k), ("v", v)]
    for name, t in inputs:
        _check_tensor(name, t)
    if q.dtype not in _DTYPE_NAMES:
        raise TypeError(f"q has dtype {q.dtype}; allowed: {_ALLOWED_DTYPES}")
    for name, t in inputs[1:]:
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but q has {q.dtype}; q, k and v must "
                            f"share one dtype ({_ALLOWED_DTYPES})")
    for name, t in inputs:
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, seqlen, nheads, headdim); got shape "
                             f"{tuple(t.shape)}")

    batch, seqlen, nheads, head_dim = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got k {tuple(k.shape)} and v "
                         f"{tuple(v.shape)}")
    if k.shape[0] != batch:
        raise ValueError(f"batch of k and v ({k.shape[0]}) must equal batch of q ({batch})")
    if k.shape[3] != head_dim:
        raise ValueError(f"headdim of k and v ({k.shape[3]}) must equal headdim of q "
                         f"({head_dim})")
    if k.shape[2] != nheads:
        raise ValueError(f"nheads of k and v ({k.shape[2]}) differs from nheads of q "
                         f"({nheads}): multi-query / grouped-query attention is not yet "
                         "supported")
    if k.shape[1] != seqlen:
        raise ValueError(f"seqlen of k and v ({k.shape[1]}) differs from seqlen of q "
                         f"({seqlen}): different query and key lengths are not yet supported")
    if seqlen < 1:
        raise ValueError(f"seqlen (q.shape[1]) must be >= 1; got {seqlen}")

    cfg = _resolve_config(config, q, head_dim, seqlen)
    for name, block in (("q", "block_m"), ("k and v", "block_n")):
        if seqlen % cfg[block] != 0:
            raise ValueError(f"seqlen of {name} ({seqlen}) must be a multiple of {cfg[block]} "
                             f"({block} of config {cfg['name']}); a later release lifts this")
    scale = _resolve_scale(softmax_scale, head_dim)

    for name, t in inputs:
        _check_layout(name, t, cfg["block_m"] if name == "q" else cfg["block_n"])
    if out is not None:
        _check_out(out, q, k, v, cfg["block_m"])
        inputs.append(("out", out))
    _check_devices(inputs, cfg)
    return _Launch(cfg["name"], _DTYPE_NAMES[q.dtype], batch, seqlen, nheads, head_dim, scale)


def _resolve_config(config, q: torch.Tensor, head_dim: int, seqlen: int) -> dict:
    """The named config, or auto's pick for this shape and the tensors' GPU."""
    if config is None:
        config = AUTO
    if not isinstance(config, str):
        raise TypeError(f"config must be a config name (str), 'auto' or None; got "
                        f"{type(config).__name__}")
    if config != AUTO:
        if config not in _CONFIGS:
            raise ValueError(f"config {config!r} is not built; built configs: "
                             f"{', '.join(_CONFIGS)}")
        cfg = _CONFIGS[config]
        if cfg["head_dim"] != head_dim:
            raise ValueError(f"config {config!r} is for head_dim {cfg['head_dim']}, but q, k, v "
                             f"have headdim {head_dim}")
        if _DTYPE_NAMES[q.dtype] not in cfg["dtypes"]:
            raise ValueError(f"config {config!r} supports dtypes {cfg['dtypes']}, not "
                             f"{q.dtype}")
        return cfg
    head_dims = sorted({c["head_dim"] for c in _CONFIGS.values()})
    if head_dim not in head_dims:
        raise ValueError(f"headdim {head_dim} (q.shape[3]) is not supported; built head dims: "
                         f"{', '.join(map(str, head_dims))}")
    gpu, cc = _gpu(q.device.index) if q.is_cuda else ("", _PLACEHOLDER_CC)
    return _auto_config(gpu, cc, _DTYPE_NAMES[q.dtype], head_dim, seqlen)


@functools.lru_cache(maxsize=None)
def _gpu(device_index: int) -> Tuple[str, Tuple[int, int]]:
    """(name, compute capability) of a GPU: the device part of auto's key, asked once."""
    return (torch.cuda.get_device_name(device_index),
            torch.cuda.get_device_capability(device_index))


@functools.lru_cache(maxsize=1024)
def _auto_config(gpu: str, cc: Tuple[int, int], dtype: str, head_dim: int, seqlen: int) -> dict:
    """config="auto": the tuning cache's pick, else the built-in table's, else the heuristic's.

    Memoized per exact seqlen, not per bucket, because a pick must also divide the seqlen
    (a bucket's winner may not); after the first call of a shape the hot path pays one
    dictionary lookup. A pick that is not built, is a ladder config or cannot run the
    shape here (a stale cache, a table for another build) is passed over.
    """
    key = _tuning.key(dtype, head_dim, False, seqlen)  # forward is non-causal
    for name in (_tuning.cached_configs(gpu).get(key), _tuned.TABLE.get(gpu, {}).get(key)):
        cfg = _CONFIGS.get(name)
        if cfg is not None and _tunable(cfg, dtype, head_dim, seqlen, cc):
            return cfg
    default = _CONFIGS[_C.default_config(head_dim, seqlen, seqlen, cc[0], cc[1])]
    if _tunable(default, dtype, head_dim, seqlen, cc):
        return default
    # The heuristic's tile does not divide seqlen: the largest built tile that does, so that
    # auto runs every shape some config can run. If none can, the default's block sizes
    # are what the validation error then asks for.
    runnable = [c for c in _CONFIGS.values() if _tunable(c, dtype, head_dim, seqlen, cc)]
    return max(runnable, key=lambda c: (c["block_m"] * c["block_n"], c["num_warps"]),
               default=default)


def _tunable(cfg: dict, dtype: str, head_dim: int, seqlen: int, cc: Tuple[int, int]) -> bool:
    """Whether cfg is a production config (not a ladder rung) that runs this shape on a GPU
    of compute capability cc: what auto may pick and `python -m fa_cute.tune` times."""
    return (cfg["rung"] is None and cfg["head_dim"] == head_dim and dtype in cfg["dtypes"]
            and seqlen % cfg["block_m"] == 0 and seqlen % cfg["block_n"] == 0
            and _family_min_cc(cfg["family"]) <= cc)


def _forget_tuning() -> None:
    """Make the next auto resolution read the tuning cache again: after the cache was
    written, or FA_CUTE_CACHE_DIR changed, in this process."""
    _tuning.forget()
    _auto_config.cache_clear()


def _resolve_scale(softmax_scale, head_dim: int) -> float:
    """1/sqrt(headdim) by default; otherwise a finite real number > 0.

    Zero and negative scales are refused: the kernel's online softmax takes each row's
    maximum of the unscaled scores, which is the row's maximum of the scaled ones only for
    a positive scale.
    """
    if softmax_scale is None:
        return 1.0 / math.sqrt(head_dim)
    if not isinstance(softmax_scale, numbers.Real) or isinstance(softmax_scale, bool):
        raise TypeError(f"softmax_scale must be a real number or None; got "
                        f"{type(softmax_scale).__name__}")
    try:
        scale = float(softmax_scale)
    except OverflowError:  # an int beyond float range
        scale = math.inf
    if not (math.isfinite(scale) and scale > 0.0):
        raise ValueError(f"softmax_scale must be a finite number > 0; got {softmax_scale}")
    return scale


def _check_out(out, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_rows: int) -> None:
    """out must look like q, have one memory location per element, and not alias k or v.

    Each thread block reads its own Q tile before it writes the same rows of O, so out may
    be q itself (same address and strides); any other overlap with q, and every overlap
    with k or v (read by all blocks while others write), would race.
    """
    _check_tensor("out", out)
    if out.dtype != q.dtype:
        raise TypeError(f"out has dtype {out.dtype}; it must match q ({q.dtype})")
    if out.shape != q.shape:
        raise ValueError(f"out has shape {tuple(out.shape)}; it must match q "
                         f"{tuple(q.shape)}")
    _check_layout("out", out, block_rows)
    if _overlaps_itself(out):
        raise ValueError("out has elements that share memory (e.g. an expanded tensor); pass "
                         "a tensor with one memory location per element")
    is_q = out.data_ptr() == q.data_ptr() and out.stride() == q.stride()
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not (name == "q" and is_q) and _spans_overlap(out, t):
            raise ValueError(f"out overlaps the memory of {name}; pass a separate output "
                             "tensor" + (" (or q itself)" if name == "q" else ""))


def _check_layout(name: str, t: torch.Tensor, block_rows: int) -> None:
    """The kernel's 16-byte loads need a contiguous last dim, batch/seqlen/nheads strides
    that are whole multiples of 16 bytes, and a 16-byte aligned start; its 32-bit in-tile
    offsets need block_rows * seqlen stride below 2^31."""
    if t.stride(3) != 1:
        raise ValueError(f"{name} must have a contiguous last dim (headdim stride 1); got "
                         f"strides {tuple(t.stride())}; call .contiguous() on it")
    multiple = _ALIGN_BYTES // t.element_size()
    if any(s % multiple for s in _row_strides(t)):
        raise ValueError(f"{name} has strides {tuple(t.stride())}; the batch, seqlen and nheads "
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


def _check_devices(tensors: Sequence[Tuple[str, torch.Tensor]], cfg: dict) -> None:
    """All tensors on one CUDA device whose compute capability the config supports."""
    for name, t in tensors:
        if not t.is_cuda:
            raise ValueError(f"{name} is on {t.device}; fa_cute runs on CUDA tensors only "
                             "(move them to a GPU, e.g. with .cuda())")
    device = tensors[0][1].device
    for name, t in tensors[1:]:
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but q is on {device}; q, k, v and out "
                             "must be on one CUDA device")
    needed = _family_min_cc(cfg["family"])
    cc = torch.cuda.get_device_capability(device)
    if cc < needed:
        raise ValueError(f"config {cfg['name']!r} needs a GPU of compute capability "
                         f"{needed[0]}.{needed[1]} or newer; {device} has {cc[0]}.{cc[1]}")


def _family_min_cc(family: str) -> Tuple[int, int]:
    """'sm80' -> (8, 0): the oldest GPU a kernel family runs on."""
    match = re.fullmatch(r"sm(\d+)(\d)a?", family)
    if match is None:
        raise RuntimeError(f"fa_cute._C reports an unknown kernel family {family!r}")
    return int(match.group(1)), int(match.group(2))


def _row_strides(t: torch.Tensor) -> Tuple[int, int, int]:
    """(batch, seqlen, nheads) element strides for the kernel; 0 for dims of size 1.

    A size-1 dim's stride never enters an address, and PyTorch treats a tensor as
    contiguous whatever that stride is, so it must neither fail the alignment check (the
    advice ".contiguous()" would not change it) nor reach the kernel.
    """
    return tuple(s if n > 1 else 0 for n, s in zip(t.shape[:3], t.stride()[:3]))


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

    def span(t: torch.Tensor) -> Tuple[int, int]:
        last = sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
        return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def _check_tensor(name: str, t) -> None:
    """A strided torch.Tensor: the kernel needs data_ptr() and strides."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) torch.Tensor; got layout {t.layout}")
