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
    args = p.parse_args()
    cells = standard_cells([int(n) for n in args.seqlens.split(",")])
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
