"""The backward: the checks of `fa_cute.backward`'s arguments (`validate_backward`), the
backward kernel's config for a GPU (`backward_config`; `check_backward_supported` asks it
when a forward records gradients, so that an unsupported case fails before the forward
runs, not in the backward pass), and the `_C.backward` call on PyTorch's current stream
with the work buffers it takes (`run_backward`; `backward_work_buffers` sizes them, with
deterministic=True's dq_semaphore counters).

Messages follow `_validate`'s rules: TypeError for types, ValueError for the rest, each
naming the argument and what is allowed, the device checked last.
"""

from typing import NamedTuple, Optional, Tuple

import torch

from . import _C, _cache, _tuning
from ._configs import (AUTO, DTYPE_NAMES, PLACEHOLDER_CC, check_config_type, family_runs_on,
                       gpu_of, smem_limit_of)
from ._launch import ALIGN_BYTES, Launch, current_stream, row_strides, sdpa_row_strides
from ._validate import (ALLOWED_DTYPES, FORWARD_NAMES, LIMITS, SDPA_NAMES, Names, broadcast_dim, check_devices,
                        check_flag, check_inputs, check_layout, check_memory, check_shapes,
                        check_tensor, overlaps_itself, resolve_scale,
                        softcap_arg, spans_overlap, window_arg)

__all__ = ["BACKWARD_CONFIGS", "DETERMINISTIC_FAMILIES", "backward_config", "backward_kernel_args",
           "named_backward_config", "backward_work_buffers", "check_backward_supported",
           "backward_options", "check_like", "deterministic_config", "dq_accum_rows", "dq_semaphore_count",
           "has_backward", "kernel_ready", "RecordedPlan", "saved_tensor_hooks_active",
           "run_backward", "run_recorded_backward", "run_sdpa_backward",
           "semaphore_arg", "validate_backward", "validate_backward_cached"]

# The backward configs this build holds, by name (none in a build without the backward).
BACKWARD_CONFIGS = {c["name"]: c for c in getattr(_C, "backward_configs", list)()}

# The tallest tile of the backward kernels (64 or 128 query or key rows): the bound of the
# layout check's 32-bit in-tile offsets where the config's tile is not known. `_C`
# re-checks against the config it launches.
_BLOCK_ROWS = max((max(c["block_m"], c["block_n"]) for c in BACKWARD_CONFIGS.values()),
                  default=128)

_TRAIN_ELSEWHERE = ("run it under torch.no_grad() or torch.inference_mode(), pass "
                    ".detach()ed tensors, or train with "
                    "torch.nn.functional.scaled_dot_product_attention")


def has_backward() -> bool:
    """Whether this build of `_C` has the backward kernel."""
    return hasattr(_C, "backward")


def backward_config(q: torch.Tensor, q_name: str = "q", causal: bool = False,
                    seqlen_q: Optional[int] = None) -> str:
    """The backward kernel's config for q's head dim on q's GPU (for a tensor elsewhere, on a
    placeholder GPU: the device check refuses it later): with seqlen_q, the winner that
    `python -m fa_cute.tune --bwd` cached for the shape where it runs here, else
    `_C.default_backward_config`'s. NotImplementedError where this build has no backward;
    ValueError naming the head dim where no kernel takes it."""
    if not has_backward():
        raise NotImplementedError(
            "this build of fa_cute._C has no backward kernel (fa_cute.backward, and gradients "
            "through fa_cute.forward and fa_cute.sdpa, need one): rebuild fa_cute from a "
            f"source tree that has it, or {_TRAIN_ELSEWHERE}")
    head_dim = q.shape[-1]
    if q.is_cuda:
        gpu, cc = gpu_of(q.device.index)
        where = f" on {q.device} ({gpu}, compute capability {cc[0]}.{cc[1]})"
        if seqlen_q is not None and q.dtype in DTYPE_NAMES:
            dtype = DTYPE_NAMES[q.dtype]
            tuned = _tuning.cached_configs(gpu).get(
                _tuning.backward_key(dtype, head_dim, causal, seqlen_q))
            cfg = BACKWARD_CONFIGS.get(tuned)
            limit = smem_limit_of(q.device.index)
            if (cfg and cfg["head_dim"] == head_dim and dtype in cfg["dtypes"]
                    and family_runs_on(cfg["family"], cc)
                    and (limit is None or cfg["smem_bytes"] <= limit)):
                return cfg["name"]
    else:
        cc, where = PLACEHOLDER_CC, ""
    try:
        return _C.default_backward_config(head_dim, cc[0], cc[1])
    except ValueError as exc:
        raise ValueError(f"headdim of {q_name} ({head_dim}) has no backward kernel{where} "
                         f"({exc}); {_TRAIN_ELSEWHERE}") from None


