"""`python -m fa_cute.info`: what this build of fa_cute holds and which GPU it sees.

Prints the versions, the GPU archs and kernel configs compiled in, the licence files installed
with the package, and the GPUs visible. Meant for bug reports and for checking an install: it
needs no GPU.
"""

import argparse
import importlib.metadata
import json
from typing import Dict, List, Optional, Sequence

import torch

import fa_cute
from fa_cute import _C
from fa_cute._backward import BACKWARD_CONFIGS


def _distribution() -> Optional[importlib.metadata.Distribution]:
    try:
        return importlib.metadata.distribution("fa_cute")
    except importlib.metadata.PackageNotFoundError:  # imported from a source tree
        return None


def build_record() -> Dict:
    """What CMake recorded in the wheel's .dist-info/fa_cute_build.json (archs, configs,
    dtypes, nvcc version); empty where the package was not installed from a wheel."""
    dist = _distribution()
    text = dist.read_text("fa_cute_build.json") if dist else None
    return json.loads(text) if text else {}


def license_files() -> List[str]:
    """The licence files installed with the package: ours and CUTLASS's notice."""
    dist = _distribution()
    if dist is None:
        return []
    return sorted(str(dist.locate_file(f)) for f in dist.files or []
                  if "licenses/" in f.as_posix() or f.name.startswith(("LICENSE", "COPYING")))


def describe() -> str:
    """The report as text: versions, archs and configs built, licences, and the GPUs."""
    build = _C.build_info()
    record = build_record()
    configs = fa_cute.configs()
    lines = [
        f"fa_cute {fa_cute.__version__}",
        f"built with CUTLASS {build['cutlass_version']}, CUDA {build['cuda_version']}, "
        f"archs {build['archs']}",
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"configs built ({len(configs)}"
        + (f", dtypes {','.join(record['dtypes'])}" if record.get("dtypes") else "") + "):",
    ]
    for c in configs:
        lines.append(f"  {c['name']}: family {c['family']}, head_dim {c['head_dim']}, "
                     f"block {c['block_m']}x{c['block_n']}, {c['num_warps']} warps, "
                     f"dtypes {','.join(c['dtypes'])}")
    backward = list(BACKWARD_CONFIGS.values())
    lines.append(f"backward configs built ({len(backward)}):")
    for c in backward:
        lines.append(f"  {c['name']}: family {c['family']}, head_dim {c['head_dim']}, "
                     f"block {c['block_m']}x{c['block_n']}, {c['num_warps']} warps, "
                     f"dtypes {','.join(c['dtypes'])}")
    licenses = license_files()
    lines.append("license files: " + (", ".join(licenses) if licenses else
                                      "none in the installed metadata"))
    if not torch.cuda.is_available():
        lines.append("GPU: no CUDA GPU visible")
    head_dims = sorted({c["head_dim"] for c in configs})
    for i in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(i)
        defaults = ", ".join(f"head_dim {d}: {_C.default_config(d, 4096, 4096, major, minor)}"
                             for d in head_dims)
        lines.append(f"GPU cuda:{i}: {torch.cuda.get_device_name(i)}, compute capability "
                     f"{major}.{minor}; default configs at seqlen 4096: {defaults}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    argparse.ArgumentParser(prog="python -m fa_cute.info", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter
                            ).parse_args(argv)
    print(describe())


if __name__ == "__main__":
    main()
