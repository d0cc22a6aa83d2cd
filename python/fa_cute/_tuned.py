"""The built-in tuning table: `config="auto"`'s picks where the user's tuning cache has none.

`{gpu_name: {key: config_name}}`, the tuning cache's own format (`_tuning.py`; keys come
from `_tuning.key`, GPU names from `torch.cuda.get_device_name`), so an entry is copied
from the cache that `python -m fa_cute.tune` writes on that GPU. An entry whose config is
not in the build, or cannot run the shape, is skipped and the next source decides.

H100 entries: the Hopper kernel's persistent 128x128 tile, which led every other Hopper
variant and the sm80 kernel's best (`sm80p_m128n128w8_d128`, the pick of the issue-3 table,
which it beats by 1.6-2.0x) at every N from 512 to 16384, bf16, d=128, non-causal
(fwd_bench runs, interleaved, 2 rounds; docs/perf-history.md v6). The
heuristic (src/tile_size.h) picks the same; the table pins it against a rebuilt default.
"""

from typing import Dict

__all__ = ["TABLE"]

TABLE: Dict[str, Dict[str, str]] = {
    "NVIDIA H100 80GB HBM3": {
        f"bf16-d128-noncausal-n{n}": "sm90p_m128n128_d128" for n in (1024, 2048, 4096, 8192, 16384)
    },
}