def named_backward_config(config, q: torch.Tensor, q_name: str = "q") -> str:
    """The backward config `config` names, checked against this build and q (head dim,
    dtype); None or "auto" give `backward_config`'s pick instead (the caller's). Whether
    q's GPU runs it is `check_devices`'s to say, the device being checked last."""
    check_config_type(config)
    if not has_backward():
        backward_config(q, q_name)  # raises: no backward in this build
    if config not in BACKWARD_CONFIGS:
        raise ValueError(f"config {config!r} is not a backward config of this build; built: "
                         f"{', '.join(BACKWARD_CONFIGS) or 'none'}, or 'auto'")
    cfg = BACKWARD_CONFIGS[config]
    if cfg["head_dim"] != q.shape[-1]:
        raise ValueError(f"config {config!r} is for head_dim {cfg['head_dim']}, but {q_name} "
                         f"has headdim {q.shape[-1]}")
    if q.dtype in DTYPE_NAMES and DTYPE_NAMES[q.dtype] not in cfg["dtypes"]:
        raise ValueError(f"config {config!r} supports dtypes {cfg['dtypes']}, not {q.dtype}")
    return config


# The backward families whose kernels take `_C.backward`'s dq_semaphore (deterministic=True,
# src/bwd_dq_order.h). In the Hopper family (sm90a) its _dqbulk and _dqwg variants refuse it (`_C`).
DETERMINISTIC_FAMILIES = ("sm80", "sm90a")


def deterministic_config(config: str, q: torch.Tensor, q_name: str = "q") -> str:
    """`config` (backward_config's pick) where its family has a deterministic mode, else the
    default config of a family that has one for q's head dim: the sm80 kernel, which runs on
    every GPU the backward supports (`_C.default_backward_config` for compute capability
    8.0, whose shared memory every later GPU has)."""
    cfg = BACKWARD_CONFIGS.get(config)
    if cfg is None or cfg["family"] in DETERMINISTIC_FAMILIES:
        return config
    try:
        fallback = _C.default_backward_config(q.shape[-1], 8, 0)
    except ValueError:
        fallback = None
    if BACKWARD_CONFIGS.get(fallback, {}).get("family") not in DETERMINISTIC_FAMILIES:
        raise ValueError(f"headdim of {q_name} ({q.shape[-1]}): no backward config of this "
                         "build has a deterministic mode (families with one: "
                         f"{', '.join(DETERMINISTIC_FAMILIES)}); pass deterministic=False")
    return fallback


# (head dim, CUDA device) pairs whose backward `check_backward_supported` found: every
# training step's forward asks again, on the host-bound path of a small model's step.
_SUPPORTED: set = set()


def check_backward_supported(q, k, v, names: Names) -> None:
    """At forward time, with grad mode on and q, k or v requiring grad: the backward must
    exist for these inputs (`backward_config`), or the forward raises before it runs. A q
    that is not a 4-D tensor is left to the forward's checks, which name it. A CUDA q's
    answer is remembered for its head dim and device (a refusal is not)."""
    if isinstance(q, torch.Tensor) and q.dim() == 4:
        # Plain CUDA tensors only: a FakeTensor's (torch.compile's) head dim may be symbolic.
        key = (q.shape[-1], q.device) if type(q) is torch.Tensor and q.is_cuda else None
        if key is not None and key in _SUPPORTED:
            return
        backward_config(q, names.q)
        if key is not None:
            _SUPPORTED.add(key)


