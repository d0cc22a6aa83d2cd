"""The caches that let a repeated call skip `_validate.validate`: launches validated before,
by shape (`VALIDATED`), and launch plans (`PLANS`), which answer each new length of a KV
cache that grows a key a step. Errors are never cached, and a call with `out` always runs
the checks (its aliasing depends on exact addresses).

`validate_cached` is the hot path of every repeated call: its hit is written for host time.
`forget_tuning` drops both caches with auto's memoized picks, which they hold.
"""

from typing import Dict, Optional, Tuple

import torch

from . import _C, _tuning
from ._configs import AUTO, auto_config, heuristic_part, pick_config
from ._launch import ALIGN_BYTES, Launch
from ._validate import (FORWARD_NAMES, LIMITS, SDPA_NAMES, Names, check_memory, extent_bytes,
                        validate)

__all__ = ["BACKWARD_VALIDATED", "KVCACHE_VALIDATED", "PLANS", "RECORDED_BACKWARD", "VALIDATED", "VALIDATED_MAX",
           "forget_tuning",
           "plan_key", "remember", "storage_extents", "storages_hold", "tensors_key", "validate_cached",
           "validate_sdpa_cached"]


# Launches that passed `validate`, by everything the checks read (see `_launch_key`): a
# decode step in a serving loop repeats one shape thousands of times, and the checks cost
# about 60 us of Python per call on an H100 host, more than the step's kernel (FLASH's
# whole SDPA call costs 18 us). Bounded: the oldest entry goes when full. Each entry is
# (launch, element size, q's, k's and v's `extent_bytes`): what a hit needs to ask whether
# each storage still holds its tensor (`validate_cached`).
VALIDATED: Dict[tuple, Tuple[Launch, int, int, int, int]] = {}
VALIDATED_MAX = 1024

# The backward's launches that passed `_backward.validate_backward`, keyed as `VALIDATED`
# (dout, q, k, v, out, lse and the flags; `_backward.validate_backward_cached`): a training
# step calls the backward once per layer with the shapes of the step before, and its checks
# cost ~200 us of Python a call on an H100 host, twice PyTorch's whole FLASH backward call.
# Each value is (launch, (element size, `extent_bytes`) of dout, q, k, v, out and lse); under
# a key that starts with "sdpa layout" (`_backward.run_sdpa_backward`, activate()'s backward,
# keyed on the tensors in sdpa's layout) the first item is a `_backward.RecordedPlan`.
BACKWARD_VALIDATED: Dict[tuple, Tuple[object, Tuple[Tuple[int, int], ...]]] = {}

# The backward plans (`_backward.RecordedPlan`: launch, options, work buffer size) of calls
# that autograd recorded (`_api._Attention`), keyed by the forward's validated launch, q's
# device and the call's options (`_backward.run_recorded_backward`'s recorded=): the
# forward's checks fixed q, k and v, and out and lse are the forward's own, so the backward
# checks only dout's layout, not six tensors' keys a call.
RECORDED_BACKWARD: Dict[tuple, tuple] = {}

# `forward_with_kvcache`'s calls that passed its checks, keyed as `BACKWARD_VALIDATED` (every
# tensor's `tensors_key`, the flags with their types): a serving loop's decode step repeats
# one call every step, and its checks cost ~60 us of Python on a 2-core CPU VM. Each value
# is (the call's launch plan, `_kvcache.KvPlan`, and (element size, `extent_bytes`) of each
# tensor, None for one not passed).
KVCACHE_VALIDATED: Dict[tuple, tuple] = {}


