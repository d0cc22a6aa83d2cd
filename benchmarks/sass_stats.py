#!/usr/bin/env python3
"""Instruction mix of each kernel in a `cuobjdump -sass` listing, per tensor-core MMA.

    cuobjdump -sass build/gpu_check/_C*.so > kernels.sass
    python3 benchmarks/sass_stats.py kernels.sass [--arch sm_90] [--match persistent]
    python3 benchmarks/sass_stats.py kernels.sass --arch sm_90a --match bwd_kernel_sm90 --loop [--timeline]

--loop: each kernel's main loop instead (the backward branch whose range holds the most
HMMA/HGMMA, the shortest such range): its static instruction count and opcode mix, and with
--timeline the order of its MMAs, waits, barriers and shared-memory stores, each with the
number of other instructions before it (docs/perf-notes.md, Backward, reads the Hopper
backward's step this way). The counts include branches not taken at run time (masking).

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


LISTED = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
BRANCH = re.compile(r"\bBRA (?:\S+, )?(0x[0-9a-f]+)")
# What --timeline prints: tensor-core work, its waits, barriers, and stores to shared memory.
EVENTS = ("HMMA", "HGMMA", "WARPGROUP", "BAR", "SYNCS", "MEMBAR", "FENCE", "STSM", "STS", "ST", "REDG", "BRA")


def listings(text: str) -> List[Tuple[str, str, List[Tuple[int, str]]]]:
    """[(arch, mangled kernel name, [(address, instruction)])] in listing order."""
    kernels = []
    arch = "?"
    for line in text.splitlines():
        if m := ARCH.search(line):
            arch = m[1]
        elif m := FUNCTION.match(line):
            kernels.append((arch, m[1], []))
        elif kernels and (m := LISTED.match(line)):
            kernels[-1][2].append((int(m[1], 16), m[2]))
    return kernels


def opcode(instruction: str) -> str:
    words = instruction.split()
    return words[1] if words[0].startswith("@") and len(words) > 1 else words[0]


def main_loop(code: List[Tuple[int, str]]) -> List[Tuple[int, str]]:
    """The instructions of the loop that holds the most MMAs (empty if none does)."""
    best = (0, 0, 0)
    for address, instruction in code:
        m = BRANCH.search(instruction)
        if m and int(m[1], 16) < address:
            start = int(m[1], 16)
            mmas = sum(1 for a, i in code if start <= a <= address and opcode(i).split(".")[0] in ("HMMA", "HGMMA"))
            if mmas > best[0] or (mmas == best[0] and mmas and address - start < best[2] - best[1]):
                best = (mmas, start, address)
    return [(a, i) for a, i in code if best[0] and best[1] <= a <= best[2]]


def print_loops(kernels, names: List[str], match: str, timeline: bool) -> int:
    found = 0
    for name, (_, _, code) in zip(names, kernels):
        if match not in name:
            continue
        loop = main_loop(code)
        if not loop:
            continue
        found += 1
        mix = collections.Counter(opcode(i).split(".")[0] for _, i in loop)
        print(f"{name[:150]}\n  loop {loop[0][0]:#x}-{loop[-1][0]:#x}: {len(loop)} instructions, "
              f"{mix['HMMA'] + mix['HGMMA']} MMA\n  " + " ".join(f"{k}:{v}" for k, v in mix.most_common(32)))
        if timeline:
            between = 0
            for address, instruction in loop:
                if opcode(instruction).split(".")[0] in EVENTS:
                    print(f"    [{between:4d}] {address:#07x} {instruction[:100]}")
                    between = 0
                else:
                    between += 1
    return found


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
    p.add_argument("--loop", action="store_true", help="each kernel's main loop (see above)")
    p.add_argument("--timeline", action="store_true", help="with --loop: its MMAs, waits, barriers, stores")
    args = p.parse_args()
    if args.loop:
        kernels = [k for k in listings(open(args.sass, errors="replace").read()) if k[0] == args.arch]
        if not print_loops(kernels, demangle([k[1] for k in kernels]), args.match, args.timeline):
            print(f"no {args.arch} kernel matching {args.match!r} with an MMA loop in {args.sass}", file=sys.stderr)
            return 1
        return 0
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
