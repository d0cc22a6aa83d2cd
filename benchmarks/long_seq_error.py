"""Accuracy on long sequences, per kernel family: the table of issue 13
(docs/perf-notes.md, Hopper kernel, open leads).

For each kernel family's default config, dtype and input kind (`fa_cute._reference.long_inputs`):
4096 query rows of 16 heads against 131,072 keys at d = 128 (enough query tiles that no
split-KV hides a per-key-block error), then the first 64 rows of head 0 against float64:
the LSE's max abs error, the output's relative (Frobenius) and max abs errors, and the same
computation's max abs error in the input dtype (FlashAttention's rule: ours <= 2x that).

    python3 benchmarks/long_seq_error.py [--seqlen-k 131072] [--kinds mag3,mag6,mag10,sink-last]
"""

import argparse
import json
import sys

import torch

import fa_cute
from fa_cute._reference import long_inputs, relative_error, row_references


def family_configs(head_dim: int, seqlen_q: int, seqlen_k: int) -> dict:
    """{family: config}: the heuristic's pick on a GPU of each family, where built and
    runnable on this GPU."""
    built = {c["name"] for c in fa_cute.configs()}
    picks = {"sm80": fa_cute._C.default_config(head_dim, seqlen_q, seqlen_k, 8, 0, False)}
    if torch.cuda.get_device_capability() == (9, 0):
        picks["sm90a"] = fa_cute._C.default_config(head_dim, seqlen_q, seqlen_k, 9, 0, False)
    return {f: c for f, c in picks.items() if c in built}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqlen-k", type=int, default=131072)
    p.add_argument("--seqlen-q", type=int, default=4096)
    p.add_argument("--kinds", default="mag3,mag6,mag10,sink-last")
    p.add_argument("--dtypes", default="fp16,bf16")
    p.add_argument("--json", help="write the rows to this file")
    args = p.parse_args()
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    head_dim, nheads, rows = 128, 16, slice(0, 64)
    configs = family_configs(head_dim, args.seqlen_q, args.seqlen_k)
    print(f"{torch.cuda.get_device_name()}: Nq={args.seqlen_q} Nk={args.seqlen_k} H={nheads} "
          f"d={head_dim}, rows 0-63 of head 0; configs {configs}")
    print(f"{'dtype':5} {'kind':10} " + " ".join(
        f"{f + ' LSE':>11} {f + ' out rel':>12} {f + ' out max':>12}" for f in configs)
        + f" {'plain max':>10}")
    results = []
    for dtype_name in args.dtypes.split(","):
        for kind in args.kinds.split(","):
            torch.manual_seed(0)
            q, k, v = long_inputs(1, args.seqlen_q, args.seqlen_k, nheads, nheads, head_dim,
                                  dtypes[dtype_name], "cuda", kind)
            ((_, ref, plain, ref_lse),) = row_references(q, k, v, rows, [0])
            plain_max = (plain.double() - ref).abs().max().item()
            row = {"dtype": dtype_name, "kind": kind, "plain_max": plain_max}
            cells = []
            for family, config in configs.items():
                out, lse = fa_cute.forward(q, k, v, return_lse=True, config=config)
                out0, lse0 = out[:, rows, :1], lse[:, :1, rows]
                err = {"config": config,
                       "lse": (lse0.double() - ref_lse).abs().max().item(),
                       "out_rel": relative_error(out0, ref),
                       "out_max": (out0.double() - ref).abs().max().item()}
                row[family] = err
                cells.append(f"{err['lse']:11.2e} {err['out_rel']:12.2e} {err['out_max']:12.2e}")
            results.append(row)
            print(f"{dtype_name:5} {kind:10} " + " ".join(cells) + f" {plain_max:10.2e}")
            del q, k, v
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