def _launch_key(q, k, v, causal, bottom_right, softmax_scale, config, names,
                softcap=0.0, window_size=(-1, -1)) -> Optional[tuple]:
    """What `validate` depends on when out is None, or None where a key cannot stand in
    for the checks (not all tensors, or not on a GPU: errors are never cached).

    Tensor types, layouts, dtypes, shapes, strides, devices, negation bits and 16-byte
    alignment of the data pointers; the flags and the scale with their types (a bool scale
    is an error, an int one is not); the config name; the argument names of the messages.
    Not the storages' sizes: `validate_cached` checks those on every call.
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
            softmax_scale is None or type(softmax_scale) in (int, float)) or type(softcap) not in (
            int, float) or type(window_size) is not tuple or len(window_size) != 2 or not (
            type(window_size[0]) is int and type(window_size[1]) is int):
        return None
    try:
        return ((q.dtype, q.shape, q.stride(), q.device, q.layout, q.is_neg(),
                 q.data_ptr() % ALIGN_BYTES),
                (k.dtype, k.shape, k.stride(), k.device, k.layout, k.is_neg(),
                 k.data_ptr() % ALIGN_BYTES),
                (v.dtype, v.shape, v.stride(), v.device, v.layout, v.is_neg(),
                 v.data_ptr() % ALIGN_BYTES),
                type(causal), causal, bottom_right, type(softmax_scale), softmax_scale,
                type(config), config, names, type(softcap), softcap, window_size)
    except RuntimeError:
        # A sparse tensor has no data_ptr(), a nested one no shape: the checks name them.
        # (Free where nothing raises, unlike asking each tensor's layout first.)
        return None


def tensors_key(tensors) -> Optional[tuple]:
    """What the checks read of each tensor argument besides its storage (dtype, shape,
    strides, device, layout, negation bit, 16-byte alignment; `_launch_key`'s fields, written
    out there for q, k and v on the forward's hot path), None for an absent one; None in
    place of the whole where one is not a CUDA tensor or has no data_ptr() (errors are never
    cached: the checks name it). One loop with the fields inline: a decode step keys eight
    tensors a call."""
    keys = []
    try:
        for t in tensors:
            if t is None:
                keys.append(None)
            elif type(t) is torch.Tensor and t.is_cuda:
                keys.append((t.dtype, t.shape, t.stride(), t.device, t.layout, t.is_neg(),
                             t.data_ptr() % ALIGN_BYTES))
            else:
                return None
    except RuntimeError:  # a sparse tensor has no data_ptr()
        return None
    return tuple(keys)


def storage_extents(tensors) -> tuple:
    """What `storages_hold` compares: (element size, `extent_bytes`) of each tensor, None for
    an absent one."""
    return tuple(None if t is None else (t.element_size(), extent_bytes(t)) for t in tensors)


def storages_hold(tensors, extents) -> bool:
    """Whether each storage still holds its tensor (a cached entry's (element size,
    `extent_bytes`) per tensor, None for an absent one): a storage freed or shrunk under a
    tensor of a cached shape sends the call to the full checks, which name it."""
    for t, e in zip(tensors, extents):
        if e is not None and t.storage_offset() * e[0] + e[1] > t.untyped_storage().nbytes():
            return False
    return True


def validate_cached(q, k, v, *, causal, bottom_right: bool, softmax_scale, config, out,
                    names: Optional[Names] = None, softcap=0.0, window_size=(-1, -1)) -> Launch:
    """`validate`, answered from `VALIDATED` for a shape seen before (out=None only: an
    output tensor brings aliasing checks that depend on exact addresses)."""
    names = FORWARD_NAMES if names is None else names
    key = None
    if out is None:
        key = _launch_key(q, k, v, causal, bottom_right, softmax_scale, config, names, softcap,
                          window_size)
        hit = VALIDATED.get(key) if key is not None else None
        if hit is None and key is not None:
            hit = _plan_hit(key, q, k, v, causal, bottom_right, config, names)
        if hit is not None and _holds(hit, q, k, v):
            return hit[0]
    launch = validate(q, k, v, causal=causal, bottom_right=bottom_right,
                      softmax_scale=softmax_scale, config=config, out=out, names=names,
                      softcap=softcap, window_size=window_size)
    if key is not None:
        entry = (launch, q.element_size(), extent_bytes(q), extent_bytes(k), extent_bytes(v))
        remember(VALIDATED, key, entry)
        # A plan needs k's seqlen stride to be read (`row_strides` zeroes a length-1 dim's)
        # and auto's pick to be the config launched (not the sm80 fallback for a tensor
        # that TMA cannot broadcast, whose choice `_plan_hit` does not redo).
        pick = pick_config(config, q, launch.head_dim, launch.is_causal, launch.seqlen_q,
                           launch.seqlen_k, names)["name"]
        # A window's bounds are normalised against the lengths (`validate`): no plan.
        windowed = launch.window_left >= 0 or launch.window_right >= 0
        if launch.seqlen_k > 1 and pick == launch.config and not windowed:
            if len(PLANS) >= VALIDATED_MAX:
                PLANS.clear()
            PLANS[plan_key(key)] = (entry, heuristic_part(config, q, launch))
    return launch


def _holds(hit: tuple, q, k, v) -> bool:
    """Whether q's, k's and v's storages still hold them, for a `VALIDATED` entry. A storage
    can be freed or shrunk under a tensor of a cached shape (FSDP's resize_(0)), and keying
    on storage sizes and offsets would miss on every step of a window sliding through a
    fixed buffer: each hit asks. One that fails goes to `validate`, which names it."""
    _, size, q_end, k_end, v_end = hit
    return (q.storage_offset() * size + q_end <= q.untyped_storage().nbytes()
            and k.storage_offset() * size + k_end <= k.untyped_storage().nbytes()
            and v.storage_offset() * size + v_end <= v.untyped_storage().nbytes())


def validate_sdpa_cached(query, key, value, *, causal, softmax_scale) -> Launch:
    """`validate_cached` for sdpa's (batch, nheads, seqlen, headdim) query, key and value
    (auto's config, top-left causal), keyed on them as passed, so that a hit makes no view
    of them (each view op is host time on a training step's host-bound path). A miss
    validates their transposed views (forward's layout, the kernel's) with sdpa's names.
    The key starts with "sdpa layout": the same shapes and strides in forward's layout are
    another problem."""
    cache_key = _launch_key(query, key, value, causal, False, softmax_scale, AUTO, SDPA_NAMES)
    if cache_key is not None:
        cache_key = ("sdpa layout",) + cache_key
        hit = VALIDATED.get(cache_key)
        if hit is not None and _holds(hit, query, key, value):
            return hit[0]
    tensors = (query, key, value)
    try:
        q, k, v = tuple(t.transpose(1, 2) for t in tensors)
    except RuntimeError:
        # PyTorch refuses to view a tensor beyond its storage (one freed under it, as FSDP
        # does): say which argument, at no cost to calls that pass.
        for name, t in zip(SDPA_NAMES[:3], tensors):
            check_memory(name, t)
        raise
    launch = validate_cached(q, k, v, causal=causal, bottom_right=False,
                             softmax_scale=softmax_scale, config=AUTO, out=None, names=SDPA_NAMES)
    if cache_key is not None:
        # A transposed view spans the bytes its tensor does: the same extents.
        remember(VALIDATED, cache_key, (launch, q.element_size(), extent_bytes(q),
                                        extent_bytes(k), extent_bytes(v)))
    return launch


def remember(cache: Dict[tuple, tuple], key: tuple, entry: tuple) -> None:
    """Add a validated launch to `cache`, dropping the oldest when full: a growing KV cache
    adds one a step, and clearing all would make every other shape pay its checks again."""
    if len(cache) >= VALIDATED_MAX:
        # pop, not del: two autograd threads (one per device) may evict the same oldest key.
        cache.pop(next(iter(cache)), None)
    cache[key] = entry


# Launch plans by everything `_launch_key` holds but the seqlen of k and v: a decode loop
# over a growing KV cache (`k_cache[:, :n]`) has a new shape every step, and validating
# each in full would cost ~60 us of Python a step. Each value is (the `VALIDATED` entry
# of a length validated in full, `heuristic_part`); `_plan_hit` redoes, for a new length,
# what depends on it.
PLANS: Dict[tuple, Tuple[tuple, Optional[tuple]]] = {}

# The fields of `Launch` that a new KV length changes.
_SEQLEN_K = Launch._fields.index("seqlen_k")
_CAUSAL_OFFSET = Launch._fields.index("causal_offset")


def plan_key(key: tuple) -> Optional[tuple]:
    """`_launch_key`'s key with k's and v's seqlen left out (their shapes' dim 1); None
    where k or v is not 4-D (no plan covers it: `validate` names the argument)."""
    k_part, v_part = key[1], key[2]
    if len(k_part[1]) != 4 or len(v_part[1]) != 4:
        return None
    return (key[0], (k_part[0], k_part[1][0], k_part[1][2:]) + k_part[2:],
            (v_part[0], v_part[1][0], v_part[1][2:]) + v_part[2:]) + key[3:]


def _plan_hit(key: tuple, q, k, v, causal: bool, bottom_right: bool, config,
              names: Names) -> Optional[tuple]:
    """The `VALIDATED` entry for a seqlen_k that a plan of this key (`PLANS`) covers, added
    to `VALIDATED`; None where there is no plan or the length changes more than its own
    fields, and `validate` must decide.

    What `validate` reads of seqlen_k: k's and v's lengths equal, >= 1 and within the
    kernels' bound; the causal flag launched (a mask that hides nothing runs non-causal)
    and with it the packing and the launch's query length; auto's pick (the heuristic takes
    seqlen_k); the causal offset; the storage extents (the caller checks those). The plan's
    strides and layout checks hold for every length > 1. Everything else is in the key.
    """
    planned = plan_key(key)
    plan = PLANS.get(planned) if planned is not None else None
    if plan is None:
        return None
    (template, size, q_end, k_end, v_end), heuristic = plan
    seqlen_k = k.shape[1]
    if not (1 < seqlen_k <= LIMITS["max_seqlen"] and v.shape[1] == seqlen_k):
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
    # Written out rather than with _replace and `extent_bytes` (each ~1 us on a 2-core VM):
    # only the seqlen dim differs from the plan's, so each extent moves by whole seqlen
    # strides (`row_strides`, the real ones for lengths > 1); an empty K/V stays empty.
    launch = Launch._make(template[:_SEQLEN_K] + (seqlen_k,)
                          + template[_SEQLEN_K + 1:_CAUSAL_OFFSET]
                          + (offset if is_causal else 0,) + template[_CAUSAL_OFFSET + 1:])
    grown = (seqlen_k - template.seqlen_k) * size
    entry = (launch, size, q_end, k_end and k_end + grown * template.k_strides[1],
             v_end and v_end + grown * template.v_strides[1])
    remember(VALIDATED, key, entry)
    return entry


def forget_tuning() -> None:
    """Make the next auto resolution read the tuning cache again: after the cache was
    written, or FA_CUTE_CACHE_DIR changed, in this process."""
    _tuning.forget()
    auto_config.cache_clear()
    VALIDATED.clear()  # auto's picks are part of the validated launches and plans
    BACKWARD_VALIDATED.clear()
    RECORDED_BACKWARD.clear()
    KVCACHE_VALIDATED.clear()
    PLANS.clear()
