#!/usr/bin/env python3
"""Registers, stack frame and spills of every kernel in a build log made with ptxas -v
(FA_CUTE_PTXAS_VERBOSE, on by default); exit status 1 if any kernel spills, except the
general (masking) variant of the sm80 kernel within GENERAL_SPILL_BUDGET, or if ptxas
warns that it ignored setmaxnreg or serialised wgmma (the Hopper kernel's C75xx warnings:
C7508 setmaxnreg ignored, C7509-C7515 wgmma serialised; docs/hopper-plan.md sec. 9).

    python3 benchmarks/ptxas_report.py BUILD_LOG

Used by benchmarks/gpu_check.sh (the full build on the GPU machine) and .ci/run (every
production config compiled for sm_90), so a spill fails both, not only the GPU run.
"""
import re
import subprocess
import sys

# fwd_kernel_sm80<Traits, FwdMaskMode::kCausalEven or kGeneral>: the variants with causal
# masking (and, kGeneral, row predication), which run causal and ragged launches. Their
# three copies of the loop body (first block, unmasked, masked) need more than 255
# registers in the 128-row tiles; ptxas spills 68-84 bytes there, 3-6 local loads/stores
# in a main-loop iteration of 1300-1500 instructions (sm_90 SASS, docs/perf-notes.md v4).
# The kNone variant, which runs every even non-causal launch, and every other kernel must
# not spill at all.
GENERAL_SPILL_BUDGET = 128  # bytes of spill stores
GENERAL_KERNEL = re.compile(r"fwd_kernel_sm80.*FwdMaskModeE[12]EEEvNS_9FwdParamsE$")


def parse(log: str) -> list:
    """[{name, arch, regs, stack, spill_st, spill_ld}] in log order. ptxas -v prints, per
    kernel: "Compiling entry function 'NAME' for 'sm_XX'", then "N bytes stack frame, N
    bytes spill stores, N bytes spill loads", then "Used N registers"."""
    kernels, current = [], None
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\S+)' for '(\w+)'", line):
            current = {"name": m[1], "arch": m[2]}
            kernels.append(current)
        elif current and (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                                          r"(\d+) bytes spill loads", line)):
            current.update(stack=int(m[1]), spill_st=int(m[2]), spill_ld=int(m[3]))
        elif current and (m := re.search(r"Used (\d+) registers", line)):
            current["regs"] = int(m[1])
    return kernels


# ptxas's Hopper performance warnings: each one silently costs the kernel its overlap.
HOPPER_WARNING = re.compile(r"(C75\d\d|setmaxnreg' ignored|wgmma.*serializ)", re.IGNORECASE)


def demangle(names: list) -> list:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True,
                             text=True, check=True).stdout.splitlines()
        return out if len(out) == len(names) else names
    except (OSError, subprocess.CalledProcessError):
        return names


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    log = open(sys.argv[1], errors="replace").read()
    warnings = sorted({line.strip() for line in log.splitlines() if HOPPER_WARNING.search(line)})
    for line in warnings:
        print(f"ptxas Hopper warning: {line}")
    kernels = parse(log)
    if not kernels:
        print("no ptxas report in the build log (nothing recompiled, or FA_CUTE_PTXAS_VERBOSE=OFF)")
        return 0
    for k, name in zip(kernels, demangle([k["name"] for k in kernels])):
        print(f"{k['arch']:>7}  regs {k.get('regs', '?'):>3}  stack {k.get('stack', '?'):>4}  "
              f"spill st/ld {k.get('spill_st', '?')}/{k.get('spill_ld', '?')}  "
              f"{name.replace('fa_cute::', '').replace('cutlass::', '')[:120]}")
    spilling = [k for k in kernels if k.get("spill_st") or k.get("spill_ld")]
    allowed = [k for k in spilling if GENERAL_KERNEL.search(k["name"])
               and k.get("spill_st", 0) <= GENERAL_SPILL_BUDGET]
    print(f"{len(kernels)} kernels, {len(spilling)} with spills, {len(allowed)} of them masking "
          f"sm80 kernels within the {GENERAL_SPILL_BUDGET}-byte budget")
    return 1 if len(spilling) > len(allowed) or warnings else 0


if __name__ == "__main__":
    sys.exit(main())
