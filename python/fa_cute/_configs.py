"""Kernel configs: the table this build holds (`_C.configs()`), which GPUs run each one, and
how a `config` argument becomes a config: a named one checked against the inputs, or
`config="auto"`'s pick for the launch shape and the tensors' GPU (the tuning cache of
`_tuning`, else the built-in table of `_tuned`, else `_C`'s heuristic).

auto's picks are memoized per exact shape (`auto_config`); `_cache.forget_tuning` drops them
with the launches validated under them.
"""

import copy
import functools
import re
from typing import Dict, List, Optional, Tuple

import torch

from . import _C, _tuned, _tuning

__all__ = ["AUTO", "CONFIGS", "DTYPE_NAMES", "MAX_BLOCK_M", "PLACEHOLDER_CC", "auto_config",
           "check_config_fits", "check_config_type", "configs", "family_runs_on", "gpu_of",
           "heuristic_part", "packed_call_config", "pick_config", "sm80_default", "smem_limit_of",
           "tunable", "tuned_pick"]

# config="auto" (or None): the tuning cache, else the built-in table, else the heuristic.
AUTO = "auto"

# The dtypes the kernels take, by the names the configs list them under.
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}

CONFIGS: Dict[str, dict] = {c["name"]: c for c in _C.configs()}

# The most rows any built tile holds: the bound for the in-tile offsets of a decode launch,
# which is decided before its config is (the config depends on the launch's shape).
MAX_BLOCK_M = max(c["block_m"] for c in CONFIGS.values())

# Compute capability used to pick the default config (forward or backward) for tensors that
# are not on a GPU. Such tensors are rejected by the final device check anyway; the
# placeholder only lets the checks before it (the layout against the config's block sizes,
# whether a backward kernel exists for the head dim) run on CPU tensors.
PLACEHOLDER_CC = (8, 0)


def configs() -> List[dict]:
    """The kernel configs compiled into this build (a copy: callers may modify it)."""
    return copy.deepcopy(list(CONFIGS.values()))


def pick_config(config, q: torch.Tensor, head_dim: int, causal: bool, seqlen_q: int,
                seqlen_k: int, names) -> dict:
    """The named config, or auto's pick for this launch shape and the tensors' GPU.

    names: the arguments' names in messages (`_validate.Names`: forward's or sdpa's).
    """
    if config is None:
        config = AUTO
    check_config_type(config)
    if config != AUTO:
        if config not in CONFIGS:
            raise ValueError(f"config {config!r} is not built; built configs: "
                             f"{', '.join(CONFIGS)}")
        cfg = CONFIGS[config]
        if cfg["head_dim"] != head_dim:
            raise ValueError(f"config {config!r} is for head_dim {cfg['head_dim']}, but "
                             f"{names.q}, {names.k} and {names.v} have headdim {head_dim}")
        if DTYPE_NAMES[q.dtype] not in cfg["dtypes"]:
            raise ValueError(f"config {config!r} supports dtypes {cfg['dtypes']}, not "
                             f"{q.dtype}")
        return cfg
    head_dims = sorted({c["head_dim"] for c in CONFIGS.values()})
    if head_dim not in head_dims:
        raise ValueError(f"headdim of {names.q} ({head_dim}) is not supported; built head "
                         f"dims: {', '.join(map(str, head_dims))}")
    gpu, cc, smem = _device_part(q)
    return auto_config(gpu, cc, DTYPE_NAMES[q.dtype], head_dim, seqlen_q, seqlen_k, causal, smem)


