"""A launch: what `_validate.validate` resolved for a call (`Launch`), the kernel's view of the
tensors (element strides, a grouped-query decode's packed views) and the `_C.forward` call
itself on PyTorch's current stream, with the split-KV buffers a small decode needs.

Everything from `launch_kernel` down runs on every call, cached or not: it is written for
host time (no views built, no stream objects, the split heuristic asked once per shape).
"""

import functools
from typing import NamedTuple, Optional, Sequence, Tuple

import torch

from . import _C
from ._configs import MAX_BLOCK_M

__all__ = ["ALIGN_BYTES", "Launch", "MAX_TILE_OFFSET", "current_stream", "kernel_args",
           "launch_kernel", "launch_strides", "packable", "packed_strides", "row_strides",
           "sdpa_row_strides", "split_kv_args", "split_kv_buffers"]

# The kernels load and store 16 bytes at a time, so every row must start 16-byte aligned.
ALIGN_BYTES = 16

# The kernel addresses a tile's rows with 32-bit offsets.
MAX_TILE_OFFSET = 2**31


class Launch(NamedTuple):
    """What `_validate.validate` resolved: everything `_C.forward` needs besides the tensors.

    Sizes are those of the launch: a grouped-query decode (`packed`) runs as
    nheads // nheads_k query rows of nheads_k heads (`packed_strides`).
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
    # (batch, seqlen, nheads) element strides of q, k and v as launched (`launch_strides`):
    # the validation cache keys on the strides, so they are computed once per shape.
    q_strides: Tuple[int, int, int]
    k_strides: Tuple[int, int, int]
    v_strides: Tuple[int, int, int]
    # The logits softcap (`_C.forward`'s softcap): 0.0 for none.
    softcap: float = 0.0
    # The sliding window's bounds left and right of the diagonal (`_C.forward`'s
    # window_left, window_right): -1 for none.
    window_left: int = -1
    window_right: int = -1


def launch_kernel(launch: Launch, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  out: torch.Tensor, lse: Optional[torch.Tensor], timed: bool,
                  sdpa_layout: bool = False) -> float:
    """Call the kernel on validated tensors (nothing for an empty problem); its ms if timed.

    lse, when given, is contiguous (batch, nheads, seqlen_q) float32; a packed decode
    writes it as (batch, nheads_k, nheads // nheads_k), the same memory. sdpa_layout: q, k,
    v and out are (batch, nheads, seqlen, headdim), sdpa's layout, read without views (their
    transposes are forward's layout; out's strides by `sdpa_row_strides`).
    """
    if launch.batch == 0 or launch.nheads == 0:
        return 0.0
    # Entering torch.cuda.device costs microseconds, as much as a decode step's kernel:
    # only when the tensors are not on the current device.
    device = q.device
    if device.index == torch.cuda.current_device():
        return _launch_on_current_device(launch, q, k, v, out, lse, timed, sdpa_layout)
    with torch.cuda.device(device):
        return _launch_on_current_device(launch, q, k, v, out, lse, timed, sdpa_layout)


# PyTorch's current-stream handle for a device index, without building a torch.cuda.Stream
# object: torch.cuda.current_stream(device).cuda_stream costs 3-6 us of host time a call on
# an H100 host (benchmarks/host_overhead.py), a fifth of a decode step's Python. The
# private binding is used where this PyTorch has it (tests/test_forward_gpu.py checks that
# it names the stream torch.cuda.current_stream does, inside torch.cuda.stream too).
_raw_current_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def current_stream(device_index: int) -> int:
    """The handle (cudaStream_t as an int) of the current CUDA stream of a device."""
    if _raw_current_stream is not None:
        return _raw_current_stream(device_index)
    return torch.cuda.current_stream(device_index).cuda_stream


def _launch_on_current_device(launch: Launch, q: torch.Tensor, k: torch.Tensor,
                              v: torch.Tensor, out: torch.Tensor, lse: Optional[torch.Tensor],
                              timed: bool, sdpa_layout: bool) -> float:
    stream = current_stream(q.device.index)
    # The split buffers must stay referenced until the launch is queued (then the caching
    # allocator orders their reuse after the kernel on this stream).
    buffers = split_kv_buffers(launch, q.device)
    return _C.forward(*kernel_args(launch, q, k, v, out, lse, sdpa_layout), q.device.index, stream,
                      timed, *split_kv_args(buffers))


def split_kv_buffers(launch: Launch, device: torch.device
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
def _num_splits(launch: Launch, device_index: int) -> int:
    """The kernel's split-KV heuristic for a launch; it depends on nothing else (the GPU's
    resident block slots are fixed), so it is asked once per shape."""
    return _C.num_splits(launch.config, launch.dtype, launch.batch, launch.seqlen_q,
                         launch.seqlen_k, launch.nheads, launch.nheads_k, launch.is_causal,
                         device_index)


def split_kv_args(buffers: Optional[Tuple[int, torch.Tensor, torch.Tensor]]) -> tuple:
    """`_C.forward`'s trailing (num_splits, o_accum, lse_accum), or () for no split."""
    if buffers is None:
        return ()
    splits, o_accum, lse_accum = buffers
    return splits, o_accum.data_ptr(), lse_accum.data_ptr()


