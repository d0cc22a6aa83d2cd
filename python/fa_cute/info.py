"""`python -m fa_cute.info`: what this build of fa_cute holds and which GPU it sees.

Meant for bug reports and for checking an install: it needs no GPU.
"""

import torch

import fa_cute
from fa_cute import _C


def describe() -> str:
    """The report as text: versions, archs and configs built, and the GPUs visible."""
    build = _C.build_info()
    lines = [
        f"fa_cute {fa_cute.__version__}",
        f"built with CUTLASS {build['cutlass_version']}, CUDA {build['cuda_version']}, "
        f"archs {build['archs']}",
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        "configs built:",
    ]
    for c in fa_cute.configs():
        lines.append(f"  {c['name']}: family {c['family']}, head_dim {c['head_dim']}, "
                     f"block {c['block_m']}x{c['block_n']}, {c['num_warps']} warps, "
                     f"dtypes {','.join(c['dtypes'])}")
    if not torch.cuda.is_available():
        lines.append("GPU: no CUDA GPU visible")
    head_dims = sorted({c["head_dim"] for c in fa_cute.configs()})
    for i in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(i)
        defaults = ", ".join(f"head_dim {d}: {_C.default_config(d, 4096, 4096, major, minor)}"
                             for d in head_dims)
        lines.append(f"GPU cuda:{i}: {torch.cuda.get_device_name(i)}, compute capability "
                     f"{major}.{minor}; default configs at seqlen 4096: {defaults}")
    return "\n".join(lines)


def main() -> None:
    print(describe())


if __name__ == "__main__":
    main()