def packed_call_config(config, q: torch.Tensor, head_dim: int, auto_name,
                       cap: float = 0.0) -> dict:
    """The config a packed or cached call (`varlen_forward`, `forward_with_kvcache`) runs: the
    named one, or for "auto" (or None) CONFIGS[auto_name(cc)] with cc q's compute capability
    (8.0 for a CPU tensor, so that CPU tests reach every check; and 8.0 where a softcap meets
    the Hopper d=256 kernels, which have none). Checked for q's head dim, dtype and softcap;
    ValueError/TypeError name the config."""
    if config is None:
        config = AUTO
    check_config_type(config)
    if config != AUTO:
        if config not in CONFIGS:
            raise ValueError(f"config {config!r} is not built; built configs: {', '.join(CONFIGS)}")
        cfg = CONFIGS[config]
    else:
        head_dims = sorted({c["head_dim"] for c in CONFIGS.values()})
        if head_dim not in head_dims:
            raise ValueError(f"headdim of q ({head_dim}) is not supported; built head dims: "
                             f"{', '.join(map(str, head_dims))}")
        cc = gpu_of(q.device.index)[1] if q.is_cuda else PLACEHOLDER_CC
        cfg = CONFIGS[auto_name(cc)]
        if cfg["family"] == "sm90a" and cap and head_dim >= 256:
            cfg = CONFIGS[auto_name(PLACEHOLDER_CC)]
    if cfg["head_dim"] != head_dim:
        raise ValueError(f"config {cfg['name']!r} is for head_dim {cfg['head_dim']}, but q has "
                         f"headdim {head_dim}")
    if DTYPE_NAMES[q.dtype] not in cfg["dtypes"]:
        raise ValueError(f"config {cfg['name']!r} supports dtypes {cfg['dtypes']}, not {q.dtype}")
    if cfg["family"] == "sm90a" and cap and cfg["head_dim"] >= 256:
        raise ValueError(f"softcap: config {cfg['name']!r} (Hopper, head dim 256) has no softcap; "
                         "use config='auto' or an sm80 config")
    return cfg


def sm80_default(head_dim: int, seqlen_q: int, seqlen_k: int, causal: bool, why: str) -> dict:
    """The heuristic's pick on an sm80 GPU: the Ampere-style kernel, which reads rows one by
    one, where the Hopper kernel's TMA cannot load a tensor (an expanded one) or has no
    variant (a softcap at d=256). why: what sends the call there, for the error of a build
    without an sm80 config of head_dim."""
    if not any(c["family"] == "sm80" and c["head_dim"] == head_dim for c in CONFIGS.values()):
        raise ValueError(f"{why}: this build has no config of the Ampere-style (sm80) kernel, the "
                         f"only one that takes it, for head_dim {head_dim} (FA_CUTE_CONFIGS)")
    return CONFIGS[_C.default_config(head_dim, seqlen_q, seqlen_k, 8, 0, causal)]


def _device_part(q: torch.Tensor) -> Tuple[str, Tuple[int, int], Optional[int]]:
    """(GPU name, compute capability, shared memory limit) of auto's pick for q's device."""
    if q.is_cuda:
        (gpu, cc), smem = gpu_of(q.device.index), smem_limit_of(q.device.index)
        return gpu, cc, smem
    return "", PLACEHOLDER_CC, None


def check_config_type(config) -> None:
    if not (config is None or isinstance(config, str)):
        raise TypeError(f"config must be a config name (str), 'auto' or None; got "
                        f"{type(config).__name__}")


@functools.lru_cache(maxsize=None)
def gpu_of(device_index: int) -> Tuple[str, Tuple[int, int]]:
    """(name, compute capability) of a GPU: the device part of auto's key, asked once."""
    props = torch.cuda.get_device_properties(device_index)
    return props.name, (props.major, props.minor)


@functools.lru_cache(maxsize=None)
def smem_limit_of(device_index: int) -> Optional[int]:
    """The most dynamic shared memory one block may opt in to on a GPU, in bytes; None where
    this PyTorch does not report it (before 2.6), and then `_C` is the one to refuse a
    config that needs more (its launch fails with an error naming the config)."""
    return getattr(torch.cuda.get_device_properties(device_index),
                   "shared_memory_per_block_optin", None)


