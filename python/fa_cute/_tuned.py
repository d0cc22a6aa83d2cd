"""The built-in tuning table: `config="auto"`'s picks where the user's tuning cache has none.

`{gpu_name: {key: config_name}}`, the tuning cache's own format (`_tuning.py`; keys come
from `_tuning.key`, GPU names from `torch.cuda.get_device_name`), so an entry is copied
from the cache that `python -m fa_cute.tune` writes on that GPU. An entry whose config is
not in the build, or cannot run the shape, is skipped and the next source decides.

H100 entries: `python -m fa_cute.tune --dtype bf16,fp16` (3 interleaved rounds, medians) on
an NVIDIA H100 80GB HBM3, 2026-11-27 (docs/perf-notes.md, "v2"). The persistent tile wins
everywhere but fp16 N=4096, where the non-persistent one led by 3% in that run; the two are
within run-to-run spread of each other at N >= 4096.
"""

from typing import Dict

TABLE: Dict[str, Dict[str, str]] = {
    "NVIDIA H100 80GB HBM3": {
        "bf16-d128-noncausal-n1024": "sm80p_m128n128w8_d128",
        "bf16-d128-noncausal-n2048": "sm80p_m128n128w8_d128",
        "bf16-d128-noncausal-n4096": "sm80p_m128n128w8_d128",
        "bf16-d128-noncausal-n8192": "sm80p_m128n128w8_d128",
        "bf16-d128-noncausal-n16384": "sm80p_m128n128w8_d128",
        "fp16-d128-noncausal-n1024": "sm80p_m128n128w8_d128",
        "fp16-d128-noncausal-n2048": "sm80p_m128n128w8_d128",
        "fp16-d128-noncausal-n4096": "sm80_m128n128w8_d128",
        "fp16-d128-noncausal-n8192": "sm80p_m128n128w8_d128",
        "fp16-d128-noncausal-n16384": "sm80p_m128n128w8_d128",
    },
}
