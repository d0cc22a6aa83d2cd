"""The built-in tuning table: `config="auto"`'s picks where the user's tuning cache has none.

`{gpu_name: {key: config_name}}`, the tuning cache's own format (`_tuning.py`; keys come
from `_tuning.key`, GPU names from `torch.cuda.get_device_name`), so an entry is copied
from the cache that `python -m fa_cute.tune` writes on that GPU. An entry whose config is
not in the build, or cannot run the shape, is skipped and the next source decides.

The H100 entries are to be filled from the measured tuning run (issue 3); until then the
heuristic `_C.default_config` decides there too.
"""

from typing import Dict

TABLE: Dict[str, Dict[str, str]] = {
    "NVIDIA H100 80GB HBM3": {},
}