def validate_backward(dout, q, k, v, out, lse, *, causal, bottom_right: bool, softmax_scale,
                      deterministic, dq, dk, dv, names: Names = FORWARD_NAMES,
                      config: Optional[str] = AUTO, softcap=0.0,
                      window_size=(-1, -1)) -> Launch:
    """Check every argument of the backward, the device last; return what the launch needs.

    bottom_right: forward's causal alignment, else sdpa's top-left. names: q's, k's, v's,
    causal's and the scale's names in messages (forward's or sdpa's). config: a backward
    config's name (`_C.backward_configs()`), or "auto"/None for `backward_config`'s pick.
    softcap and window_size: the forward's (`backward_options` gives what `_C` takes).
    """
    check_flag(names.causal, causal)
    check_flag("deterministic", deterministic)
    softcap_arg(softcap)
    windowed = window_arg(window_size, causal) != (-1, -1)
    inputs = check_inputs(q, k, v, names)
    batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim = check_shapes(q, k, v, names)
    for name, t in (("out", out), ("dout", dout)):
        check_like(name, t, q, names.q)
    _check_lse(lse, q, names.q)
    offset = seqlen_k - seqlen_q if bottom_right else 0
    # As the forward launches it: a mask that hides nothing runs non-causal.
    is_causal = causal and offset < seqlen_k - 1
    auto = config is None or config == AUTO
    if auto:
        config = backward_config(q, names.q, causal=is_causal, seqlen_q=seqlen_q)
        if deterministic:
            config = deterministic_config(config, q, names.q)
    else:
        config = named_backward_config(config, q, names.q)
        if deterministic and BACKWARD_CONFIGS[config]["family"] not in DETERMINISTIC_FAMILIES:
            raise ValueError(f"config {config!r} has no deterministic mode (families with one: "
                             f"{', '.join(DETERMINISTIC_FAMILIES)}); pass deterministic=False "
                             "or another config")
    if BACKWARD_CONFIGS.get(config, {}).get("family") == "sm90a":
        config = _tma_loadable_config(config, auto, inputs + [("dout", dout)], head_dim)
    scale = resolve_scale(softmax_scale, head_dim, names.scale)
    tensors = inputs + [("out", out), ("dout", dout)]
    for name, t in tensors:
        check_layout(name, t, _BLOCK_ROWS)
    tensors.append(("lse", lse))
    buffers = []
    for name, t, like, like_name in (("dq", dq, q, names.q), ("dk", dk, k, names.k),
                                     ("dv", dv, v, names.v)):
        if t is not None:
            check_like(name, t, like, like_name)
            check_layout(name, t, _BLOCK_ROWS)
            if overlaps_itself(t):
                raise ValueError(f"{name} has elements that share memory (e.g. an expanded "
                                 "tensor); pass a tensor with one memory location per element")
            for other, u in tensors + buffers:
                if spans_overlap(t, u):
                    raise ValueError(f"{name} overlaps the memory of {other}; pass a separate "
                                     "tensor")
            buffers.append((name, t))
    check_devices(tensors + buffers, BACKWARD_CONFIGS.get(config), names.q)
    # Forward's launch type, never packed: the backward runs every query row as its own. A
    # window is aligned as the causal mask (bottom-right), with causal or without.
    return Launch(config, DTYPE_NAMES[q.dtype], batch, seqlen_q, seqlen_k, nheads, nheads_k,
                  head_dim, scale, is_causal, offset if is_causal or windowed else 0, False,
                  row_strides(q), row_strides(k), row_strides(v))


