"""Summarise Nsight Compute's per-instruction source counters of one kernel: where the warps'
stall samples go (by reason, by opcode, the top SASS lines) and the executed-instruction mix.

    ncu --clock-control none -k regex:fwd_kernel_sm90 --launch-skip 3 --launch-count 1 \\
        --section WarpStateStats --section SourceCounters -o prof ./fwd_bench ...
    ncu --import prof.ncu-rep --page source --csv --print-source sass > prof.sass.csv
    python3 benchmarks/ncu_summary.py prof.sass.csv [more.csv ...]

docs/perf-history.md v9 compares fa_cute's kernels with cuDNN's this way (ncu has no host
side on the CPU-only build machine, so run this next to ncu).
"""

import collections
import csv
import re
import sys
from typing import Dict, List

SAMPLES = "Warp Stall Sampling (All Samples)"
EXECUTED = "Instructions Executed"


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def opcode(sass: str) -> str:
    """'@!P0 HGMMA.64x128x16.F32 ...' -> 'HGMMA'."""
    return re.sub(r"^@!?U?P\w+\s+", "", sass.strip()).split(" ")[0].split(".")[0]


def summarise(path: str, top: int = 25) -> str:
    rows = list(csv.reader(open(path, newline="")))
    kernel = rows[0][1] if len(rows[0]) > 1 else "?"
    header, data = rows[1], rows[2:]
    col: Dict[str, int] = {h: i for i, h in enumerate(header)}
    if SAMPLES not in col or "Source" not in col:
        raise ValueError(f"{path}: not a '--page source --csv --print-source sass' export "
                         f"(no '{SAMPLES}' column)")
    samples = [number(r[col[SAMPLES]]) for r in data]
    total = sum(samples) or 1.0
    lines: List[str] = [f"==== {path}: {kernel[:110]} ({len(data)} SASS lines, {total:.0f} samples)"]
    reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
    by_reason = {h: sum(number(r[col[h]]) for r in data) for h in reasons}
    reason_total = sum(by_reason.values()) or 1.0
    lines.append("  stall reasons (% of samples): " + ", ".join(
        f"{h[6:]} {100 * v / reason_total:.1f}" for h, v in sorted(by_reason.items(), key=lambda x: -x[1])
        if v / reason_total > 0.005))
    by_op: Dict[str, float] = collections.Counter()
    executed: Dict[str, float] = collections.Counter()
    for r, s in zip(data, samples):
        op = opcode(r[col["Source"]])
        by_op[op] += s
        if EXECUTED in col:
            executed[op] += number(r[col[EXECUTED]])
    lines.append("  samples by opcode: " + ", ".join(
        f"{k} {100 * v / total:.1f}%" for k, v in by_op.most_common(14)))
    if executed:
        executed_total = sum(executed.values()) or 1.0
        lines.append(f"  executed warp-instructions {executed_total:.3g}: " + ", ".join(
            f"{k} {100 * v / executed_total:.1f}%" for k, v in executed.most_common(14)))
    for i in sorted(range(len(data)), key=lambda i: -samples[i])[:top]:
        r = data[i]
        worst = sorted(((number(r[col[h]]), h[6:]) for h in reasons), reverse=True)[:2]
        lines.append(f"  {r[col.get('Address', 0)]:>6} {100 * samples[i] / total:5.2f}% "
                     f"{r[col['Source']].strip()[:70]:70s} " + " ".join(f"{n}:{v:.0f}" for v, n in worst))
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for path in argv:
        print(summarise(path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