@functools.lru_cache(maxsize=1024)
def auto_config(gpu: str, cc: Tuple[int, int], dtype: str, head_dim: int, seqlen_q: int,
                seqlen_k: Optional[int] = None, causal: bool = False,
                smem_limit: Optional[int] = None) -> dict:
    """config="auto": the tuning cache's pick, else the built-in table's, else the heuristic's.

    seqlen_k defaults to seqlen_q; smem_limit None means no limit is known. Memoized per
    exact shape because the heuristic takes exact lengths; after the first call of a shape
    the hot path pays one dictionary lookup. A pick that is not built, is a ladder config
    or cannot run here (a stale cache, a table for another build or GPU) is passed over.
    """
    seqlen_k = seqlen_q if seqlen_k is None else seqlen_k
    tuned = tuned_pick(gpu, cc, dtype, head_dim, seqlen_q, causal, smem_limit)
    if tuned is not None:
        return tuned
    default = CONFIGS[_C.default_config(head_dim, seqlen_q, seqlen_k, cc[0], cc[1], causal)]
    if tunable(default, dtype, head_dim, cc, smem_limit):
        return default
    # The heuristic knows the compute capability, not this GPU's shared memory (or a build
    # lacks its dtype): the largest tile that fits. If none does, the device check then
    # refuses the default with the reason.
    fitting = [c for c in CONFIGS.values() if tunable(c, dtype, head_dim, cc, smem_limit)]
    return max(fitting, key=lambda c: (c["block_m"] * c["block_n"], c["num_warps"]),
               default=default)


def tuned_pick(gpu: str, cc: Tuple[int, int], dtype: str, head_dim: int, seqlen_q: int,
               causal: bool, smem_limit: Optional[int]) -> Optional[dict]:
    """The tuning cache's pick, else the built-in table's, if usable here; None otherwise.
    Neither depends on seqlen_k (`_cache`'s launch plans rely on it)."""
    key = _tuning.key(dtype, head_dim, causal, seqlen_q)
    for name in (_tuning.cached_configs(gpu).get(key), _tuned.TABLE.get(gpu, {}).get(key)):
        cfg = CONFIGS.get(name)
        if cfg is not None and tunable(cfg, dtype, head_dim, cc, smem_limit):
            return cfg
    return None


def heuristic_part(config, q: torch.Tensor, launch) -> Optional[tuple]:
    """What of auto's pick for a launch (a `_launch.Launch`) depends on seqlen_k: None where
    it does not (a named config, or a pick of the tuning cache or table, which key on
    seqlen_q); else the heuristic's arguments but seqlen_k, with its answer: (compute
    capability, answer). Its answer alone decides the rest of `auto_config`, given the same
    device and dtype."""
    if not (config is None or config == AUTO):
        return None
    gpu, cc, smem = _device_part(q)
    if tuned_pick(gpu, cc, launch.dtype, launch.head_dim, launch.seqlen_q, launch.is_causal,
                  smem) is not None:
        return None
    return cc, _C.default_config(launch.head_dim, launch.seqlen_q, launch.seqlen_k, cc[0], cc[1],
                                 launch.is_causal)


def tunable(cfg: dict, dtype: str, head_dim: int, cc: Tuple[int, int],
            smem_limit: Optional[int] = None) -> bool:
    """Whether cfg is a production config (not a ladder rung) for this head dim and dtype
    that runs on a GPU of compute capability cc with smem_limit bytes of shared memory per
    block (None: not known): what auto may pick and `python -m fa_cute.tune` times. Any
    tile runs any seqlen (the kernel masks ragged tails)."""
    return (cfg["rung"] is None and cfg["head_dim"] == head_dim and dtype in cfg["dtypes"]
            and family_runs_on(cfg["family"], cc)
            and (smem_limit is None or cfg["smem_bytes"] <= smem_limit))


def check_config_fits(cfg: dict, where: str, cc: Tuple[int, int],
                      smem_limit: Optional[int]) -> None:
    """The GPU `where` (compute capability cc, smem_limit bytes of shared memory per block
    or None where unknown) runs cfg's kernel family and holds its shared memory."""
    if not family_runs_on(cfg["family"], cc):
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


def family_runs_on(family: str, cc: Tuple[int, int]) -> bool:
    needed, exact = _family_cc(family)
    return cc == needed if exact else cc >= needed
