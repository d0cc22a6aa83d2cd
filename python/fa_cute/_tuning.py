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
Writing therefore needs POSIX (`fcntl` is imported by `write` alone, so that `import
fa_cute` and reading work everywhere); without it `write` raises OSError.

A tuning cache must never be the reason an attention call fails or hangs. The reader opens
the path without blocking and reads it only if the open descriptor is a regular file (so a
FIFO, a device, a directory or a symlink to one is refused, with no race between a check
and the open), at most `MAX_BYTES` of it. Anything else that goes wrong while reading or
parsing (an OSError, bytes that are not UTF-8, invalid or too deeply nested JSON, JSON of
another shape, running out of memory) is the same: the cache is ignored with one
RuntimeWarning that names the path, the reason and the fix, and the process goes on with
an empty cache: later lookups neither read again nor warn again until `forget`, after which
the next lookup reads the (perhaps repaired) file afresh. A missing file is an empty cache,
without a warning.

`write` merges into what the file holds; a file that cannot be used is warned about as
above and replaced. A path (or lock file) that is there but not a regular file is refused
with an OSError instead, the file left as it is: it is not a cache that a tuning run wrote,
so replacing it would discard something that is not ours.
"""

import json
import os
import stat
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Optional

from . import _C

__all__ = ["BACKWARD_PREFIX", "Entries", "MAX_BUCKET", "MAX_BYTES", "MIN_BUCKET", "backward_key",
           "bucket", "cache_path", "cached_configs", "forget", "key", "read", "write"]

Entries = Dict[str, Dict[str, str]]  # gpu name -> key -> config name

MIN_BUCKET, MAX_BUCKET = 128, 65536
_VERSION = _C.build_info()["version"]

# The most bytes of the cache file that are read. An entry is about 60 bytes and a full
# tuning run stores on the order of a hundred per GPU (10 seqlen buckets per dtype, head
# dim and causality), so a real cache is a few KiB; 1 MiB holds more than a hundred fully
# tuned GPUs. A larger file is not a cache we wrote, and reading it all would cost the
# first auto call time and memory.
MAX_BYTES = 1 << 20

# How the cache and its lock file are opened: read-only and without blocking (a FIFO with
# no writer opens at once, where a plain open waits for one), not leaking the descriptor
# into a child; O_BINARY keeps Windows from translating line ends. Flags a platform lacks
# are 0.
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_BINARY", 0))

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


#: what a backward winner's cache key starts with; forward keys start with a dtype
BACKWARD_PREFIX = "bwd-"


def backward_key(dtype: str, head_dim: int, causal: bool, seqlen_q: int) -> str:
    """The cache key of a backward winner (`python -m fa_cute.tune --bwd`): BACKWARD_PREFIX
    + the forward's key, so that the two never collide and share the forward's buckets."""
    return BACKWARD_PREFIX + key(dtype, head_dim, causal, seqlen_q)


def cache_path() -> Path:
    """Where the cache lives now (the environment is read on every call)."""
    folder = os.environ.get("FA_CUTE_CACHE_DIR")
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        folder = os.path.join(base, "fa_cute")
    return Path(folder) / f"tune-v{_VERSION}.json"


def cached_configs(gpu: str) -> Dict[str, str]:
    """This GPU's entries of the cache, read from disk at most once per process (a cache
    that was ignored with a warning counts as read, and empty)."""
    global _loaded
    if _loaded is None:
        try:
            path = cache_path()
        except RuntimeError as exc:  # Path.home() where neither HOME nor passwd names one
            _warn(f"fa_cute: no tuning cache is used: its folder is unknown ({exc}); set "
                  "FA_CUTE_CACHE_DIR")
            _loaded = {}
        else:
            _loaded = read(path)
    return _loaded.get(gpu, {})


def write(entries: Entries) -> Path:
    """Merge entries into the cache file (theirs win over what the file holds); return it.

    A cache file that cannot be used is replaced (after the reader's warning). Raises
    OSError when the folder or file cannot be written, when the path or its lock file is
    there but is not a regular file (a FIFO, a device, a directory, or a symlink to one),
    and where the platform has no `fcntl` to lock with.
    """
    global _loaded
    try:
        import fcntl
    except ImportError:
        raise OSError(f"fa_cute: writing the tuning cache needs fcntl.flock (POSIX), which "
                      f"this platform ({sys.platform}) lacks") from None
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Read-only is enough for flock, and unlike open(..., "a") it never waits for a reader
    # where the lock file is a FIFO.
    lock_path = path.with_name(path.name + ".lock")
    try:
        lock = _open_regular(lock_path, _OPEN_FLAGS | os.O_CREAT)
    except _NotRegular as exc:
        raise OSError(f"fa_cute: the tuning cache's lock file {lock_path} {exc}; remove "
                      "it") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the descriptor closes
        merged = read(path, refuse_special=True)
        for gpu, picks in entries.items():
            merged.setdefault(gpu, {}).update(picks)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(merged, f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    finally:
        os.close(lock)
    _loaded = merged
    return path


def forget() -> None:
    """Drop the cache read by `cached_configs`, so that the next lookup reads it again
    (from `cache_path()` as the environment then says)."""
    global _loaded
    _loaded = None


class _NotRegular(OSError):
    """The path is there but is not a regular file."""


def _open_regular(path: Path, flags: int) -> int:
    """A descriptor of path opened with flags (which must not block), or _NotRegular.

    The type is checked on the open descriptor, so nothing can swap the file between the
    check and the open."""
    fd = os.open(path, flags, 0o666)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _NotRegular(f"is not a regular file but {_kind(mode)}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), f"of mode {mode:o}")


def read(path: Path, refuse_special: bool = False) -> Entries:
    """The cache's entries; {} when the file is missing, and {} with one warning when it
    cannot be used for any reason. refuse_special (for `write`): raise OSError for a path
    that is not a regular file, which `write` must not replace."""
    try:
        return _load(path)
    except FileNotFoundError:
        return {}
    except _NotRegular as exc:
        if refuse_special:
            raise OSError(f"fa_cute: the tuning cache {path} {exc}; remove it, or set "
                          "FA_CUTE_CACHE_DIR to another folder") from None
        return _ignored(path, str(exc), "remove it (then `python -m fa_cute.tune` writes a "
                                        "new one), or set FA_CUTE_CACHE_DIR elsewhere")
    # Any failure at all, not a list of the expected ones: the cache is optional, and an
    # exception let through would fail every attention call of the process.
    except Exception as exc:  # noqa: BLE001
        return _ignored(path, _reason(exc),
                        "`python -m fa_cute.tune` rewrites it, or delete the file")


class _Unusable(Exception):
    """The file was read but is not a cache; the message says why."""


def _load(path: Path) -> Entries:
    """The cache's entries, or an exception: FileNotFoundError, _NotRegular, _Unusable, or
    whatever reading, decoding and parsing raised."""
    fd = _open_regular(path, _OPEN_FLAGS)
    try:
        chunks, size = [], 0
        while size <= MAX_BYTES:  # one byte past the limit tells a larger file apart
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > MAX_BYTES:
        raise _Unusable(f"is larger than {MAX_BYTES >> 20} MiB, which no tuning cache is")
    entries = json.loads(b"".join(chunks).decode("utf-8"))
    if not (isinstance(entries, dict) and all(
            isinstance(picks, dict) and all(isinstance(v, str) for v in picks.values())
            for picks in entries.values())):
        raise _Unusable("is not a JSON object of {gpu_name: {key: config_name}}")
    return entries


def _reason(exc: Exception) -> str:
    """What went wrong, as the end of "the tuning cache <path> ..."."""
    if isinstance(exc, _Unusable):
        return str(exc)
    if isinstance(exc, OSError):
        return f"cannot be read ({exc})"
    if isinstance(exc, UnicodeDecodeError):
        return f"is not UTF-8 text ({exc})"
    if isinstance(exc, ValueError):
        return f"is not valid JSON ({exc})"
    if isinstance(exc, RecursionError):
        return "nests too deeply to parse"
    if isinstance(exc, MemoryError):
        return "does not fit in memory"
    return f"cannot be parsed ({type(exc).__name__}: {exc})"


def _ignored(path: Path, why: str, fix: str) -> Entries:
    _warn(f"fa_cute: ignoring the tuning cache {path}: it {why}; {fix}")
    return {}


def _warn(message: str) -> None:
    """A RuntimeWarning attributed to the first caller outside fa_cute where Python can
    (3.12+), so that it points at the user's attention call rather than at this module."""
    if sys.version_info >= (3, 12):
        package = os.path.dirname(__file__)
        warnings.warn(message, RuntimeWarning, skip_file_prefixes=(package,))
    else:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
