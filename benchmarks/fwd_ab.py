"""Same-run A/B of two fwd_bench binaries (two builds of fa_cute, e.g. before and after a
kernel change) over the standard bench's cells, in interleaved rounds of shuffled order.

    python3 benchmarks/fwd_ab.py A/fwd_bench B/fwd_bench [--rounds 3] [--json FILE]

Each cell runs both binaries once per round (the heuristic's config, sustained timing:
`--warmup-ms`, `--layout bhnd` as python -m fa_cute.bench holds tensors), so the card's
clock and temperature drift falls on both alike. Prints per cell the median TFLOP/s of each
binary over the rounds and B / A; a cell where B is slower than A by more than --slower
(default 2%) is marked "slower". Decode cells (seqlen_q 4 on 8 K/V heads: the packed GQA
decode of 32 query heads, B = 16) report GB/s.
"""

import argparse
import itertools
import json
import random
import re
import statistics
import subprocess
import sys
from typing import Dict, List, Tuple

Cell = Tuple[str, ...]  # fwd_bench arguments

RESULT = re.compile(r"on .*?: .* splits=\d+: ([\d.]+) ms \(median of \d+\), ([\d.]+) TFLOP/s, (\d+) GB/s")


def standard_cells(seqlens: List[int]) -> List[Tuple[str, Cell, str]]:
    """(name, fwd_bench args, unit) of the standard bench: d = 64, 128, 256 with 2048 / d
    heads, non-causal and causal, bf16 and fp16, B = 16384 / N; then decode at d = 128."""
    cells = []
    for dtype, d, causal, n in itertools.product(("bf16", "fp16"), (64, 128, 256), (0, 1), seqlens):
        name = f"{dtype} d{d} {'causal' if causal else 'full'} N={n}"
        cells.append((name, ("--dtype", dtype, "--seqlen", str(n), "--heads", str(2048 // d),
                             "--causal", str(causal)), "TFLOP/s"))
    for dtype, n in itertools.product(("bf16", "fp16"), (4096, 65536)):
        cells.append((f"{dtype} decode gqa4 N_k={n}",
                      ("--dtype", dtype, "--batch", "16", "--seqlen", str(n), "--seqlen-q", "4",
                       "--heads", "8", "--heads-k", "8"), "GB/s"))
    return cells


def sm80_cells() -> List[Tuple[str, Cell, str]]:
    """Cells of the sm80-instruction kernel, which the heuristic does not pick on a Hopper
    GPU: its default tile at d = 64 and 128 (N = 4096, non-causal and causal, bf16) and its
    short-query tile on the packed GQA decode (split-KV), by config name."""
    cells = []
    for d, causal in itertools.product((64, 128), (0, 1)):
        cells.append((f"bf16 d{d} {'causal' if causal else 'full'} N=4096 sm80",
                      ("--config", f"sm80_m128n64w4_d{d}", "--dtype", "bf16", "--seqlen", "4096",
                       "--heads", str(2048 // d), "--causal", str(causal)), "TFLOP/s"))
    for n in (4096, 65536):
        cells.append((f"bf16 decode gqa4 N_k={n} sm80",
                      ("--config", "sm80_m64n64w4_d128", "--dtype", "bf16", "--batch", "16", "--seqlen",
                       str(n), "--seqlen-q", "4", "--heads", "8", "--heads-k", "8"), "GB/s"))
    return cells


def run(binary: str, cell: Cell, args: argparse.Namespace) -> Tuple[float, float]:
    """(TFLOP/s, GB/s) of one fwd_bench run."""
    cmd = [binary, *cell, "--layout", "bhnd", "--warmup-ms", str(args.warmup_ms),
           "--iters", str(args.iters)]
    text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    match = RESULT.search(text)
    if match is None:
        raise RuntimeError(f"unexpected fwd_bench output for {' '.join(cmd)}:\n{text}")
    return float(match.group(2)), float(match.group(3))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="fwd_bench of the baseline build")
    p.add_argument("b", help="fwd_bench of the build under test")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seqlens", default="1024,4096,16384")
    p.add_argument("--warmup-ms", type=int, default=200)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--slower", type=float, default=0.02, help="flag B / A below 1 - this")
    p.add_argument("--json", help="write every run's numbers to this file")
    p.add_argument("--sm80", action="store_true",
                   help="also time the sm80-instruction kernel's default tiles by config name (both builds "
                        "must hold sm80_m128n64w4_d64/_d128 and sm80_m64n64w4_d128)")
    args = p.parse_args()
    cells = standard_cells([int(n) for n in args.seqlens.split(",")]) + (sm80_cells() if args.sm80 else [])
    runs: Dict[Tuple[str, str], List[float]] = {}
    rng = random.Random(0)
    for r in range(args.rounds):
        order = [(cell, side) for cell in cells for side in ("a", "b")]
        rng.shuffle(order)
        for (name, cell, unit), side in order:
            tflops, gbps = run(getattr(args, side), cell, args)
            runs.setdefault((name, side), []).append(tflops if unit == "TFLOP/s" else gbps)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"{'cell':32} {'unit':8} {'A':>8} {'B':>8} {'B/A':>6}")
    slower = 0
    for name, _, unit in cells:
        a, b = (statistics.median(runs[(name, s)]) for s in ("a", "b"))
        flag = b / a < 1 - args.slower
        slower += flag
        print(f"{name:32} {unit:8} {a:8.1f} {b:8.1f} {b / a:6.3f}{'  slower' if flag else ''}")
    ratios = [statistics.median(runs[(n, 'b')]) / statistics.median(runs[(n, 'a')]) for n, _, _ in cells]
    print(f"B/A over {len(cells)} cells: median {statistics.median(ratios):.3f}, min {min(ratios):.3f}, "
          f"max {max(ratios):.3f}; {slower} cells slower by more than {args.slower:.0%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{n}|{s}": v for (n, s), v in runs.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