def validate_backward_cached(dout, q, k, v, out, lse, *, causal, bottom_right: bool,
                             softmax_scale, deterministic, dq, dk, dv,
                             names: Names = FORWARD_NAMES, config: Optional[str] = AUTO,
                             softcap=0.0, window_size=(-1, -1)) -> Launch:
    """`validate_backward`, answered from `_cache.BACKWARD_VALIDATED` for arguments seen
    before when no gradient buffer is given (given ones bring aliasing checks that depend on
    exact addresses): a hit costs a key and a check that each storage still holds its tensor
    (one freed under it goes to the full checks, which name it). Errors are never cached;
    neither are calls with a tensor elsewhere than a GPU."""
    key = None
    tensors = (dout, q, k, v, out, lse)
    if (dq is None and dk is None and dv is None
            and type(causal) is bool and type(deterministic) is bool
            and (config is None or type(config) is str)
            and (softmax_scale is None or type(softmax_scale) in (int, float))
            and type(softcap) in (int, float) and type(window_size) is tuple
            and all(type(w) is int for w in window_size)):
        tensor_keys = _cache.tensors_key(tensors)
        if tensor_keys is not None:
            key = (tensor_keys, causal, bottom_right, type(softmax_scale), softmax_scale,
                   deterministic, config, names, type(softcap), softcap, window_size)
            launch = _cached(key, tensors)
            if launch is not None:
                return launch
    launch = validate_backward(dout, q, k, v, out, lse, causal=causal, bottom_right=bottom_right,
                               softmax_scale=softmax_scale, deterministic=deterministic,
                               dq=dq, dk=dk, dv=dv, names=names, config=config,
                               softcap=softcap, window_size=window_size)
    if key is not None:
        _remember(key, tensors, launch)
    return launch


def _cached(key: tuple, tensors):
    """The value of `_cache.BACKWARD_VALIDATED`'s entry for key (a launch, or a plan under
    an "sdpa layout" key) where each storage still holds its tensor (one freed under it goes
    to the full checks, which name it); else None."""
    hit = _cache.BACKWARD_VALIDATED.get(key)
    return hit[0] if hit is not None and _cache.storages_hold(tensors, hit[1]) else None


def _remember(key: tuple, tensors, value) -> None:
    """Cache value under key in `_cache.BACKWARD_VALIDATED` with the tensors' extents."""
    _cache.remember(_cache.BACKWARD_VALIDATED, key,
                    (value, _cache.storage_extents(tensors)))


def _tma_loadable_config(config: str, auto: bool, loaded, head_dim: int) -> str:
    """`config` (a Hopper one) where TMA can load each of `loaded` ((name, tensor) pairs: q,
    k, v, dout), else, for "auto", the sm80 kernel's default, which reads rows one by one:
    TMA cannot broadcast an expanded tensor (stride 0 in a dim of size > 1), and `_C` would
    refuse it (the forward's rule, `_validate.validate_forward`)."""
    broadcast = next(((name, dim) for name, t in loaded
                      if (dim := broadcast_dim(t)) is not None), None)
    if broadcast is None:
        return config
    if not auto:
        raise ValueError(f"{broadcast[0]} has stride 0 in its {broadcast[1]} dim (an expanded "
                         f"tensor); backward config {config!r} loads with TMA, which cannot "
                         "broadcast: call .contiguous() on it, or use config='auto'")
    try:
        fallback = _C.default_backward_config(head_dim, 8, 0)
    except ValueError:
        fallback = None
    if BACKWARD_CONFIGS.get(fallback, {}).get("family") != "sm80":
        raise ValueError(f"{broadcast[0]} has stride 0 in its {broadcast[1]} dim (an expanded "
                         "tensor), which the Hopper backward's TMA cannot load, and this build "
                         "has no sm80 backward config for it: call .contiguous() on it")
    return fallback


def check_like(name: str, t, like: torch.Tensor, like_name: str) -> None:
    """t is a tensor of like's dtype and shape whose storage holds it."""
    check_tensor(name, t)
    if t.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {t.dtype}; it must match {like_name} ({like.dtype}, "
                        f"one of {ALLOWED_DTYPES})")
    if t.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; it must match {like_name} "
                         f"{tuple(like.shape)}")
    check_memory(name, t)


