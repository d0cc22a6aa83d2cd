"""fa_cute: FlashAttention kernels (forward, backward) for PyTorch, in CUDA C++ on CUTLASS CuTe.

    out = fa_cute.forward(q, k, v)   # q, k, v: (batch, seqlen, nheads, headdim) bf16/fp16
    out = fa_cute.sdpa(q, k, v)      # torch SDPA's layout, (batch, nheads, seqlen, headdim)
    out.sum().backward()             # gradients, for inputs that require grad
    fa_cute.activate()               # torch SDPA's flash backend on CUDA runs fa_cute
    out, lse = fa_cute.combine(outs, lses)  # attention over disjoint key sets, merged
    out = fa_cute.varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k)  # packed
    dq, dk, dv = fa_cute.varlen_backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k)
    out = fa_cute.forward_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lens)  # decode

See README.md for what is supported and `python -m fa_cute.info` for what this build holds.
"""

try:
    import torch  # noqa: F401
except ImportError as exc:
    # pip installs torch with fa_cute (a dependency); this is for a build used without pip.
    raise ImportError("fa_cute needs PyTorch (>= 2.1, a CUDA build to run kernels): "
                      "pip install torch") from exc

from ._api import backward, configs, forward, forward_timed, resolve_config, sdpa  # noqa: E402
from . import _C  # noqa: E402  (after _api, whose import explains a missing build)
from ._combine import combine  # noqa: E402
from ._sdpa_backend import activate, activated, deactivate, is_active  # noqa: E402
from ._kvcache import forward_with_kvcache  # noqa: E402
from ._varlen import varlen_forward  # noqa: E402
from ._varlen_backward import varlen_backward  # noqa: E402
from . import context_parallel  # noqa: E402  (fa_cute.context_parallel.ring_attention etc.)

__version__: str = _C.build_info()["version"]

__all__ = ["__version__", "activate", "activated", "backward", "combine", "configs",
           "context_parallel", "deactivate",
           "forward", "forward_timed", "forward_with_kvcache", "is_active", "resolve_config", "sdpa",
           "varlen_backward", "varlen_forward"]
