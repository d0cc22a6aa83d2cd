"""`fa_cute.forward_with_kvcache`: attention of new queries over a KV cache, with the new
tokens' keys and values appended into the cache in the same call (what a serving engine's
decode and chunked-prefill steps do).

The cache is either dense, (batch_cache, capacity, nheads_k, headdim) entries with an
optional int32 `cache_batch_idx` naming sequence b's entry, or paged, (num_pages,
page_size, nheads_k, headdim) pages read through an int32 `page_table` (batch, max_pages):
sequence b's key j is row j % page_size of page page_table[b, j // page_size]. Sequence b
holds `cache_seqlens[b]` keys before the call; the new k, v (batch, seqlen_new, nheads_k,
headdim) are written at positions cache_seqlens[b] .. + seqlen_new - 1 (src/kv_append.cu),
then q attends to the first cache_seqlens[b] + seqlen_new keys, aligned bottom-right. The
int32 tensors stay on the GPU (no host sync; the call captures in a CUDA graph). What the
host cannot see is checked on the GPU: a position past an entry's capacity, an entry or a
page outside its pool is not written, and the call's output and LSE become NaN
(src/fwd_varlen_check.h). Both kernel families take any page size that is a multiple of 16:
the Hopper kernel loads a key block from one page by one TMA box where the page size is a
multiple of the config's block_n, else as block_n / 16 boxes of 16 rows, each from its page
(config='auto' takes the heuristic's config for every page size; docs/perf-notes.md, Serving).
"""

from typing import NamedTuple, Optional, Tuple, Union

import torch

from . import _C, _cache
from ._configs import AUTO, DTYPE_NAMES, packed_call_config
from ._launch import current_stream, launch_strides, packable, row_strides
from ._validate import (ALLOWED_DTYPES, check_devices, check_flag, check_layout, check_memory,
                        check_tensor, grad_mode, resolve_scale, softcap_arg, window_arg)

__all__ = ["KvPlan", "call_key", "forward_with_kvcache", "launch_plan", "plan_call"]

Result = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


def forward_with_kvcache(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         k: Optional[torch.Tensor] = None, v: Optional[torch.Tensor] = None, *,
                         cache_seqlens: torch.Tensor, page_table: Optional[torch.Tensor] = None,
                         cache_batch_idx: Optional[torch.Tensor] = None, causal: bool = False,
                         softmax_scale: Optional[float] = None,
                         window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                         return_lse: bool = False, num_splits: int = 0,
                         config: Optional[str] = AUTO) -> Result:
    """Attention of q (batch, seqlen_q, nheads, headdim) over each sequence's cached keys and
    values plus the new ones k, v (appended into the cache first; both or neither).

    cache_seqlens: int32 CUDA tensor (batch,): keys cached before this call. page_table
    (int32, (batch, max_pages); page_size a multiple of 16) or cache_batch_idx (int32,
    (batch,)) select where each sequence's keys live (at most one of them). causal,
    window_size, softcap and softmax_scale are `forward`'s, aligned bottom-right on the
    sequence's keys after the append. num_splits: 0 lets the split-KV heuristic choose, 1
    never splits, n > 1 splits each query tile's keys in n. Returns the output (batch,
    seqlen_q, nheads, headdim) and, with return_lse, the float32 LSE (batch, nheads,
    seqlen_q). No backward: inputs that require grad in grad mode raise ValueError.
    """
    tensors = (q, k_cache, v_cache, k, v, cache_seqlens, page_table, cache_batch_idx)
    key = call_key(tensors, causal, softmax_scale, window_size, softcap, return_lse, num_splits, config)
    hit = _cache.KVCACHE_VALIDATED.get(key) if key is not None else None
    if hit is not None and not _records_grad(tensors[:5]) and _cache.storages_hold(tensors, hit[1]):
        plan = hit[0]
    else:
        plan = plan_call(q, k_cache, v_cache, k, v, cache_seqlens, page_table, cache_batch_idx, causal,
                         softmax_scale, window_size, softcap, return_lse, num_splits, config)
        if key is not None:
            _cache.remember(_cache.KVCACHE_VALIDATED, key, (plan, _cache.storage_extents(tensors)))
    return launch_plan(plan, q, k_cache, v_cache, k, v, cache_seqlens, page_table, cache_batch_idx)


class KvPlan(NamedTuple):
    """What a validated call launches with (`plan_call`): all but the tensors' addresses. strides:
    q's as launched, k_cache's, v_cache's, out's as launched (a contiguous tensor of q's shape),
    k's and v's ((0, 0, 0) without them; `_launch.row_strides`): the cache keys each tensor's
    strides, so a hit needs none of them recomputed."""
    config: str
    dtype: str
    batch: int
    nheads: int
    seqlen_q: int
    launch_seqlen_q: int
    launch_nheads: int
    packed: bool
    seqlen_new: int
    capacity: int
    nheads_k: int
    head_dim: int
    entries: int
    page_table_cols: int
    page_size: int
    strides: tuple
    scale: float
    causal: bool
    softcap: float
    window_left: int
    window_right: int
    splits: int
    return_lse: bool
    # `_C.kvcache_forward`'s arguments from the batch size to window_right, in its order, made
    # from the fields above by `plan_call`: the same on every call of the plan, so a hit
    # passes them as one tuple (a field changed by _replace would not reach the kernel).
    sizes: tuple


