"""The tuning cache: which config `python -m fa_cute.tune` measured fastest, per GPU and
shape key, in one JSON file per package version.

File: `$FA_CUTE_CACHE_DIR/tune-v{version}.json`, else `$XDG_CACHE_HOME/fa_cute/...`, else
`~/.cache/fa_cute/...`; content `{gpu_name: {key: config_name}}`, the shape of the built-in
table in `_tuned.py`. The version is in the name because a new release may rename configs
or change their speed, so its predecessors' measurements do not carry over.

Readers never lock: writers replace the file atomically (`os.replace` of a finished temp
file in the same folder), so a reader sees the old file or the new one, never half of one.
Writers serialise on an `fcntl.flock` of `<file>.lock` and re-read the file under it, so
two tuning runs at once merge their entries instead of the last one erasing the first's.
A cache that cannot be read or parsed is ignored with a warning: a tuning cache must never
be the reason an attention call fails.
"""

import fcntl
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Optional

from . import _C

Entries = Dict[str, Dict[str, str]]  # gpu name -> key -> config name

MIN_BUCKET, MAX_BUCKET = 128, 65536
_VERSION = _C.build_info()["version"]

_loaded: Optional[Entries] = None  # the cache as read once per process (see `forget`)


def bucket(seqlen: int) -> int:
    """The seqlen bucket of a key: the next power of two >= seqlen, clamped to
    [MIN_BUCKET, MAX_BUCKET]. One measurement then serves every seqlen down to half its
    bucket, on the assumption that the configs' ranking changes slowly with seqlen (each
    block's work grows linearly with it), and a full tuning run stays short: 10 buckets
    per dtype, head dim and causality."""
    if seqlen <= MIN_BUCKET:
        return MIN_BUCKET
    return min(1 << (seqlen - 1).bit_length(), MAX_BUCKET)


def key(dtype: str, head_dim: int, causal: bool, seqlen_q: int) -> str:
    """The shape key of a cache or table entry, e.g. 'bf16-d128-noncausal-n4096'.

    seqlen_q is the launch's query length (for a grouped-query decode, which runs the
    query heads of a K/V head as rows, the group size). It sets how many query tiles fill
    the GPU, while seqlen_k mostly scales each tile's work, so the key assumes the
    configs' ranking follows seqlen_q (tuning times seqlen_k = seqlen_q). causal is the
    launch's too: a mask that hides nothing runs, and is keyed, as non-causal.
    """
    return f"{dtype}-d{head_dim}-{'causal' if causal else 'noncausal'}-n{bucket(seqlen_q)}"


def cache_path() -> Path:
    """Where the cache lives now (the environment is read on every call)."""
    folder = os.environ.get("FA_CUTE_CACHE_DIR")
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        folder = os.path.join(base, "fa_cute")
    return Path(folder) / f"tune-v{_VERSION}.json"


def cached_configs(gpu: str) -> Dict[str, str]:
    """This GPU's entries of the cache, read from disk at most once per process."""
    global _loaded
    if _loaded is None:
        _loaded = _read(cache_path())
    return _loaded.get(gpu, {})


def write(entries: Entries) -> Path:
    """Merge entries into the cache file (theirs win over what the file holds); return it.

    Raises OSError when the folder or file cannot be written.
    """
    global _loaded
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        merged = _read(path)
        for gpu, picks in entries.items():
            merged.setdefault(gpu, {}).update(picks)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(merged, f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    _loaded = merged
    return path


def forget() -> None:
    """Drop the cache read by `cached_configs`, so that the next lookup reads it again
    (from `cache_path()` as the environment then says)."""
    global _loaded
    _loaded = None


def _read(path: Path) -> Entries:
    """The cache's entries; {} when the file is missing, and {} with a warning when it
    cannot be read or is not `{gpu: {key: config}}` JSON."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        return _ignored(path, f"cannot be read ({exc})")
    try:
        entries = json.loads(text)
    except ValueError as exc:
        return _ignored(path, f"is not valid JSON ({exc})")
    if not (isinstance(entries, dict) and all(
            isinstance(picks, dict) and all(isinstance(v, str) for v in picks.values())
            for picks in entries.values())):
        return _ignored(path, "is not a JSON object of {gpu_name: {key: config_name}}")
    return entries


def _ignored(path: Path, why: str) -> Entries:
    warnings.warn(f"fa_cute: ignoring the tuning cache {path}: it {why}; "
                  "`python -m fa_cute.tune` rewrites it", RuntimeWarning, stacklevel=3)
    return {}
