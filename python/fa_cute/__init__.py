"""fa_cute: a FlashAttention forward kernel for PyTorch, in CUDA C++ on CUTLASS CuTe.

    out = fa_cute.forward(q, k, v)   # q, k, v: (batch, seqlen, nheads, headdim) bf16/fp16

See README.md for what is supported and `python -m fa_cute.info` for what this build holds.
"""

from ._api import _C, configs, forward, forward_timed, resolve_config

__version__: str = _C.build_info()["version"]

__all__ = ["__version__", "configs", "forward", "forward_timed", "resolve_config"]