def call_key(tensors, causal, softmax_scale, window_size, softcap, return_lse, num_splits,
             config) -> Optional[tuple]:
    """What `plan_call`'s checks read, or None where a key cannot stand in for them (a tensor
    argument that is not a CUDA tensor, a flag of another type: the checks name it)."""
    if not (type(causal) is bool and type(return_lse) is bool and type(num_splits) is int
            and (config is None or type(config) is str)
            and (softmax_scale is None or type(softmax_scale) in (int, float))
            and type(softcap) in (int, float) and type(window_size) is tuple and len(window_size) == 2
            and type(window_size[0]) is int and type(window_size[1]) is int):
        return None
    keys = _cache.tensors_key(tensors)
    if keys is None:
        return None
    return (keys, causal, type(softmax_scale), softmax_scale, window_size, type(softcap), softcap,
            return_lse, num_splits, config)


def plan_call(q, k_cache, v_cache, k, v, cache_seqlens, page_table, cache_batch_idx, causal,
              softmax_scale, window_size, softcap, return_lse, num_splits, config) -> KvPlan:
    """Every check of `forward_with_kvcache`, then what its launch needs."""
    check_flag("causal", causal)
    check_flag("return_lse", return_lse)
    cap = softcap_arg(softcap)
    window_left, window_right = window_arg(window_size, causal)
    named = [("q", q), ("k_cache", k_cache), ("v_cache", v_cache)]
    if (k is None) != (v is None):
        raise ValueError("k and v: pass both new keys and values, or neither")
    if k is not None:
        named += [("k", k), ("v", v)]
    for name, t in named:
        check_tensor(name, t)
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"{name} has dtype {t.dtype}; allowed: {ALLOWED_DTYPES}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D, got shape {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype}, q {q.dtype}: pass one dtype")
    if _records_grad(t for _, t in named):
        raise ValueError("forward_with_kvcache has no backward: call it under torch.no_grad() "
                         "or torch.inference_mode()")
    batch, seqlen_q, nheads, head_dim = q.shape
    entries, rows, nheads_k, head_dim_k = k_cache.shape
    if tuple(v_cache.shape) != tuple(k_cache.shape):
        raise ValueError(f"v_cache must have k_cache's shape {tuple(k_cache.shape)}, got "
                         f"{tuple(v_cache.shape)}")
    if head_dim_k != head_dim:
        raise ValueError(f"k_cache has headdim {head_dim_k}, q {head_dim}: they must match")
    if nheads_k == 0 or nheads % nheads_k:
        raise ValueError(f"nheads of q ({nheads}) must be a multiple of nheads of the cache "
                         f"({nheads_k})")
    seqlen_new = 0
    if k is not None:
        if tuple(k.shape) != tuple(v.shape) or k.shape[0] != batch or k.shape[2:] != k_cache.shape[2:]:
            raise ValueError(f"k and v must be (batch={batch}, seqlen_new, nheads_k={nheads_k}, "
                             f"headdim={head_dim}), got {tuple(k.shape)} and {tuple(v.shape)}")
        seqlen_new = k.shape[1]
    _check_int32("cache_seqlens", cache_seqlens, (batch,))
    paged = page_table is not None
    if paged:
        if cache_batch_idx is not None:
            raise ValueError("cache_batch_idx and page_table: pass at most one (the page table "
                             "already says where each sequence's keys live)")
        if page_table.dim() != 2 or page_table.shape[0] != batch:
            raise ValueError(f"page_table must be (batch={batch}, max_pages), got shape "
                             f"{tuple(getattr(page_table, 'shape', ()))}")
        _check_int32("page_table", page_table, tuple(page_table.shape))
        if rows % 16 or rows == 0:
            raise ValueError(f"k_cache: a paged cache's page_size (dim 1) must be a positive "
                             f"multiple of 16, got {rows}")
        capacity = page_table.shape[1] * rows
    else:
        if cache_batch_idx is not None:
            _check_int32("cache_batch_idx", cache_batch_idx, (batch,))
        elif entries < batch:
            raise ValueError(f"k_cache has {entries} entries for a batch of {batch}: pass "
                             "cache_batch_idx to map sequences onto entries")
        capacity = rows
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 0:
        raise ValueError(f"num_splits must be an int >= 0 (0: the heuristic), got {num_splits!r}")
    if batch == 0 or seqlen_q == 0 or nheads == 0:
        raise ValueError(f"q must have batch, seqlen_q and nheads >= 1, got shape {tuple(q.shape)}")
    scale = resolve_scale(softmax_scale, head_dim)
    # A one-query decode hides nothing with causal; with GQA its query heads run as the rows
    # of one tile per K/V head (as `forward` packs them: each K/V block loaded once per group,
    # not once per query head). A window's mask needs the query position, so it is not packed.
    causal = bool(causal) and seqlen_q > 1
    windowed = window_left >= 0 or window_right >= 0
    packed = seqlen_q == 1 and nheads > nheads_k and not windowed and packable(q)
    launch_seqlen_q, launch_nheads = (nheads // nheads_k, nheads_k) if packed else (seqlen_q, nheads)
    cfg = packed_call_config(config, q, head_dim, lambda cc: _C.default_config(
        head_dim, launch_seqlen_q, capacity, cc[0], cc[1], causal), cap)
    for name, t in named:
        check_layout(name, t, cfg["block_n"] if "cache" in name else cfg["block_m"])
    ints = [("cache_seqlens", cache_seqlens)] + ([("page_table", page_table)] if paged else []) + \
        ([("cache_batch_idx", cache_batch_idx)] if cache_batch_idx is not None else [])
    check_devices(named + ints, cfg, "q")
    for name, t in named + ints:
        check_memory(name, t)

    device = q.device.index
    splits = num_splits or _C.num_splits(cfg["name"], DTYPE_NAMES[q.dtype], batch, launch_seqlen_q,
                                          capacity, launch_nheads, nheads_k, causal, device)
    page_table_cols, page_size = (page_table.shape[1], rows) if paged else (0, 0)
    strides = (launch_strides(q, packed, nheads_k), row_strides(k_cache), row_strides(v_cache),
               launch_strides(torch.empty(q.shape, device="meta"), packed, nheads_k),
               row_strides(k) if k is not None else (0, 0, 0),
               row_strides(v) if v is not None else (0, 0, 0))
    window_right = -1 if causal else window_right
    sizes = (batch, launch_seqlen_q, max(seqlen_new, 1), capacity, launch_nheads, nheads_k, head_dim,
             entries, page_table_cols, page_size, entries if paged else 0, *strides, scale, causal, cap,
             window_left, window_right)
    return KvPlan(cfg["name"], DTYPE_NAMES[q.dtype], batch, nheads, seqlen_q, launch_seqlen_q,
                  launch_nheads, packed, seqlen_new, capacity, nheads_k, head_dim, entries,
                  page_table_cols, page_size, strides, scale, causal, cap, window_left, window_right,
                  splits, return_lse, sizes)


def launch_plan(plan: KvPlan, q, k_cache, v_cache, k, v, cache_seqlens, page_table, cache_batch_idx) -> Result:
    """The append and the attention of a planned call, on q's device and current stream."""
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = (torch.empty((plan.batch, plan.nheads, plan.seqlen_q), dtype=torch.float32, device=q.device)
           if plan.return_lse else None)
    device = q.device.index
    splits = plan.splits
    accum = None
    if splits > 1:
        rows_total = plan.batch * plan.launch_nheads * plan.launch_seqlen_q
        values = splits * rows_total * plan.head_dim
        accum = torch.empty(values + splits * rows_total, dtype=torch.float32, device=q.device)
    args = (plan.config, plan.dtype, q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
            out.data_ptr(), 0 if lse is None else lse.data_ptr(),
            0 if k is None or not plan.seqlen_new else k.data_ptr(),
            0 if v is None or not plan.seqlen_new else v.data_ptr(),  # no new tokens: no append
            cache_seqlens.data_ptr(),
            0 if cache_batch_idx is None else cache_batch_idx.data_ptr(),
            0 if page_table is None else page_table.data_ptr(), *plan.sizes, device, current_stream(device),
            splits if splits > 1 else 1,
            accum.data_ptr() if accum is not None else 0,
            accum.data_ptr() + 4 * values if accum is not None else 0)  # no view: fp32 LSEs after O
    # Entering torch.cuda.device costs microseconds, as much as a decode step's kernel: only
    # when q is not on the current device (`_launch.launch_kernel` does the same).
    if device == torch.cuda.current_device():
        _C.kvcache_forward(*args)
    else:
        with torch.cuda.device(q.device):
            _C.kvcache_forward(*args)
    return (out, lse) if plan.return_lse else out


def _records_grad(tensors) -> bool:
    """Whether autograd would record the call: grad mode on and a tensor (None: absent) that
    requires grad; forward_with_kvcache has no backward, so its checks refuse such a call and
    its cache never answers one."""
    if grad_mode():
        for t in tensors:
            if t is not None and t.requires_grad:
                return True
    return False


def _check_int32(name: str, t, shape) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be an int32 torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int32:
        raise TypeError(f"{name} must have dtype torch.int32, got {t.dtype}")
    if tuple(t.shape) != tuple(shape) or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous tensor of shape {tuple(shape)}, got "
                         f"{tuple(t.shape)}")


