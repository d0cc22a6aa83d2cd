#!/usr/bin/env python3
"""Registers, stack frame and spills of every kernel in a build log made with ptxas -v
(FA_CUTE_PTXAS_VERBOSE, on by default); exit status 1 if any kernel spills, except the
general (masking) variants of the sm80 kernel within GENERAL_SPILL_BUDGET, the sm80
kernel's 4-warp 128x64 tiles within FOUR_WARP_SPILL_BUDGET, the Hopper kernel's extras
variants within EXTRAS_SPILL_BUDGET and the backward kernels' varlen variants within
VARLEN_BWD_SPILL_BUDGET, or if ptxas
warns that it ignored setmaxnreg or serialised wgmma (the Hopper kernel's C75xx warnings,
but ALLOWED_HOPPER_WARNING's measured one:
C7508 setmaxnreg ignored, C7509-C7515 wgmma serialised; docs/hopper-plan.md sec. 9).

    python3 benchmarks/ptxas_report.py BUILD_LOG

Used by benchmarks/gpu_check.sh (the full build on the GPU machine) and .ci/run (every
production config compiled for sm_90), so a spill fails both, not only the GPU run.
"""
import re
import subprocess
import sys

# fwd_kernel_sm80<Traits, FwdMaskMode::kCausalEven, kGeneral or kSoftcapWindow>: the variants
# with causal masking (and, kGeneral, row predication; kSoftcapWindow, a softcap and windows
# besides), which run causal, ragged and serving launches. Their
# three copies of the loop body (first block, unmasked, masked) need more than 255
# registers in the 128-row tiles; ptxas spills 68-84 bytes there, 3-6 local loads/stores
# in a main-loop iteration of 1300-1500 instructions (sm_90 SASS, docs/perf-history.md v4).
# The kNone variant, which runs every even non-causal launch, and every other kernel must
# not spill at all, but for the 4-warp tiles below.
GENERAL_SPILL_BUDGET = 128  # bytes of spill stores
GENERAL_KERNEL = re.compile(r"fwd_kernel_sm80.*FwdMaskModeE[123]EEEvNS_9FwdParamsE$")
# fwd_kernel_sm80<Sm80FwdTraits<d, 128, 64, 4, ...>, any mask mode>, d <= 128: the default
# tile at d = 64-128 (src/tile_size.h). 4 warps of 32 rows hold O (d/2 registers a
# thread) and S (64) and leave ptxas short of registers: it spills 72 B at d=128 in the
# mask-free variant, up to 108 B in the masking ones (sm_90; 220 B before the lazy O
# rescale, 228 B for d=96 on sm_80 without it). Measured on the H100 the
# tile still runs 4-17% faster than the spill-free 8-warp 128x128 tile, because its
# 2 blocks per SM and halved ldmatrix traffic outweigh a dozen local loads and stores per
# main-loop iteration of ~900 instructions (docs/perf-notes.md, Ampere-style kernel,
# tile choices).
FOUR_WARP_SPILL_BUDGET = 256  # bytes of spill stores
FOUR_WARP_KERNEL = re.compile(r"fwd_kernel_sm80INS_13Sm80FwdTraitsILi(64|96|128)ELi128ELi64ELi4E")
# fwd_kernel_sm90<Traits, kCausal, kExtras = true>: the Hopper variant that runs softcap,
# window, varlen and KV-cache launches (Sm90FwdMainloop's kExtras), holding their code so
# that the plain variants hold none. Per-tile lengths (FwdSeqlens), the window's third loop
# and the softcap pass cost it registers: ptxas spills 4-240 B (sm_90a, CI's configs; the
# 128x176 d=128 tile the most). Their speed is an open lead (docs/perf-notes.md, Hopper
# kernel); every plain Hopper variant must still not spill.
EXTRAS_SPILL_BUDGET = 256  # bytes of spill stores
EXTRAS_KERNEL = re.compile(r"fwd_kernel_sm90.*ELb[01]ELb1EEEvNS_19Sm90FwdKernelParams")
# bwd_kernel_sm80<Traits, kVarlen = true> and bwd_kernel_sm90<Traits, true>: the backward
# variants that run varlen_backward, each CTA holding its sequence's lengths and first rows
# (BwdSeqlens) next to the dense variant's registers: ptxas spills 60 B in the sm80 d=128
# kernel (254 registers without varlen) and 12 B in the Hopper _dqtile one (sm_90a). The
# dense variants, which every training step of fixed-length batches runs, must not spill.
VARLEN_BWD_SPILL_BUDGET = 256  # bytes of spill stores
VARLEN_BWD_KERNEL = re.compile(r"bwd_kernel_sm(80|90)I.*ELb1EEEvNS_(9BwdParams|19Sm90BwdKernelParams)")