def kernel_args(launch: Launch, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                out: torch.Tensor, lse: Optional[torch.Tensor], sdpa_layout: bool = False) -> tuple:
    """`_C.forward`'s arguments up to softmax_scale, is_causal, causal_offset, softcap and the
    window (device,
    stream and timed follow), in the contract's order; apart from `launch_kernel` so that
    tests can check them on CPU tensors."""
    # A packed decode's views of q and out (`packed_strides`) start where q and out do:
    # only their strides differ, and those of q, k and v come with the launch.
    return (launch.config, launch.dtype,
            q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
            0 if lse is None else lse.data_ptr(),
            launch.batch, launch.seqlen_q, launch.seqlen_k,
            launch.nheads, launch.nheads_k, launch.head_dim,
            launch.q_strides, launch.k_strides, launch.v_strides,
            _out_strides(out, launch, sdpa_layout),
            launch.softmax_scale, launch.is_causal, launch.causal_offset, launch.softcap,
            launch.window_left, launch.window_right)


def _out_strides(out: torch.Tensor, launch: Launch, sdpa_layout: bool) -> Tuple[int, int, int]:
    """out's row strides as launched; sdpa_layout: out is (batch, nheads, seqlen, headdim)."""
    if not sdpa_layout:
        return launch_strides(out, launch.packed, launch.nheads_k)
    if launch.packed:  # the packed strides are computed from out in forward's layout
        return launch_strides(out.transpose(1, 2), True, launch.nheads_k)
    return sdpa_row_strides(out)


def packable(t: torch.Tensor) -> bool:
    """Whether the `packed_strides` view of t keeps the kernel's in-tile offsets 32-bit: its row
    stride is t's head stride, bounded for the tallest tile (the config is not known yet).
    Where it is not, the decode runs unpacked, whose single row needs no such bound."""
    return t.stride(2) * MAX_BLOCK_M < MAX_TILE_OFFSET


def packed_strides(t: torch.Tensor, nheads_k: int) -> Tuple[int, int, int, int]:
    """Strides that view q or out of a one-row grouped-query decode, (batch, 1, nheads,
    headdim), as (batch, group, nheads_k, headdim) with group = nheads // nheads_k: row j of
    K/V head hk is query head hk * group + j, the head that reads K/V head hk.

    One query row per head would give each (batch, head) its own launch tile, nearly all
    of it masked, and load every K/V head group times; as rows of one tile the group's
    heads share each K/V load. The view aliases q and out (no copies; the launch passes
    only its strides, `launch_strides`), and the LSE needs none: (batch, nheads_k, group)
    contiguous is (batch, nheads, 1) contiguous.
    """
    s = t.stride()
    return (s[0], s[2], t.shape[2] // nheads_k * s[2], s[3])


def launch_strides(t: torch.Tensor, packed: bool, nheads_k: int) -> Tuple[int, int, int]:
    """`row_strides` of t as launched: of its `packed_strides` view where the decode is
    packed, computed without building the view (as_strided costs microseconds a call)."""
    if not packed:
        return row_strides(t)
    batch, _, nheads, _ = t.shape
    return _kernel_strides((batch, nheads // nheads_k, nheads_k), packed_strides(t, nheads_k))


def row_strides(t: torch.Tensor) -> Tuple[int, int, int]:
    """(batch, seqlen, nheads) element strides for the kernel; 0 for dims of size 1.

    A size-1 dim's stride never enters an address, and PyTorch treats a tensor as
    contiguous whatever that stride is, so it must neither fail the alignment check (the
    advice ".contiguous()" would not change it) nor reach the kernel.
    """
    return _kernel_strides(t.shape, t.stride())


def _kernel_strides(shape: Sequence[int], stride: Sequence[int]) -> Tuple[int, int, int]:
    """`row_strides` from a shape and strides (written out: this runs on every call)."""
    return (stride[0] if shape[0] > 1 else 0, stride[1] if shape[1] > 1 else 0,
            stride[2] if shape[2] > 1 else 0)


def sdpa_row_strides(t: torch.Tensor) -> Tuple[int, int, int]:
    """`row_strides` of t.transpose(1, 2) for a (batch, nheads, seqlen, headdim) tensor (sdpa's
    layout), without building the view (each view op is host time on a training step's
    host-bound path)."""
    shape, stride = t.shape, t.stride()
    return (stride[0] if shape[0] > 1 else 0, stride[2] if shape[2] > 1 else 0,
            stride[1] if shape[1] > 1 else 0)