def _check_lse(lse, q: torch.Tensor, q_name: str) -> None:
    """lse is the forward's: contiguous float32 (batch, nheads, seqlen_q)."""
    check_tensor("lse", lse)
    if lse.dtype != torch.float32:
        raise TypeError(f"lse has dtype {lse.dtype}; it must be torch.float32 (the forward's "
                        "return_lse=True output)")
    batch, seqlen_q, nheads, _ = q.shape
    if lse.shape != (batch, nheads, seqlen_q):
        raise ValueError(f"lse has shape {tuple(lse.shape)}; it must be (batch, nheads, "
                         f"seqlen_q) of {q_name}: {(batch, nheads, seqlen_q)}")
    check_memory("lse", lse)
    if not lse.is_contiguous():
        raise ValueError(f"lse must be contiguous; got strides {lse.stride()}; call "
                         ".contiguous() on it")


def run_backward(dout, q, k, v, out, lse, *, causal, bottom_right: bool, softmax_scale,
                 deterministic, dq: Optional[torch.Tensor], dk: Optional[torch.Tensor],
                 dv: Optional[torch.Tensor], names: Names = FORWARD_NAMES,
                 config: Optional[str] = AUTO, softcap=0.0, window_size=(-1, -1)
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate, allocate the gradients not given (laid out like q, k and v: torch.empty_like)
    and launch the backward (config: a backward config's name, or "auto") on PyTorch's
    current stream; returns (dq, dk, dv). softcap and window_size: the forward's."""
    launch = validate_backward_cached(dout, q, k, v, out, lse, causal=causal,
                                      bottom_right=bottom_right, softmax_scale=softmax_scale,
                                      deterministic=deterministic, dq=dq, dk=dk, dv=dv,
                                      names=names, config=config, softcap=softcap,
                                      window_size=window_size)
    options = backward_options(softcap, window_size, launch.is_causal)
    dq = torch.empty_like(q) if dq is None else dq
    dk = torch.empty_like(k) if dk is None else dk
    dv = torch.empty_like(v) if dv is None else dv
    if launch.batch and launch.nheads:
        device = q.device
        if device.index == torch.cuda.current_device():
            _launch_backward(launch, dout, q, k, v, out, lse, dq, dk, dv, deterministic, options)
        else:
            with torch.cuda.device(device):
                _launch_backward(launch, dout, q, k, v, out, lse, dq, dk, dv, deterministic,
                                 options)
    else:
        _no_query_heads(dk, dv)
    return dq, dk, dv


def _no_query_heads(dk: torch.Tensor, dv: torch.Tensor) -> None:
    """dk and dv where nothing is launched: no query head reads k and v (nheads = 0, which the
    checks allow with any nheads_k, or batch = 0), so their gradients are 0 (empty tensors
    where batch = 0)."""
    dk.zero_()
    dv.zero_()


class RecordedPlan(NamedTuple):
    """A backward resolved once for the calls of one shape (`_cache.RECORDED_BACKWARD` for
    calls autograd recorded; activate()'s entries in `_cache.BACKWARD_VALIDATED`): the
    validated launch, `_C.backward`'s softcap and window keywords, and the fp32 elements of
    its work buffer (dq_accum, then softmax_d). A recorded call's plan also holds what its
    checks read of the saved q, k, v, out and lse (`_saved_key`) and q's, k's and v's extents
    (`_cache.storages_hold`): a later call uses the plan only where its saved tensors match."""

    launch: Launch
    options: dict
    accum: int
    rows: int
    saved: Optional[tuple] = None
    extents: Optional[tuple] = None
    hooked: bool = False  # made from tensors a saved-tensor hook handed over


_top_saved_hooks = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)


def saved_tensor_hooks_active() -> bool:
    """Whether a saved-tensor hook (torch.autograd.graph.saved_tensors_hooks: save_on_cpu, a
    non-reentrant checkpoint) packs what a forward saves now; True where this PyTorch cannot
    say (the query is private: it takes a flag since 2.8, none before, and may go)."""
    if _top_saved_hooks is None:
        return True
    try:
        return _top_saved_hooks(False) is not None
    except TypeError:
        try:
            return _top_saved_hooks() is not None
        except Exception:
            return True


def _saved_key(tensors) -> object:
    """What the backward's checks read of the saved tensors besides their storages
    (`_cache.tensors_key`: dtype, shape, strides, device, layout, negation bit, 16-byte
    alignment). A saved-tensor hook (torch.autograd.graph.save_on_cpu, a checkpoint's
    recomputation, or any user hook) hands the backward new tensors, which may differ in
    any of these from the forward's. Where one is no CUDA tensor, a fresh object, equal to
    no plan's: the full checks then name it."""
    key = _cache.tensors_key(tensors)
    return key if key is not None else object()


def run_recorded_backward(dout, q, k, v, out, lse, *, causal: bool, softmax_scale, softcap,
                          window_size, recorded: Optional[tuple], sdpa: bool, hooked: bool = True
                          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """autograd's backward of a call it recorded (`_api._Attention`): (dq, dk, dv), each
    allocated like its input (torch.empty_like), in the caller's layout.

    q, k, v, out and lse are the forward's, checked or made by it, in the caller's layout
    (sdpa: (batch, nheads, seqlen, headdim), read through `sdpa_row_strides`, top-left
    causal); dout arrives with out's shape, dtype and device, laid out for the kernel
    (`kernel_ready`). recorded: the key of `_cache.RECORDED_BACKWARD` (the forward's
    validated launch, q's device, the options), None where there is none. A key seen
    before skips the checks, unless dout has a zero stride (an expanded dout, which the
    full checks give a config that reads it; a zero stride in a dim of size 1 takes them
    too, harmlessly), or the saved tensors are not what the plan's were (`_saved_key`: a
    saved-tensor hook may hand over tensors of another layout, dtype or device; asked only
    where one was active in this call's forward or in the plan's, `hooked`: without hooks
    the same recorded launch saves tensors of the same layout, and the comparison costs
    ~3 us of the host time a call; hooks registered on a grad_fn's raw saved tensors after
    its forward are not seen), or a storage no longer holds its q, k or v (freed under
    it), which take the full checks (they name the argument) without replacing the plan."""
    reusable = recorded is not None and 0 not in dout.stride()
    plan = _cache.RECORDED_BACKWARD.get(recorded) if reusable else None
    saved = (q, k, v, out, lse)
    if plan is not None and (((hooked or plan.hooked) and _saved_key(saved) != plan.saved)
                             or not _cache.storages_hold(saved[:3], plan.extents)):
        plan, reusable = None, False
    if plan is None:
        views = tuple(t.transpose(1, 2) for t in (dout, q, k, v, out)) if sdpa else (dout, q, k, v, out)
        launch = validate_backward_cached(*views, lse, causal=causal, bottom_right=not sdpa,
                                          softmax_scale=softmax_scale, deterministic=False,
                                          dq=None, dk=None, dv=None,
                                          names=SDPA_NAMES if sdpa else FORWARD_NAMES,
                                          softcap=softcap, window_size=window_size)
        plan = _plan(launch, softcap, window_size)
        if reusable:
            plan = plan._replace(saved=_saved_key(saved), extents=_cache.storage_extents(saved[:3]), hooked=hooked)
            _cache.remember(_cache.RECORDED_BACKWARD, recorded, plan)
    return _launch_plan(plan, dout, q, k, v, out, lse, sdpa)


def run_sdpa_backward(dout, query, key, value, out, lse, *, causal: bool, softmax_scale
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward of PyTorch's flash SDPA op under `fa_cute.activate()`: (dq, dk, dv) for
    (batch, nheads, seqlen, headdim) tensors, top-left causal, each gradient allocated like
    its input. Its plan is cached in `_cache.BACKWARD_VALIDATED` by all six tensors as passed
    (the dispatcher hands over any tensors, not only a recorded forward's), so a repeated
    call costs their keys and a check that each storage still holds its tensor, and makes
    no view of them."""
    tensors = (dout, query, key, value, out, lse)
    cache_key = plan = None
    if type(causal) is bool and (softmax_scale is None or type(softmax_scale) in (int, float)):
        tensor_keys = _cache.tensors_key(tensors)
        if tensor_keys is not None:
            # The entry holds a plan, not a launch: its key's "sdpa layout" is this
            # function's alone.
            cache_key = ("sdpa layout", tensor_keys, causal, type(softmax_scale), softmax_scale)
            plan = _cached(cache_key, tensors)
    if plan is None:
        views = tuple(t.transpose(1, 2) for t in tensors[:5])
        plan = _plan(validate_backward(*views, lse, causal=causal, bottom_right=False,
                                       softmax_scale=softmax_scale, deterministic=False,
                                       dq=None, dk=None, dv=None, names=SDPA_NAMES), 0.0, (-1, -1))
        if cache_key is not None:
            _remember(cache_key, tensors, plan)
    return _launch_plan(plan, dout, query, key, value, out, lse, True)


def _plan(launch: Launch, softcap, window_size) -> RecordedPlan:
    """The plan of a validated launch (`backward_work_buffers`' sizes, without counters: the
    plans serve the non-deterministic backward only)."""
    heads = launch.batch * launch.nheads
    return RecordedPlan(launch, backward_options(softcap, window_size, launch.is_causal),
                        heads * dq_accum_rows(launch.seqlen_q) * launch.head_dim,
                        heads * launch.seqlen_q)


def _launch_plan(plan: RecordedPlan, dout, q, k, v, out, lse, sdpa: bool
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Allocate the gradients like their inputs and launch a resolved backward (sdpa: the
    tensors in sdpa's layout, read through `sdpa_row_strides`)."""
    launch = plan.launch
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if launch.batch and launch.nheads:
        device = q.device
        # One buffer, dq_accum then softmax_d (`backward_work_buffers`' layout), passed by
        # address: slicing it would cost two view ops a call.
        work = torch.empty(plan.accum + plan.rows, dtype=torch.float32, device=device)
        accum_ptr = work.data_ptr()
        args = _kernel_args(launch, (dout, q, k, v, out, lse, dq, dk, dv), accum_ptr,
                            accum_ptr + 4 * plan.accum, sdpa_row_strides if sdpa else row_strides)
        if device.index == torch.cuda.current_device():
            _C.backward(*args, device.index, current_stream(device.index), **plan.options)
        else:
            with torch.cuda.device(device):
                _C.backward(*args, device.index, current_stream(device.index), **plan.options)
    else:
        _no_query_heads(dk, dv)
    return dq, dk, dv


def kernel_ready(dout):
    """The gradient autograd hands over, which may be laid out in any way (an expanded
    tensor, for a loss that sums the output): as it is where the kernel reads it so
    (contiguous last dim, 16-byte aligned strides and start), else a contiguous copy. A
    dout that is not a 4-D tensor is left to the backward's checks."""
    if not (isinstance(dout, torch.Tensor) and dout.dim() == 4):
        return dout
    if dout.is_neg():
        # A negated view holds the un-negated values in memory, which is what the kernel reads.
        dout = dout.resolve_neg()
    multiple = ALIGN_BYTES // dout.element_size()
    s0, s1, s2, s3 = dout.stride()
    if (s3 == 1 and s0 % multiple == 0 and s1 % multiple == 0 and s2 % multiple == 0
            and dout.data_ptr() % ALIGN_BYTES == 0):
        return dout
    return dout.contiguous()


def backward_options(softcap, window_size, is_causal: bool) -> dict:
    """`_C.backward`'s (and `_C.varlen_backward`'s) softcap and window keywords for the
    forward's softcap and window_size (checked: softcap_arg, window_arg); with causal the
    right bound is the diagonal, which is_causal already says."""
    left, right = window_arg(window_size, is_causal)
    return {"softcap": softcap_arg(softcap), "window_left": left,
            "window_right": -1 if is_causal else right}


def dq_semaphore_count(config: str, batch: int, nheads: int, seqlen_q: int) -> int:
    """The int32 counters of deterministic=True for backward config `config`: one per query
    block of each (batch, query head), batch * nheads * ceil(seqlen_q / block_m)
    (src/bwd_dq_order.h)."""
    block_m = BACKWARD_CONFIGS[config]["block_m"]
    return batch * nheads * -(-seqlen_q // block_m)


def dq_accum_rows(seqlen_q: int) -> int:
    """Rows per (batch, head) of `_C.backward`'s dq_accum: seqlen_q rounded up to
    `_C.limits()["dq_accum_row_align"]` (whole query blocks for every config; the Hopper
    kernel's tiled layout adds them whole)."""
    align = LIMITS["dq_accum_row_align"]
    return -(-seqlen_q // align) * align


def backward_work_buffers(launch: Launch, device: torch.device, deterministic: bool,
                          config: Optional[str] = None
                          ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """`_C.backward`'s work buffers for launch (with backward config `config`, default the
    launch's): (dq_accum, softmax_d, dq_semaphore), the last None unless deterministic.

    One allocation from PyTorch's caching allocator on the current stream (which orders its
    reuse after the kernels), uninitialised (the preprocess kernel zeroes / fills all three):
    dq_accum fp32 (batch, nheads, dq_accum_rows(seqlen_q), head_dim) first (16-byte
    aligned), then softmax_d fp32 (batch, nheads, seqlen_q), then, deterministic,
    dq_semaphore int32 (batch, nheads, ceil(seqlen_q / block_m)). `run_backward` and the
    timing code (`fa_cute._timing`) both allocate through here."""
    heads = launch.batch * launch.nheads
    rows = heads * launch.seqlen_q
    accum = heads * dq_accum_rows(launch.seqlen_q) * launch.head_dim
    counters = (dq_semaphore_count(config or launch.config, launch.batch, launch.nheads,
                                   launch.seqlen_q) if deterministic else 0)
    work = torch.empty(accum + rows + counters, dtype=torch.float32, device=device)
    dq_semaphore = work[accum + rows:].view(torch.int32) if deterministic else None
    return work[:accum], work[accum:accum + rows], dq_semaphore


def _launch_backward(launch: Launch, dout, q, k, v, out, lse, dq, dk, dv,
                     deterministic: bool, options: dict) -> None:
    dq_accum, softmax_d, dq_semaphore = backward_work_buffers(launch, q.device, deterministic)
    _C.backward(*backward_kernel_args(launch, dout, q, k, v, out, lse, dq, dk, dv, dq_accum,
                                      softmax_d), q.device.index, current_stream(q.device.index),
                **semaphore_arg(dq_semaphore), **options)


def semaphore_arg(dq_semaphore: Optional[torch.Tensor]) -> dict:
    """`_C.backward`'s dq_semaphore keyword: the counters' address, or nothing (0, not
    deterministic)."""
    return {} if dq_semaphore is None else {"dq_semaphore": dq_semaphore.data_ptr()}


def backward_kernel_args(launch: Launch, dout, q, k, v, out, lse, dq, dk, dv,
                         dq_accum: torch.Tensor, softmax_d: torch.Tensor) -> tuple:
    """`_C.backward`'s arguments up to causal_offset (device and stream follow), in the
    contract's order; apart from the launch so that tests can check them on CPU tensors."""
    return _kernel_args(launch, (dout, q, k, v, out, lse, dq, dk, dv), dq_accum.data_ptr(),
                        softmax_d.data_ptr(), row_strides)


def _kernel_args(launch: Launch, tensors: tuple, dq_accum_ptr: int, softmax_d_ptr: int,
                 strides) -> tuple:
    """`backward_kernel_args` from the work buffers' addresses, reading the row strides of
    out, dout, dq, dk and dv with `strides` (`row_strides`, or `sdpa_row_strides` for
    tensors in sdpa's layout)."""
    dout, q, k, v, out, lse, dq, dk, dv = tensors
    return (launch.config, launch.dtype,
            dout.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
            lse.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
            dq_accum_ptr, softmax_d_ptr,
            launch.batch, launch.seqlen_q, launch.seqlen_k, launch.nheads, launch.nheads_k,
            launch.head_dim,
            launch.q_strides, launch.k_strides, launch.v_strides, strides(out), strides(dout),
            strides(dq), strides(dk), strides(dv),
            launch.softmax_scale, launch.is_causal, launch.causal_offset)
