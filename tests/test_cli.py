"""`python -m fa_cute.bench` and `python -m fa_cute.tune` where no GPU is needed: their
answer on a machine without one, option errors, and the tables and plot they draw from
measured numbers (here made up)."""

import os
import subprocess
import sys

import pytest
import torch

import fa_cute
from fa_cute import _C, bench, info, tune
from fa_cute._backward import BACKWARD_CONFIGS

RECORDS = [dict(dtype=dtype, seqlen=n, batch=16384 // n, nheads=16, head_dim=128,
                config="sm80_m128n128w8_d128",
                tflops={"ladder01_basic_d128": 50.0 * i, "ladder02_swizzle_d128": None,
                        "fa_cute": 300.0 + i, "FLASH": 330.0, "CUDNN": 600.0})
           for dtype in ("bf16", "fp16") for i, n in enumerate((1024, 2048), start=1)]
LADDER = [("ladder01_basic_d128", "1 basic"), ("ladder02_swizzle_d128", "2 swizzle"),
          ("fa_cute", "fa_cute")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer without a GPU")
@pytest.mark.parametrize("module", ["fa_cute.bench", "fa_cute.tune"])
def test_without_gpu_exits_1_with_a_plain_message(module: str) -> None:
    run = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout == f"{module} needs a CUDA GPU; none is visible to PyTorch.\n"


@pytest.mark.parametrize("names", ["no_such_config", "ladder01_basic_d128"])
def test_tune_rejects_configs_it_would_never_pick(names: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        tune.main(["--configs", names])
    assert exc.value.code == 2
    assert f"--configs: {names!r} is not a built production config" in capsys.readouterr().err


def test_bench_ladder_and_all_configs_exclude_each_other(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["--ladder", "--all-configs"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_rung_label() -> None:
    assert bench.rung_label({"name": "ladder03_overlap_d128", "rung": 3}) == "3 overlap"
    assert bench.rung_label({"name": "ladder12_misc_d64", "rung": 12}) == "12 misc"


def test_ladder_table() -> None:
    text = bench.render_ladder(RECORDS, LADDER, ["FLASH", "CUDNN"])
    title, header, _, *rows = text.splitlines()
    assert title.startswith("TFLOP/s (ratio to FLASH), head dim 128")
    assert header.split() == ["dtype", "N", "1", "basic", "2", "swizzle", "fa_cute", "FLASH",
                              "CUDNN", "fa_cute", "config"]
    assert rows[0].split() == ["bf16", "1024", "50.0", "(0.15x)", "n/a", "301.0", "(0.91x)",
                               "330.0", "600.0", "sm80_m128n128w8_d128"]
    assert len(rows) == 4


def test_default_table_keeps_its_columns() -> None:
    records = [dict(r, tflops=dict(r["tflops"], EFFICIENT=None)) for r in RECORDS]
    text = bench.render(records, ["fa_cute"], ["FLASH", "CUDNN", "EFFICIENT"])
    header, _, first = text.splitlines()[1:4]
    assert header.split() == ["dtype", "N", "B", "H", "fa_cute", "FLASH", "CUDNN", "EFFICIENT",
                              "fa/CUDNN", "fa/FLASH", "fa_cute", "config"]
    assert first.split() == ["bf16", "1024", "16", "16", "301.0", "330.0", "600.0", "n/a",
                             "0.50x", "0.91x", "sm80_m128n128w8_d128"]


def test_plot_writes_a_png(tmp_path) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib import pyplot

    path = tmp_path / "ladder.png"
    bench.plot(pyplot, RECORDS, LADDER + [("FLASH", "FLASH")], str(path), "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tune_table_marks_the_winner() -> None:
    shapes = [dict(dtype="bf16", causal=False, seqlen=1024, batch=16, nheads=16, head_dim=128,
                   flops=int(1e12), candidates=["a", "b"], ms={"a": 2.0, "b": None}, winner="a"),
              dict(dtype="bf16", causal=True, seqlen=2048, batch=8, nheads=16, head_dim=128,
                   flops=int(1e12), candidates=["a"], ms={"a": 4.0}, winner="a")]
    rows = tune.render(shapes, ["a", "b"]).splitlines()[3:]
    assert rows[0].split() == ["bf16", "full", "1024", "16", "16", "2.000", "ms", "500.0", "*",
                               "n/a", "a"]
    assert rows[1].split() == ["bf16", "causal", "2048", "8", "16", "4.000", "ms", "250.0", "*",
                               "-", "a"]


def test_progress_counter_without_tqdm(capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if not installed
    counter = tune.progress_bar(2)
    for step in ("first", "second"):
        counter.set_postfix_str(step)
        counter.update(1)
    counter.close()
    assert capsys.readouterr().err == "[1/2] first\n[2/2] second\n"


def test_info_help_and_unknown_options() -> None:
    run = subprocess.run([sys.executable, "-m", "fa_cute.info", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: python -m fa_cute.info")
    assert "configs built" not in run.stdout  # --help answers instead of running the report
    run = subprocess.run([sys.executable, "-m", "fa_cute.info", "--no-such-option"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "unrecognized arguments" in run.stderr


def _built_head_dims(monkeypatch, head_dims) -> None:
    """Make fa_cute.configs() report a production config per head dim, whatever was built."""
    fake = [dict(name=f"sm80_m128n64w4_d{d}", family="sm80", head_dim=d, rung=None)
            for d in head_dims]
    monkeypatch.setattr(tune.fa_cute, "configs", lambda: fake)


def test_tune_takes_head_dim_lists_as_bench_does(monkeypatch) -> None:
    _built_head_dims(monkeypatch, [64, 128, 256])
    args = tune.parse_args(["--headdim", "64,128", "--seqlens", "1024,4096", "--dtype", "bf16"])
    assert args.headdim == [64, 128] and args.seqlens == [1024, 4096] and args.dtype == ["bf16"]
    assert bench.parse_args(["--headdim", "64,128"]).headdim == args.headdim
    assert tune.parse_args([]).headdim == [128]


@pytest.mark.parametrize("argv, message", [
    (["--headdim", "64,96"], "--headdim: 96 is not a built head dim; built: 64, 128"),
    (["--headdim", "64,abc"], "expected integers like"),
    (["--headdim", "0"], "expected integers >= 1"),
])
def test_tune_head_dim_errors(argv, message, monkeypatch, capsys) -> None:
    _built_head_dims(monkeypatch, [64, 128])
    with pytest.raises(SystemExit) as exc:
        tune.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_tune_renders_a_table_per_head_dim() -> None:
    shapes = [dict(dtype="bf16", causal=False, seqlen=1024, batch=16, nheads=2048 // d,
                   head_dim=d, flops=int(1e12), candidates=["a"], ms={"a": 1.0}, winner="a")
              for d in (64, 128)]
    assert "head dim 64," in tune.render(shapes[:1], ["a"])
    assert "head dim 128," in tune.render(shapes[1:], ["a"])


def test_info_reports_the_build_and_its_licences() -> None:
    text = info.describe()
    assert f"configs built ({len(fa_cute.configs())}" in text
    assert f"backward configs built ({len(BACKWARD_CONFIGS)})" in text
    assert "license files: " in text
    record = info.build_record()  # empty where the install carries no fa_cute_build.json
    if record:
        assert ",".join(record["archs"]) == _C.build_info()["archs"]
        built = [c["name"] for c in fa_cute.configs()] + list(BACKWARD_CONFIGS)
        assert sorted(record["configs"]) == sorted(built)
    for path in info.license_files():
        assert os.path.basename(path) in ("LICENSE", "LICENSE-CUTLASS.txt")


# tune --bwd (issue 16, item 3)

def test_tune_bwd_options(monkeypatch, capsys) -> None:
    fake = [dict(name="bwd_sm80_m64n128w8_d128", family="sm80", head_dim=128, block_m=64,
                 block_n=128, num_warps=8, smem_bytes=131072, dtypes=["bf16", "fp16"])]
    monkeypatch.setattr(tune, "backward_configs", lambda: [dict(c, rung=None) for c in fake])
    args = tune.parse_args(["--bwd", "--configs", "bwd_sm80_m64n128w8_d128"])
    assert args.bwd and args.configs == ["bwd_sm80_m64n128w8_d128"]
    assert not tune.parse_args([]).bwd
    forward = next(c["name"] for c in fa_cute.configs() if c["rung"] is None)
    with pytest.raises(SystemExit) as exc:
        tune.parse_args(["--bwd", "--configs", forward])  # a forward config is not a candidate
    assert exc.value.code == 2
    assert f"--configs: {forward!r} is not a built backward config" in capsys.readouterr().err
    monkeypatch.setattr(tune, "backward_configs", list)
    with pytest.raises(SystemExit):
        tune.parse_args(["--bwd"])
    assert "has no backward configs" in capsys.readouterr().err


def test_tune_bwd_candidates_are_the_built_backward_configs() -> None:
    names = [c["name"] for c in tune.backward_configs()]
    assert names == [c["name"] for c in getattr(_C, "backward_configs", list)()]
    assert all(c["rung"] is None for c in tune.backward_configs())


def test_backward_keys_cannot_collide_with_forward_keys() -> None:
    from fa_cute import _tuning

    key = tune.backward_key("bf16", 128, True, 3000)
    assert key == "bwd-" + _tuning.key("bf16", 128, True, 3000) == "bwd-bf16-d128-causal-n4096"
    shapes = [(dtype, d, causal, n) for dtype in ("bf16", "fp16") for d in (64, 128)
              for causal in (False, True) for n in (1, 128, 4096, 65536, 10**6)]
    forward_keys = {_tuning.key(*shape) for shape in shapes}
    backward_keys = {tune.backward_key(*shape) for shape in shapes}
    assert len(backward_keys) == len(forward_keys) and not backward_keys & forward_keys


def test_tune_bwd_table_says_backward() -> None:
    shapes = [dict(dtype="bf16", causal=False, seqlen=1024, batch=16, nheads=16, head_dim=128,
                   flops=int(2.5e12), candidates=["b"], ms={"b": 5.0}, winner="b")]
    title = tune.render(shapes, ["b"], "backward").splitlines()[0]
    assert "head dim 128, backward (FLOPs 2.5x the forward's)" in title
    assert "500.0 *" in tune.render(shapes, ["b"], "backward")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or not tune.backward_configs(),
                    reason="needs a CUDA GPU and a build with the backward")
def test_tune_bwd_on_a_gpu(capsys) -> None:
    d = tune.backward_configs()[0]["head_dim"]
    argv = ["--bwd", "--dry-run", "--headdim", str(d), "--seqlens", "1024", "--dtype", "bf16",
            "--causal", "both", "--warmup", "5", "--rep", "10"]
    assert tune.main(argv) == 0
    out = capsys.readouterr().out
    assert "check gradients" in out and "FAILED" not in out
    assert f"head dim {d}, backward" in out
