"""config="auto" and the tuning cache (fa_cute._tuning, fa_cute._tuned): keys and buckets, the
cache file (round trip, concurrent writers; unusable files: corrupt, too large or too deep,
a FIFO, a device or a directory, which readers ignore once with one warning and writers
replace or refuse), the resolution order, and `python -m fa_cute.tune` end to end. All but
the last test run anywhere (no GPU)."""

import inspect
import json
import multiprocessing
import os
import stat
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch

import fa_cute
from fa_cute import _C, _cache, _configs, _tuned, _tuning, _validate, tune

GPU = "Fake GPU 80GB"
CC = (9, 0)
PRODUCTION = [c for c in fa_cute.configs() if c["rung"] is None]
HEAD_DIM = PRODUCTION[0]["head_dim"]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache folder of this test's own, and auto state read afresh from it."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("FA_CUTE_CACHE_DIR", str(folder))
    _cache.forget_tuning()
    yield folder
    _cache.forget_tuning()


@pytest.mark.parametrize("seqlen, bucket", [(1, 128), (128, 128), (129, 256), (1000, 1024),
                                            (4096, 4096), (4097, 8192), (65536, 65536),
                                            (65537, 65536), (10**7, 65536)])
def test_bucket(seqlen: int, bucket: int) -> None:
    assert _tuning.bucket(seqlen) == bucket


def test_key_names_every_part() -> None:
    assert _tuning.key("bf16", 128, False, 3000) == "bf16-d128-noncausal-n4096"
    assert _tuning.key("fp16", 64, True, 100) == "fp16-d64-causal-n128"