def parse(log: str) -> list:
    """[{name, arch, regs, stack, spill_st, spill_ld}] in log order. ptxas -v prints, per
    kernel: "Compiling entry function 'NAME' for 'sm_XX'", then "Function properties for
    NAME" and "N bytes stack frame, N bytes spill stores, N bytes spill loads", then "Used N
    registers". A non-inlined device function the kernel calls gets "Function properties"
    of its own, after the kernel's: those lines are not the kernel's."""
    kernels, current, owner = [], None, None
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\S+)' for '(\w+)'", line):
            current = {"name": m[1], "arch": m[2]}
            kernels.append(current)
            owner = m[1]
        elif m := re.search(r"Function properties for (\S+)", line):
            owner = m[1]
        elif current and owner == current["name"] and (
                m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                               r"(\d+) bytes spill loads", line)):
            current.update(stack=int(m[1]), spill_st=int(m[2]), spill_ld=int(m[3]))
        elif current and (m := re.search(r"Used (\d+) registers", line)):
            current["regs"] = int(m[1])
    return kernels


# ptxas's Hopper performance warnings: each one silently costs the kernel its overlap.
HOPPER_WARNING = re.compile(r"(C75\d\d|setmaxnreg' ignored|wgmma.*serializ)", re.IGNORECASE)
# Except one, measured: in the Hopper backward's default kernel ptxas injects a wgmma wait
# between the S^T and dP^T batches (C7517); the variant without it (kdPEarlyInit, configs
# *_dpearly*) was no faster on an H100 (docs/perf-notes.md, Backward, open leads).
ALLOWED_HOPPER_WARNING = re.compile(r"C7517.*bwd_kernel_sm90")


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
    warnings = sorted({line.strip() for line in log.splitlines()
                       if HOPPER_WARNING.search(line) and not ALLOWED_HOPPER_WARNING.search(line)})
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
    def allowed_spill(k: dict) -> bool:
        if FOUR_WARP_KERNEL.search(k["name"]):
            return k.get("spill_st", 0) <= FOUR_WARP_SPILL_BUDGET
        if EXTRAS_KERNEL.search(k["name"]):
            return k.get("spill_st", 0) <= EXTRAS_SPILL_BUDGET
        if VARLEN_BWD_KERNEL.search(k["name"]):
            return k.get("spill_st", 0) <= VARLEN_BWD_SPILL_BUDGET
        return bool(GENERAL_KERNEL.search(k["name"])) and k.get("spill_st", 0) <= GENERAL_SPILL_BUDGET

    allowed = [k for k in spilling if allowed_spill(k)]
    print(f"{len(kernels)} kernels, {len(spilling)} with spills, {len(allowed)} of them within "
          f"their budgets (sm80 masking variants {GENERAL_SPILL_BUDGET} B, 4-warp 128x64 tiles "
          f"{FOUR_WARP_SPILL_BUDGET} B, Hopper extras variants {EXTRAS_SPILL_BUDGET} B, backward "
          f"varlen variants {VARLEN_BWD_SPILL_BUDGET} B)")
    return 1 if len(spilling) > len(allowed) or warnings else 0


if __name__ == "__main__":
    sys.exit(main())
