#!/usr/bin/env python3
"""Instruction mix of each kernel in a `cuobjdump -sass` listing, per tensor-core MMA.

    cuobjdump -sass build/gpu_check/_C*.so > kernels.sass
    python3 benchmarks/sass_stats.py kernels.sass [--arch sm_90] [--match persistent]

The ladder we grew from spent rungs 8-12 and 14-16 on instruction counts in hand-written
code (address arithmetic IADD3/LOP3/SHF, register moves IMAD.MOV/MOV, ...). With CuTe the
compiler emits these; this table shows how many it emits per HMMA, so docs/ladder.md can say
which of those rungs still has anything to remove.
"""
import argparse
import collections
import re
import subprocess
import sys
from typing import Dict, List, Tuple

# Opcode families worth a column, in the order printed.
COLUMNS = ["HMMA", "LDSM", "LDGSTS", "STS", "LDS", "STG", "MUFU", "FFMA", "FMUL", "FADD",
           "FMNMX", "SHFL", "F2FP", "IADD3", "LOP3", "SHF", "LEA", "IMAD", "MOV", "BAR", "BRA",
           "LDL", "STL"]

FUNCTION = re.compile(r"^\s+Function : (\S+)")
ARCH = re.compile(r"arch = (sm_\w+)")
INSTRUCTION = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def parse(text: str) -> List[Tuple[str, str, Dict[str, int]]]:
    """[(arch, mangled kernel name, opcode counts)] in listing order."""
    kernels = []
    arch = "?"
    counts: Dict[str, int] = {}
    for line in text.splitlines():
        if m := ARCH.search(line):
            arch = m[1]
        elif m := FUNCTION.match(line):
            counts = collections.Counter()
            kernels.append((arch, m[1], counts))
        elif kernels and (m := INSTRUCTION.match(line)):
            counts[m[1]] += 1
    return kernels


def demangle(names: List[str]) -> List[str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                             check=True).stdout.splitlines()
        return out if len(out) == len(names) else names
    except (OSError, subprocess.CalledProcessError):
        return names


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sass", help="output of cuobjdump -sass")
    p.add_argument("--arch", default="sm_90",
                   help="only kernels of this arch (default: %(default)s)")
    p.add_argument("--match", default="",
                   help="only kernels whose demangled name contains this")
    args = p.parse_args()
    kernels = [k for k in parse(open(args.sass, errors="replace").read()) if k[0] == args.arch]
    names = demangle([k[1] for k in kernels])
    rows = [(n, c) for n, (_, _, c) in zip(names, kernels) if args.match in n]
    if not rows:
        print(f"no {args.arch} kernel matching {args.match!r} in {args.sass}", file=sys.stderr)
        return 1
    print("instructions per HMMA (whole kernel, static counts); total = all instructions")
    print(f"{'kernel':<70} {'total':>6} " + " ".join(f"{c:>6}" for c in COLUMNS))
    for name, counts in rows:
        hmma = max(counts.get("HMMA", 0), 1)
        short = re.sub(r"^void |\(.*$|cute::|cutlass::|fa_cute::", "", name)
        short = re.sub(r"^fwd_kernel_sm80<Sm80FwdTraits<|> >$", "", short)[:70]
        cells = " ".join(f"{counts.get(c, 0) / hmma:6.2f}" for c in COLUMNS)
        print(f"{short:<70} {sum(counts.values()):6d} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