def test_cache_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    name = f"tune-v{fa_cute.__version__}.json"
    assert _tuning.cache_path() == tmp_path / "cache" / name
    monkeypatch.delenv("FA_CUTE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _tuning.cache_path() == tmp_path / "xdg" / "fa_cute" / name
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _tuning.cache_path() == tmp_path / "home" / ".cache" / "fa_cute" / name


def test_round_trip(cache_dir: Path) -> None:
    assert _tuning.cached_configs(GPU) == {}
    path = _tuning.write({GPU: {"k1": "a"}})
    assert path == _tuning.cache_path() and path.parent == cache_dir
    _tuning.write({GPU: {"k2": "b", "k1": "c"}, "Other GPU": {"k1": "d"}})
    assert json.loads(path.read_text()) == {GPU: {"k1": "c", "k2": "b"}, "Other GPU": {"k1": "d"}}
    _tuning.forget()
    assert _tuning.cached_configs(GPU) == {"k1": "c", "k2": "b"}
    assert sorted(p.name for p in cache_dir.iterdir()) == [path.name, path.name + ".lock"]


def _writer(folder: str, worker: int, count: int, barrier) -> None:
    os.environ["FA_CUTE_CACHE_DIR"] = folder
    barrier.wait()  # both processes write at the same time
    for i in range(count):
        _tuning.write({GPU: {f"w{worker}-{i}": f"config{i}"}})


def test_concurrent_writers_keep_every_entry(cache_dir: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, count = ctx.Barrier(2), 40
    procs = [ctx.Process(target=_writer, args=(str(cache_dir), w, count, barrier))
             for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    entries = json.loads(_tuning.cache_path().read_text())
    assert entries == {GPU: {f"w{w}-{i}": f"config{i}" for w in range(2) for i in range(count)}}
    assert not list(cache_dir.glob("*.tmp")), "a temp file was left behind"


def _write_sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: no disk space, and reads as zeros


needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
needs_dev_zero = pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")

# name -> (how to make the unusable cache at a path, what the warning says about it)
BAD_CACHES = {
    "deeply nested": (lambda p: p.write_text("[" * 100_000), "nests too deeply"),
    "larger than the limit": (lambda p: _write_sparse(p, _tuning.MAX_BYTES + 1),
                              "larger than 1 MiB"),
    "FIFO": (os.mkfifo, "not a regular file but a FIFO"),
    "symlink to /dev/zero": (lambda p: p.symlink_to("/dev/zero"),
                             "not a regular file but a character device"),
    "directory": (Path.mkdir, "not a regular file but a directory"),
    "invalid UTF-8": (lambda p: p.write_bytes(b'{"\xff": {}}'), "not UTF-8 text"),
    "not JSON": (lambda p: p.write_text("{not json"), "not valid JSON"),
    "a list": (lambda p: p.write_text("[1, 2]"), "not a JSON object of"),
    "a gpu's list": (lambda p: p.write_text('{"GPU": ["a"]}'), "not a JSON object of"),
    "a number for a config": (lambda p: p.write_text('{"GPU": {"k": 1}}'),
                              "not a JSON object of"),
}
MARKS = {"FIFO": needs_fifo, "symlink to /dev/zero": needs_dev_zero}
BAD_CACHE_PARAMS = [pytest.param(name, marks=MARKS.get(name, ()), id=name) for name in BAD_CACHES]


def _promptly(fn, path: Path, timeout: float = 60.0):
    """fn(), run in a thread so that a regression that blocks (opening a FIFO that waits for
    its other end) fails the test instead of hanging the run."""
    outcome = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if stat.S_ISFIFO(os.lstat(path).st_mode):
            # Opening both ends at once never blocks, and lets the stuck open return.
            os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK))
        pytest.fail(f"{fn} did not return within {timeout} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink()


@pytest.mark.parametrize("bad", BAD_CACHE_PARAMS)
def test_an_unusable_cache_is_ignored_once_with_one_warning(
        fake_build, monkeypatch: pytest.MonkeyPatch, cache_dir: Path, bad: str) -> None:
    """One warning naming the path, the reason and the fix; then the cache counts as read and
    empty (later lookups and auto resolutions work and do not warn), until `forget` makes the
    next lookup read the repaired file."""
    make, reason = BAD_CACHES[bad]
    path = _tuning.cache_path()
    cache_dir.mkdir()
    make(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _promptly(lambda: _tuning.cached_configs(GPU), path) == {}
    assert [w.category for w in caught] == [RuntimeWarning], [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert f"ignoring the tuning cache {path}: it " in message and reason in message, message
    assert "`python -m fa_cute.tune`" in message
    assert "delete the file" in message or "remove it" in message

    q = torch.empty(1, 4096, 2, 128, dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _tuning.cached_configs(GPU) == {}
        with pytest.raises(ValueError, match="q is on cpu"):  # past auto, at the device check
            fa_cute.forward(q, q, q, config="auto")
        monkeypatch.setattr(_validate, "check_devices", lambda *args, **kwargs: None)
        assert fa_cute.resolve_config(q, q, q, config="auto") == "default_pick"

    _remove(path)
    path.write_text(json.dumps({GPU: {"k": "a"}, "": {KEY_4096: "cache_pick"}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _tuning.cached_configs(GPU) == {}  # still what was read
        _tuning.forget()
        assert _tuning.cached_configs(GPU) == {"k": "a"}
        _cache.forget_tuning()
        assert fa_cute.resolve_config(q, q, q, config="auto") == "cache_pick"


def test_the_size_limit_is_inclusive(cache_dir: Path) -> None:
    cache_dir.mkdir()
    text = json.dumps({GPU: {"k": "a"}})
    _tuning.cache_path().write_text(text + " " * (_tuning.MAX_BYTES - len(text)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _tuning.cached_configs(GPU) == {"k": "a"}


def test_an_unknown_cache_folder_is_an_empty_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_home(cls):
        raise RuntimeError("Could not determine home directory.")

    for var in ("FA_CUTE_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(Path, "home", classmethod(no_home))
    with pytest.warns(RuntimeWarning, match="no tuning cache is used.*FA_CUTE_CACHE_DIR"):
        assert _tuning.cached_configs(GPU) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _tuning.cached_configs(GPU) == {}


@pytest.mark.parametrize("bad", ["deeply nested", "larger than the limit", "invalid UTF-8",
                                 "not JSON", "a gpu's list"])
def test_write_replaces_an_unusable_cache(cache_dir: Path, bad: str) -> None:
    make, reason = BAD_CACHES[bad]
    cache_dir.mkdir()
    make(_tuning.cache_path())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _tuning.write({GPU: {"k": "a"}})
    assert len(caught) == 1 and reason in str(caught[0].message), [str(w.message) for w in caught]
    assert json.loads(_tuning.cache_path().read_text()) == {GPU: {"k": "a"}}
    assert _tuning.cached_configs(GPU) == {"k": "a"}


@pytest.mark.parametrize("bad, kind", [
    pytest.param("FIFO", stat.S_ISFIFO, marks=needs_fifo, id="FIFO"),
    pytest.param("symlink to /dev/zero", stat.S_ISLNK, marks=needs_dev_zero, id="/dev/zero"),
    pytest.param("directory", stat.S_ISDIR, id="directory")])
def test_write_refuses_a_cache_path_that_is_not_a_regular_file(cache_dir: Path, bad: str,
                                                               kind) -> None:
    """Such a path is not a cache that a tuning run wrote: write leaves it as it is."""
    make, reason = BAD_CACHES[bad]
    path = _tuning.cache_path()
    cache_dir.mkdir()
    make(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(OSError, match=f"tuning cache {path} is {reason}; remove it"):
            _promptly(lambda: _tuning.write({GPU: {"k": "a"}}), path)
    assert kind(os.lstat(path).st_mode)
    assert sorted(p.name for p in cache_dir.iterdir()) == [path.name, path.name + ".lock"]


@needs_fifo
def test_write_refuses_a_lock_file_that_is_not_a_regular_file(cache_dir: Path) -> None:
    path = _tuning.cache_path()
    lock = path.with_name(path.name + ".lock")
    cache_dir.mkdir()
    os.mkfifo(lock)
    with pytest.raises(OSError, match=f"lock file {lock} is not a regular file but a FIFO"):
        _promptly(lambda: _tuning.write({GPU: {"k": "a"}}), lock)
    assert not path.exists()


def test_reading_works_without_fcntl_and_writing_says_why_not(cache_dir: Path) -> None:
    """Windows has no fcntl: `import fa_cute` and config="auto" still work there."""
    _tuning.write({GPU: {"k": "a"}})
    script = ("import sys; sys.modules['fcntl'] = None\n"
              "import fa_cute\n"
              "from fa_cute import _tuning\n"
              f"assert _tuning.cached_configs({GPU!r}) == {{'k': 'a'}}\n"
              "try:\n"
              "    _tuning.write({'g': {'k': 'b'}})\n"
              "except OSError as exc:\n"
              "    print(exc)\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, FA_CUTE_CACHE_DIR=str(cache_dir)))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "writing the tuning cache needs fcntl.flock (POSIX)" in run.stdout, run.stdout
    assert json.loads(_tuning.cache_path().read_text()) == {GPU: {"k": "a"}}


def _fake(name: str, rung=None, block: int = 64, dtypes=("bf16", "fp16"),
          family: str = "sm80", smem_bytes: int = 48 * 1024) -> dict:
    return dict(name=name, family=family, head_dim=128, block_m=block, block_n=block,
                num_warps=4, dtypes=list(dtypes), rung=rung, description="fake",
                smem_bytes=smem_bytes)


A100_SMEM = 163 * 1024  # shared_memory_per_block_optin of an A100
BIG_SMEM = 192 * 1024   # more than an A100 holds, less than an H100 (227 KiB)


@pytest.fixture
def fake_build(monkeypatch: pytest.MonkeyPatch):
    """Configs with known names; the heuristic says "default_pick" and records its calls."""
    fakes = [_fake("cache_pick"), _fake("table_pick"), _fake("default_pick"),
             _fake("ladder_pick", rung=1), _fake("big_blocks", block=256),
             _fake("fp16_only", dtypes=("fp16",)), _fake("future_gpu", family="sm100"),
             _fake("big_smem", smem_bytes=BIG_SMEM)]
    calls = []
    monkeypatch.setattr(_configs, "CONFIGS", {c["name"]: c for c in fakes})
    monkeypatch.setattr(_C, "default_config", lambda *args: calls.append(args) or "default_pick")
    return calls


KEY_4096 = _tuning.key("bf16", 128, False, 4096)


@pytest.mark.parametrize("cached, table, seqlen, expected", [
    ("cache_pick", "table_pick", 4096, "cache_pick"),      # the cache beats the table
    (None, "table_pick", 4096, "table_pick"),              # the table beats the heuristic
    (None, None, 4096, "default_pick"),
    ("cache_pick", "table_pick", 2112, "cache_pick"),      # 2112 is in bucket 4096
    ("cache_pick", "table_pick", 2048, "default_pick"),    # 2048 is not
    ("not_built", "table_pick", 4096, "table_pick"),       # unbuilt picks are passed over
    ("not_built", "not_built_either", 4096, "default_pick"),
    ("ladder_pick", "ladder_pick", 4096, "default_pick"),  # ladder configs never
    ("big_blocks", "table_pick", 4096, "big_blocks"),
    ("big_blocks", "table_pick", 3968, "big_blocks"),      # any tile runs any seqlen
    ("fp16_only", None, 4096, "default_pick"),             # dtype bf16
    ("future_gpu", "table_pick", 4096, "table_pick"),      # family sm100 on a 9.0 GPU
    ("big_smem", "table_pick", 4096, "big_smem"),          # fits the limit (None: unknown)
])
def test_resolution_order(fake_build, monkeypatch: pytest.MonkeyPatch, cached, table,
                          seqlen: int, expected: str) -> None:
    if cached:
        _tuning.write({GPU: {KEY_4096: cached}, "Other GPU": {KEY_4096: "table_pick"}})
    if table:
        monkeypatch.setitem(_tuned.TABLE, GPU, {KEY_4096: table})
    assert _configs.auto_config(GPU, CC, "bf16", 128, seqlen)["name"] == expected


@pytest.mark.parametrize("limit, expected", [(None, "big_smem"), (BIG_SMEM, "big_smem"),
                                             (BIG_SMEM - 1, "table_pick"),
                                             (A100_SMEM, "table_pick")])
def test_picks_that_do_not_fit_the_shared_memory_are_skipped(
        fake_build, monkeypatch: pytest.MonkeyPatch, limit, expected: str) -> None:
    _tuning.write({GPU: {KEY_4096: "big_smem"}})
    monkeypatch.setitem(_tuned.TABLE, GPU, {KEY_4096: "table_pick"})
    assert _configs.auto_config(GPU, CC, "bf16", 128, 4096, 4096, False, limit)["name"] == expected


def test_a_heuristic_pick_that_does_not_fit_falls_back_to_the_largest_that_does(
        fake_build, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_configs.CONFIGS, "default_pick",
                        _fake("default_pick", smem_bytes=BIG_SMEM))
    assert _configs.auto_config(GPU, CC, "bf16", 128, 4096)["name"] == "default_pick"
    assert _configs.auto_config(GPU, CC, "bf16", 128, 4096, 4096, False,
                                A100_SMEM)["name"] == "big_blocks"
    # Nothing fits: the heuristic's pick, which the device check then refuses with the reason.
    assert _configs.auto_config(GPU, CC, "bf16", 128, 4096, 4096, False, 1024)["name"] == \
        "default_pick"


def test_the_heuristic_gets_the_exact_lengths(fake_build) -> None:
    _configs.auto_config(GPU, CC, "bf16", 128, 3, 4099, True)
    _configs.auto_config(GPU, CC, "fp16", 128, 1000)
    assert fake_build == [(128, 3, 4099, *CC, True), (128, 1000, 1000, *CC, False)]


def test_the_key_includes_causal(fake_build) -> None:
    causal_key = _tuning.key("bf16", 128, True, 4096)
    assert causal_key != KEY_4096
    _tuning.write({GPU: {causal_key: "cache_pick", KEY_4096: "table_pick"}})
    assert _configs.auto_config(GPU, CC, "bf16", 128, 4096, 4096, True)["name"] == "cache_pick"
    assert _configs.auto_config(GPU, CC, "bf16", 128, 4096, 4096, False)["name"] == "table_pick"
    assert _configs.auto_config(GPU, CC, "bf16", 128, 4096)["name"] == "table_pick"


def test_forward_resolves_with_the_launchs_causality_and_rows(
        fake_build, monkeypatch: pytest.MonkeyPatch) -> None:
    """forward's auto key is the launch's: causal as given unless the mask hides nothing,
    seqlen_q as launched (a packed GQA decode runs nheads // nheads_k rows)."""
    monkeypatch.setattr(_validate, "check_devices", lambda *args, **kwargs: None)
    # CPU tensors resolve for the placeholder GPU "" (the device check would refuse them).
    _tuning.write({"": {_tuning.key("bf16", 128, True, 4096): "cache_pick",
                        _tuning.key("bf16", 128, False, 4096): "table_pick",
                        _tuning.key("bf16", 128, True, 128): "big_blocks"}})

    def resolve(seqlen_q: int, seqlen_k: int, nheads: int, nheads_k: int, causal: bool) -> str:
        q = torch.empty(1, seqlen_q, nheads, 128, dtype=torch.bfloat16)
        k = torch.empty(1, seqlen_k, nheads_k, 128, dtype=torch.bfloat16)
        return fa_cute.resolve_config(q, k, k, causal=causal)

    assert resolve(4096, 4096, 2, 2, True) == "cache_pick"
    assert resolve(4096, 4096, 2, 2, False) == "table_pick"
    assert resolve(2100, 300, 2, 1, True) == "cache_pick"    # bucket of seqlen_q, not seqlen_k
    assert resolve(100, 4096, 2, 2, True) == "big_blocks"
    assert not fake_build
    # A decode: 8 rows of one K/V head, non-causal (one row aligned bottom-right sees every
    # key), so not the causal-n128 entry but the heuristic, asked for 8 rows.
    assert resolve(1, 4096, 8, 1, False) == "default_pick"
    assert resolve(1, 4096, 8, 1, True) == "default_pick"
    assert fake_build == [(128, 8, 4096, 8, 0, False)]


def test_other_gpus_entries_are_not_used(fake_build) -> None:
    _tuning.write({"Other GPU": {KEY_4096: "cache_pick"}})
    assert _configs.auto_config(GPU, CC, "bf16", 128, 4096)["name"] == "default_pick"


def test_cache_is_read_once_per_process(fake_build, monkeypatch: pytest.MonkeyPatch) -> None:
    _tuning.write({GPU: {KEY_4096: "cache_pick"}})
    _cache.forget_tuning()
    reads = []
    read = _tuning.read
    monkeypatch.setattr(_tuning, "read", lambda path: reads.append(path) or read(path))
    for seqlen in range(2112, 4097, 64):
        assert _configs.auto_config(GPU, CC, "bf16", 128, seqlen)["name"] == "cache_pick"
    assert len(reads) == 1
    _tuning.cache_path().write_text(json.dumps({GPU: {KEY_4096: "table_pick"}}))
    assert _configs.auto_config(GPU, CC, "bf16", 128, 4096)["name"] == "cache_pick"  # memoized
    _cache.forget_tuning()
    assert _configs.auto_config(GPU, CC, "bf16", 128, 4096)["name"] == "table_pick"


def test_auto_is_the_default_and_none_means_auto() -> None:
    for fn in (fa_cute.forward, fa_cute.forward_timed, fa_cute.resolve_config):
        assert inspect.signature(fn).parameters["config"].default == "auto", fn
        assert inspect.signature(fn).parameters["causal"].default is False, fn
    seqlen = 1024
    q = torch.empty(1, seqlen, 1, HEAD_DIM, dtype=torch.bfloat16)
    names = _validate.FORWARD_NAMES
    auto = _configs.pick_config("auto", q, HEAD_DIM, False, seqlen, seqlen, names)
    assert _configs.pick_config(None, q, HEAD_DIM, False, seqlen, seqlen, names) is auto
    assert auto["rung"] is None
    for config in ("auto", None):
        with pytest.raises(ValueError, match="q is on cpu"):
            fa_cute.forward(q, q, q, config=config)
        with pytest.raises(ValueError, match="q is on cpu"):
            fa_cute.resolve_config(q, q, q, config=config)
    with pytest.raises(TypeError, match="config must be a config name \\(str\\), 'auto' or None"):
        fa_cute.resolve_config(q, q, q, config=1)


def test_builtin_table_is_well_formed() -> None:
    for gpu, picks in _tuned.TABLE.items():
        assert isinstance(gpu, str) and gpu
        for key, name in picks.items():
            dtype, d, causal, n = key.split("-")
            assert key == _tuning.key(dtype, int(d[1:]), causal == "causal", int(n[1:])), key
            assert isinstance(name, str) and not name.startswith("ladder"), (key, name)


@pytest.mark.cuda
def test_tune_writes_the_cache_that_auto_uses(make_qkv, cache_dir: Path) -> None:
    env = dict(os.environ, FA_CUTE_CACHE_DIR=str(cache_dir), PYTHONUNBUFFERED="1")
    run = subprocess.run([sys.executable, "-m", "fa_cute.tune", "--seqlens", "256", "--dtype",
                          "bf16", "--headdim", str(HEAD_DIM), "--warmup", "5", "--rep", "20"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    gpu = torch.cuda.get_device_name(0)
    winner = json.loads(_tuning.cache_path().read_text())[gpu][
        _tuning.key("bf16", HEAD_DIM, False, 256)]
    assert winner in {c["name"] for c in PRODUCTION}
    last = run.stdout.splitlines()[-1]  # the table's one row comes last
    assert last.split()[:3] == ["bf16", "full", "256"], last
    assert last.endswith(winner) and " *" in last, last

    q, k, v = make_qkv(2, 256, 3, HEAD_DIM, torch.bfloat16, "cuda")
    _cache.forget_tuning()
    assert fa_cute.resolve_config(q, k, v) == winner
    ref = fa_cute.forward(q, k, v, config=winner)
    assert torch.equal(fa_cute.forward(q, k, v, config="auto"), ref)


@pytest.mark.parametrize("seqlen_q, seqlen_k", [(1, 1), (1, 4096), (64, 64), (100, 3),
                                              (192, 192), (320, 320), (4096, 4096)])
def test_auto_without_entries_is_the_heuristics_pick(seqlen_q: int, seqlen_k: int) -> None:
    """Any tile runs any length, so without tuning entries auto is the heuristic, for every
    built head dim (on a GPU with room for every config)."""
    for head_dim in sorted({c["head_dim"] for c in PRODUCTION}):
        for causal in (False, True):
            pick = _configs.auto_config(GPU, CC, "bf16", head_dim, seqlen_q, seqlen_k, causal)
            assert pick["name"] == _C.default_config(head_dim, seqlen_q, seqlen_k, *CC, causal)
        assert pick["rung"] is None and pick["head_dim"] == head_dim


def test_tune_rejects_a_head_dim_that_is_not_built(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        tune.main(["--headdim", "24"])
    assert exc.value.code == 2
    built = ", ".join(map(str, sorted({c["head_dim"] for c in PRODUCTION})))
    assert f"--headdim: 24 is not a built head dim; built: {built}" in capsys.readouterr().err


def test_tune_causal_option() -> None:
    assert tune.parse_args(["--causal", "false"]).causal == (False,)
    assert tune.parse_args([]).causal == (False,)
    assert tune.CAUSAL_CHOICES == {"false": (False,), "true": (True,), "both": (False, True)}


@pytest.mark.parametrize("value, expected", [("false", [False]), ("true", [True]),
                                             ("both", [False, True])])
def test_tune_causal_values(value: str, expected) -> None:
    assert list(tune.parse_args(["--causal", value]).causal) == expected


def test_tune_rejects_other_causal_values(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        tune.parse_args(["--causal", "yes"])
    assert exc.value.code == 2
    assert "--causal: invalid choice: 'yes'" in capsys.readouterr().err


def test_tune_table_shows_the_mask() -> None:
    shapes = [dict(dtype="bf16", causal=causal, seqlen=1024, batch=16, nheads=16, head_dim=128,
                   flops=tune.causal_flops(10**12, causal), candidates=["a", "b"],
                   ms={"a": 1.0, "b": 2.0}, winner="a") for causal in (False, True)]
    _, header, _, full, causal = tune.render(shapes, ["a", "b", "c"]).splitlines()
    assert header.split()[:5] == ["dtype", "mask", "N", "B", "H"]
    assert full.split() == ["bf16", "full", "1024", "16", "16", "1.000", "ms", "1000.0", "*",
                            "2.000", "ms", "500.0", "-", "a"]
    assert causal.split()[:9] == ["bf16", "causal", "1024", "16", "16", "1.000", "ms", "500.0",
                                  "*"]
