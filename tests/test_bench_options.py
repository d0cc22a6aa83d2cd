"""`python -m fa_cute.bench`'s causal, multi-head-dim, decode, --bwd and --fwdbwd options
without a GPU: option parsing and errors, FLOP and byte counts, the tables' titles and cells,
the plot's files, the gradient check and the backward's timing on fakes; --bwd and --fwdbwd
end to end on a GPU (skipped without one). (tests/test_cli.py covers the options that
predate these.)"""

import json

import pytest
import torch

import fa_cute
from fa_cute import _fa4, _timing, bench


def test_flops_halved_when_causal() -> None:
    assert _timing.attention_flops(2, 3, 5, 7, 64) == 4 * 2 * 3 * 5 * 7 * 64
    assert _timing.attention_flops(2, 3, 8, 8, 64, causal=True) == 2 * 2 * 3 * 8 * 8 * 64
    batch, nheads, flops = _timing.problem(4096, 128)
    assert (batch, nheads, flops) == (4, 16, 4 * 4 * 16 * 4096**2 * 128)
    assert _timing.problem(4096, 128, causal=True) == (4, 16, flops // 2)
    assert _timing.problem(1024, 64)[:2] == (16, 32)


def test_decode_bytes_and_bandwidth() -> None:
    # q and o: 16 * 32 rows of 128; k and v: 16 * 8 heads * 4096 rows of 128; 2 bytes each
    expected = (2 * 16 * 32 * 128 + 2 * 16 * 8 * 4096 * 128) * 2
    assert _timing.decode_bytes(16, 32, 8, 4096, 128, 2) == expected
    assert _timing.gbps(2 * 10**9, 2.0) == pytest.approx(1000.0)
    assert _timing.gbps(10, None) is None
    assert _timing.tflops(10**12, 1.0) == pytest.approx(1000.0)


def test_parse_causal_headdims_and_defaults() -> None:
    args = bench.parse_args(["--causal", "both", "--headdim", "64,128,256"])
    assert args.causal == (False, True) and args.headdim == [64, 128, 256]
    assert not args.decode and args.batch is None
    args = bench.parse_args([])
    assert args.causal == (False,) and args.headdim == [128]
    assert bench.parse_args(["--causal", "true"]).causal == (True,)


def test_parse_decode() -> None:
    args = bench.parse_args(["--decode", "--seqlens", "1,4096"])
    assert (args.batch, args.nheads, args.nheads_kv) == (16, 32, 8)
    assert args.seqlens == [1, 4096] and args.causal == (False,)
    args = bench.parse_args(["--decode", "--batch", "4", "--nheads", "8", "--nheads-kv", "1"])
    assert (args.batch, args.nheads, args.nheads_kv) == (4, 8, 1)


@pytest.mark.parametrize("argv, message", [
    (["--decode", "--causal", "both"], "a decode step is timed non-causal"),
    (["--decode", "--ladder"], "--decode and --ladder"),
    (["--batch", "4"], "set --decode's shape"),
    (["--decode", "--nheads", "6", "--nheads-kv", "4"], "--nheads 6 is not a multiple of "
                                                        "--nheads-kv 4"),
    (["--seqlens", "1024,0"], "expected integers >= 1"),
    (["--headdim", "64,abc"], "expected integers like"),
    (["--causal", "yes"], "invalid choice"),
])
def test_option_errors(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def _forward_record(causal: bool) -> dict:
    return dict(kind="forward", dtype="bf16", seqlen=2048, batch=8, nheads=16, head_dim=64,
                causal=causal, config="sm80_m128n64w4_d64",
                tflops={"fa_cute": 200.0, "FLASH": 250.0, "CUDNN": None})


def test_causal_table_says_how_flops_are_counted() -> None:
    title, header, _, row = bench.render([_forward_record(True)], ["fa_cute"],
                                         ["FLASH", "CUDNN"]).splitlines()
    assert title == ("TFLOP/s, head dim 64, causal forward (fa_cute bottom-right, SDPA "
                     "top-left: the same mask at N_q = N_k; FLOPs halved: 2*B*H*N^2*d)")
    assert row.split() == ["bf16", "2048", "8", "16", "200.0", "250.0", "n/a", "n/a", "0.80x",
                           "sm80_m128n64w4_d64"]
    title = bench.render([_forward_record(False)], ["fa_cute"], ["FLASH"]).splitlines()[0]
    assert title == "TFLOP/s, head dim 64, non-causal forward"


def test_decode_table() -> None:
    record = dict(kind="decode", dtype="fp16", seqlen_q=1, seqlen_k=4096, batch=16, nheads=32,
                  nheads_kv=8, head_dim=128, causal=False, bytes=10**9,
                  config="sm80_m64n64w4_d128", ms={"fa_cute": 0.5, "FLASH": 0.625, "CUDNN": None},
                  gbps={"fa_cute": 2000.0, "FLASH": 1600.0, "CUDNN": None})
    title, header, _, row = bench.render_decode([record], ["fa_cute"],
                                                ["FLASH", "CUDNN"]).splitlines()
    assert title.startswith("us and GB/s, decode (seqlen_q = 1), head dim 128, B = 16, H = 32, "
                            "H_kv = 8")
    assert header.split() == ["dtype", "N_k", "fa_cute", "us", "FLASH", "us", "CUDNN", "us",
                              "fa_cute", "GB/s", "FLASH", "GB/s", "CUDNN", "GB/s", "fa/CUDNN",
                              "fa/FLASH", "fa_cute", "config"]
    assert row.split() == ["fp16", "4096", "500.0", "625.0", "n/a", "2000", "1600", "n/a",
                           "n/a", "1.25x", "sm80_m64n64w4_d128"]
    assert bench.row_label(record) == "decode N_k=4096 d=128"
    assert bench.row_label(_forward_record(True)) == "N=2048 d=64 causal"


def test_plot_paths() -> None:
    assert bench.plot_path("out/b.png", 128, True, several=False) == "out/b.png"
    assert bench.plot_path("out/b.png", 64, True, several=True) == "out/b-d64-causal.png"
    assert bench.plot_path("b", 256, False, several=True) == "b-d256-noncausal.png"


def test_decode_plot_writes_a_png(tmp_path) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib import pyplot

    records = [dict(kind="decode", dtype="bf16", seqlen_k=n, gbps={"fa_cute": g, "FLASH": None})
               for n, g in ((1024, 900.0), (4096, 2500.0))]
    path = tmp_path / "decode.png"
    bench.plot(pyplot, records, [("fa_cute", "fa_cute"), ("FLASH", "FLASH")], str(path), "t",
               metric="gbps")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_unwritable_output_fails_before_the_run(option, tmp_path, capsys) -> None:
    path = tmp_path / "no_such_dir" / "out.png"
    with pytest.raises(SystemExit) as exc:
        bench.parse_args([option, str(path)])
    assert exc.value.code == 2
    assert f"{option}: cannot write {path}: No such file or directory" in capsys.readouterr().err


def test_plot_paths_of_every_table_are_checked(tmp_path, capsys) -> None:
    blocked = tmp_path / "b-d128-causal.png"
    blocked.mkdir()  # a directory where the causal table's plot would go
    with pytest.raises(SystemExit):
        bench.parse_args(["--causal", "both", "--plot", str(tmp_path / "b.png")])
    assert f"--plot: cannot write {blocked}" in capsys.readouterr().err


def test_output_check_leaves_files_as_they_were(tmp_path) -> None:
    new, old = tmp_path / "new.json", tmp_path / "old.json"
    old.write_text("previous run")
    bench.parse_args(["--json", str(new)])
    bench.parse_args(["--json", str(old)])
    assert not new.exists()  # created by the check, then removed
    assert old.read_text() == "previous run"  # replaced only when the run writes it


def test_progress_goes_to_stderr(capsys) -> None:
    _timing.progress("[1/2] bf16 N=1024 d=128 non-causal")
    out, err = capsys.readouterr()
    assert out == "" and err == "[1/2] bf16 N=1024 d=128 non-causal\n"


# FlashAttention-4's column. A fake `flash_attn.cute` in a site dir stands in for FA4 (whose
# kernels need a GPU): it records each call and answers by the float64 reference on the CPU.
FAKE_FA4 = '''
import torch
from fa_cute._reference import attention_ref

MODE = "ok"  # "ok", "ignore_causal" (a wrong causal result), "raise", "out_only"
calls = []


def flash_attn_func(q, k, v, qv=None, gather_kv_indices=None, softmax_scale=None,
                    causal=False, **kwargs):
    calls.append(dict(q=q, k=k, v=v, softmax_scale=softmax_scale, causal=causal, kwargs=kwargs))
    if MODE == "raise":
        raise AssertionError("(head_dim, head_dim_v)=(24, 24) is not supported\\nmore")
    out = attention_ref(q, k, v, softmax_scale, causal=causal and MODE != "ignore_causal")
    out = out.to(q.dtype)
    return out if MODE == "out_only" else (out, None)
'''


@pytest.fixture
def fake_fa4(tmp_path, monkeypatch):
    """(site dir holding the fake FA4, a function returning the imported fake module); sys.path
    and the imported modules are restored afterwards."""
    import sys

    package = tmp_path / "fa4site" / "flash_attn" / "cute"
    package.mkdir(parents=True)  # no flash_attn/__init__.py: a namespace package, as FA4's wheel
    (package / "__init__.py").write_text(FAKE_FA4)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv(_fa4.ENV, raising=False)
    yield str(tmp_path / "fa4site"), lambda: sys.modules["flash_attn.cute"]
    for name in ("flash_attn.cute", "flash_attn"):
        sys.modules.pop(name, None)


def test_fa4_site_option_and_environment(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv(_fa4.ENV, raising=False)
    assert bench.parse_args([]).fa4_site is None
    assert bench.parse_args(["--fa4-site", str(tmp_path)]).fa4_site == str(tmp_path)
    monkeypatch.setenv(_fa4.ENV, str(tmp_path))
    assert bench.parse_args([]).fa4_site == str(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    assert bench.parse_args(["--fa4-site", str(other)]).fa4_site == str(other)  # option wins
    for argv, env, named in ((["--fa4-site", str(tmp_path / "nope")], str(tmp_path), "--fa4-site"),
                             ([], str(tmp_path / "nope"), _fa4.ENV)):
        monkeypatch.setenv(_fa4.ENV, env)
        with pytest.raises(SystemExit) as exc:
            bench.parse_args(argv)
        assert exc.value.code == 2
        assert f"{named} {tmp_path / 'nope'}: not a directory" in capsys.readouterr().err


def test_fa4_found_in_a_site_dir_and_called_in_its_layout(fake_fa4) -> None:
    import torch

    site_dir, module = fake_fa4
    func, why = _fa4.load(site_dir)
    assert why == "" and func is module().flash_attn_func
    q = torch.randn(2, 4, 16, 8, dtype=torch.bfloat16)  # the benchmark's (b, h, n, d)
    k, v = torch.randn(2, 2, 32, 8, dtype=torch.bfloat16), torch.randn(2, 2, 32, 8).bfloat16()
    out = _fa4.call(func, q, k, v, causal=True)
    (c,) = module().calls
    # FA4 gets (b, n, h, d) views of the same memory, K/V with their own (GQA) head count
    for given, seen in ((q, c["q"]), (k, c["k"]), (v, c["v"])):
        assert seen.shape == given.transpose(1, 2).shape
        assert seen.data_ptr() == given.data_ptr()
        assert seen.stride() == given.transpose(1, 2).stride()
    assert c["softmax_scale"] == pytest.approx(8 ** -0.5) and c["causal"] is True
    assert c["kwargs"] == {}
    assert out.shape == (2, 16, 4, 8)  # out of (out, lse)
    module().MODE = "out_only"  # a release that returns out alone
    assert _fa4.call(func, q, k, v).shape == (2, 16, 4, 8)


def test_fa4_check_marks_a_wrong_result(fake_fa4) -> None:
    site_dir, module = fake_fa4
    func, _ = _fa4.load(site_dir)
    shape = (1, 64, 64, 4, 2)
    c = _fa4.check(func, 32, True, "bf16", shape, device="cpu")
    assert c["ok"] and not c["wrong"] and c["max_err"] <= 2 * c["plain_err"] + 1e-5
    assert _fa4.verdict(c).startswith("check FA4, bf16 causal, B=1 N_q=64 N_k=64 H=4 H_kv=2 d=32: "
                                      "max abs error")
    module().MODE = "ignore_causal"
    c = _fa4.check(func, 32, True, "fp16", shape, device="cpu")
    assert not c["ok"] and c["wrong"] and c["error"].startswith("wrong result: ")
    module().MODE = "raise"
    c = _fa4.check(func, 32, False, "bf16", shape, device="cpu")
    assert not c["ok"] and not c["wrong"]
    assert c["error"] == "raised AssertionError: (head_dim, head_dim_v)=(24, 24) is not supported"
    assert _fa4.verdict(c).endswith(": FAILED: " + c["error"])


def test_fa4_timing_failure_leaves_the_cell_empty(fake_fa4) -> None:
    import torch

    site_dir, module = fake_fa4
    func, _ = _fa4.load(site_dir)
    module().MODE = "raise"
    sets = [tuple(torch.randn(1, 2, 8, 32).bfloat16() for _ in range(3))]
    assert _fa4.time_fa4(func, sets, lambda fn: 1.0) == (
        None, "AssertionError: (head_dim, head_dim_v)=(24, 24) is not supported")


def test_find_fa4_checks_each_table_and_dtype(fake_fa4, monkeypatch, capsys) -> None:
    import functools

    site_dir, module = fake_fa4
    monkeypatch.setattr(_fa4, "check", functools.partial(_fa4.check, device="cpu"))
    monkeypatch.setattr(bench, "CHECK_SHAPE", (1, 64, 64, 4, 4))  # small, for the CPU
    args = bench.parse_args(["--fa4-site", site_dir, "--dtype", "bf16,fp16"])
    module_loaded = _fa4.load(site_dir)[0]
    module().MODE = "ignore_causal"  # right without a mask, wrong with one
    func, skip, checks = bench.find_fa4(args, [(64, False), (64, True), (12, False)])
    assert func is module_loaded
    assert [(c["shape"][-1], c["causal"], c["dtype"], c["ok"]) for c in checks] == [
        (64, False, "bf16", True), (64, False, "fp16", True),
        (64, True, "bf16", False), (64, True, "fp16", False)]
    assert set(skip) == {(64, True, "bf16"), (64, True, "fp16"), (12, False, "bf16"),
                         (12, False, "fp16")}
    assert skip[64, True, "bf16"][1] is True  # wrong: its cells say so
    assert skip[12, False, "bf16"] == ("FA4 takes head dims 8 to 256 in multiples of 8, not 12",
                                       False)
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("FA4: flash-attn-4 ")
    assert sum(line.startswith("check FA4, ") for line in out.splitlines()) == 4
    assert "FA4 fp16 d=64 causal: not timed (wrong): wrong result: " in err
    assert "FA4 bf16 d=12 non-causal: not timed (-): FA4 takes head dims" in err


def test_without_fa4_no_column(monkeypatch, capsys) -> None:
    import sys

    monkeypatch.delenv(_fa4.ENV, raising=False)
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # as if not installed
    func, why = _fa4.load(None)
    assert func is None and why.startswith("ModuleNotFoundError: ")
    assert bench.find_fa4(bench.parse_args([]), [(128, False)]) == (None, {}, [])
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("fa_cute.bench: no FA4 column: flash_attn.cute does not "
                                        "import (ModuleNotFoundError")
    # the tables keep their columns: no FA4, no fa/FA4
    header = bench.render([_forward_record(False)], ["fa_cute"], ["FLASH", "CUDNN"]).splitlines()[1]
    assert header.split() == ["dtype", "N", "B", "H", "fa_cute", "FLASH", "CUDNN", "fa/CUDNN",
                              "fa/FLASH", "fa_cute", "config"]


def test_tables_with_fa4() -> None:
    timed = _forward_record(False)
    timed["tflops"] = dict(timed["tflops"], CUDNN=400.0, FA4=250.0)
    failed = dict(_forward_record(False), seqlen=4096, tflops=dict(timed["tflops"], FA4=None))
    wrong = dict(_forward_record(False), seqlen=8192, ms={}, not_run={},
                 tflops=dict(timed["tflops"]))
    bench.not_timed(wrong, "FA4", "wrong result: ...", True)
    assert wrong["not_run"] == {"FA4": "wrong result: ..."} and wrong["tflops"]["FA4"] is None
    _, header, _, *rows = bench.render([timed, failed, wrong], ["fa_cute"],
                                       ["FLASH", "CUDNN", "FA4"]).splitlines()
    assert header.split() == ["dtype", "N", "B", "H", "fa_cute", "FLASH", "CUDNN", "FA4",
                              "fa/CUDNN", "fa/FA4", "fa/FLASH", "fa_cute", "config"]
    assert rows[0].split()[4:11] == ["200.0", "250.0", "400.0", "250.0", "0.50x", "0.80x", "0.80x"]
    assert rows[1].split()[7:11] == ["-", "0.50x", "n/a", "0.80x"]
    assert rows[2].split()[7:11] == ["wrong", "0.50x", "n/a", "0.80x"]
    record = dict(kind="decode", dtype="bf16", seqlen_k=4096, batch=16, nheads=32, nheads_kv=8,
                  head_dim=128, config="c", not_run={},
                  ms={"fa_cute": 0.5, "CUDNN": 0.4, "FA4": 0.25},
                  gbps={"fa_cute": 2000.0, "CUDNN": 2500.0, "FA4": 4000.0})
    header, _, row = bench.render_decode([record], ["fa_cute"], ["CUDNN", "FA4"]).splitlines()[1:]
    assert header.split()[-4:] == ["fa/CUDNN", "fa/FA4", "fa_cute", "config"]
    assert row.split() == ["bf16", "4096", "500.0", "400.0", "250.0", "2000", "2500", "4000",
                           "0.80x", "0.50x", "c"]


# --bwd and --fwdbwd (issue 16, item 3)

def test_parse_grad_passes() -> None:
    assert bench.parse_args(["--bwd"]).grad_pass == "bwd"
    assert bench.parse_args(["--fwdbwd", "--causal", "both"]).grad_pass == "fwdbwd"
    assert bench.parse_args([]).grad_pass is None


@pytest.mark.parametrize("argv, message", [
    (["--bwd", "--fwdbwd"], "not allowed with argument"),
    (["--bwd", "--decode"], "drop --decode"),
    (["--fwdbwd", "--ladder"], "drop --ladder"),
    (["--bwd", "--all-configs"], "drop --all-configs"),
    (["--fwdbwd", "--config", "bwd_sm80_m64n128w8_d128"], "drop --config"),
])
def test_grad_pass_option_errors(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_bwd_takes_a_backward_config(monkeypatch) -> None:
    """--bwd --config NAME: fa_cute's column checks and times NAME (config_grads and
    time_grad_pass's config), and its records name it."""
    assert bench.parse_args(["--bwd", "--config", "bwd_sm80_m64n128w8_d128"]).config == \
        "bwd_sm80_m64n128w8_d128"
    checked = []
    monkeypatch.setattr(bench, "config_grads", lambda config: checked.append(config) or "grads")
    monkeypatch.setattr(bench, "check_grads",
                        lambda column, fn, *a, **k: dict(config=column, fn=fn, ok=True))
    monkeypatch.setattr(bench, "grad_verdict", lambda c: "")
    checks = bench.grad_checks(64, False, "bf16", None, SMALL, device="cpu", config="NAME")
    assert checked == ["NAME"] and checks[0] == dict(config="fa_cute", fn="grads", ok=True)
    timed = {}

    def time_grad_pass(forward, sets, timer, causal, grad_pass, **kwargs):
        timed[kwargs["context"].args[0]] = kwargs["config"]
        return 1.0, ""

    monkeypatch.setattr(bench, "time_grad_pass", time_grad_pass)
    monkeypatch.setattr(bench, "input_sets", lambda *a: [None])
    monkeypatch.setattr(bench, "interleaved_medians",
                        lambda timings, rounds: ({c: f()[0] for c, f in timings.items()}, {}))
    record = bench.time_grad_row("bwd", "bf16", 1024, 64, False, ["fa_cute", "FLASH"], 0,
                                 None, 1, config="NAME")
    assert timed == {"fa_cute": "NAME", "FLASH": None} and record["config"] == "NAME"


def test_backward_flops() -> None:
    _, _, flops = _timing.problem(4096, 128)
    assert _timing.pass_flops(flops, "bwd") == 10 * 4 * 16 * 4096**2 * 128  # 2.5 x 4BHN^2d
    assert _timing.pass_flops(flops, "fwdbwd") == 14 * 4 * 16 * 4096**2 * 128
    _, _, causal = _timing.problem(4096, 128, causal=True)
    assert _timing.pass_flops(causal, "bwd") == _timing.pass_flops(flops, "bwd") // 2


def _backward_record(causal: bool = False) -> dict:
    return dict(kind="backward", dtype="bf16", seqlen=4096, batch=4, nheads=16, head_dim=128,
                causal=causal, config="bwd_sm80_m64n128w8_d128",
                ms={"fa_cute": 1.0, "FLASH": 1.0, "CUDNN": 0.8, "EFFICIENT": None},
                tflops={"fa_cute": 300.0, "FLASH": 300.0, "CUDNN": 375.0, "EFFICIENT": None},
                not_run={"EFFICIENT": "no kernel"})


def test_backward_table() -> None:
    title, header, _, row = bench.render([_backward_record()], ["fa_cute"],
                                         ["FLASH", "CUDNN", "EFFICIENT"]).splitlines()
    assert title == ("TFLOP/s, head dim 128, non-causal backward (FLOPs 2.5x the forward's: "
                     "2.5*4*B*H*N^2*d)")
    assert row.split() == ["bf16", "4096", "4", "16", "300.0", "300.0", "375.0", "n/a",
                           "0.80x", "1.00x", "bwd_sm80_m64n128w8_d128"]
    title = bench.table_title([dict(_backward_record(True), kind="fwdbwd")])
    assert "causal forward+backward" in title and "3.5x" in title and "halved" in title


def _fake_forward(q, k, v, *, causal=False, return_lse=False, **kwargs):
    """fa_cute.forward by the float64 reference, on any device, (b, n, h, d) layout."""
    from fa_cute._reference import attention_ref

    out, lse = attention_ref(q, k, v, q.shape[-1] ** -0.5, causal=causal, return_lse=True)
    out = out.to(q.dtype)
    return (out, lse.float()) if return_lse else out


@pytest.fixture
def fa_cute_without_backward(monkeypatch):
    """fa_cute as a build or head dim without the backward kernel: the forward runs (by the
    reference, on the CPU), fa_cute.backward raises as backward_config does."""
    def backward(*args, **kwargs):
        raise NotImplementedError("this build of fa_cute._C has no backward kernel")

    monkeypatch.setattr(fa_cute, "forward", _fake_forward)
    monkeypatch.setattr(fa_cute, "backward", backward)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)


SMALL = (1, 32, 32, 2, 2)


def test_fa_cute_without_backward_gets_dashes(fa_cute_without_backward, capsys) -> None:
    check = _timing.check_grads("fa_cute", _timing.fa_cute_grads, 64, dtype_name="bf16",
                                shape=SMALL, device="cpu")
    assert not check["ok"] and not check["wrong"]
    assert check["error"].startswith("NotImplementedError: this build")
    skip, wrong = bench.grad_skips([check])
    assert wrong is None and skip == {(64, False, "bf16", "fa_cute"): (check["error"], False)}
    assert capsys.readouterr().err.count("\n") == 1  # one stderr line says why
    record = _backward_record()
    bench.not_timed(record, "fa_cute", check["error"], False)
    row = bench.render([record], ["fa_cute"], ["FLASH"]).splitlines()[-1].split()
    assert row[4:7] == ["-", "300.0", "n/a"]  # fa_cute, FLASH, fa/FLASH
    sets = [tuple(torch.randn(1, 2, 32, 64, dtype=torch.bfloat16) for _ in range(3))]
    ms, why = _timing.time_grad_pass(None, sets, lambda fn: 1.0)
    assert ms is None and why.startswith("NotImplementedError")


def test_gradient_check_passes_right_and_catches_wrong_gradients() -> None:
    def sdpa(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    right = _timing.check_grads("math", _timing.autograd_grads(sdpa), 64, shape=SMALL,
                                device="cpu")
    assert right["ok"], right
    wrong = _timing.check_grads("x1.1", _timing.autograd_grads(lambda *t: 1.1 * sdpa(*t)), 64,
                                shape=SMALL, device="cpu")
    assert not wrong["ok"] and wrong["wrong"] and wrong["error"].startswith("dq")
    assert bench.grad_skips([right, wrong]) == ({}, "x1.1")
    assert "FAILED: dq" in _timing.grad_verdict(wrong)


def test_backward_timing_leaves_the_forward_out(monkeypatch) -> None:
    """--bwd times autograd.grad on a graph recorded once per input set; --fwdbwd reruns
    the forward in every timed call."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    calls = []

    def forward(q, k, v):
        calls.append(1)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    def timer(fn):
        before = len(calls)
        for _ in range(4):
            fn()
        return float(len(calls) - before)

    sets = [tuple(torch.randn(1, 2, 16, 32) for _ in range(3)) for _ in range(2)]
    assert _timing.time_grad_pass(forward, sets, timer, grad_pass="bwd") == (0.0, "")
    assert len(calls) == 2  # one forward per input set, before the timing
    assert _timing.time_grad_pass(forward, sets, timer, grad_pass="fwdbwd") == (4.0, "")


def test_grad_checks_cover_every_column(fa_cute_without_backward, capsys) -> None:
    """One check per column (fa_cute, SDPA's backends, FA4) per table; a column that cannot
    run is left out of the timing with a '-', FA4 on a head dim it does not take too."""
    def fa4(*args, **kwargs):
        raise AssertionError("FA4 is not called for a head dim it does not take")

    checks = bench.grad_checks(4, True, "bf16", fa4, SMALL, device="cpu")
    assert [c["config"] for c in checks] == ["fa_cute", *bench.GRAD_SDPA, _fa4.COLUMN]
    assert "head dims 8 to 256" in checks[-1]["error"] and not checks[-1]["wrong"]
    skip, wrong = bench.grad_skips(checks)
    assert wrong is None and {(4, True, "bf16", "fa_cute"), (4, True, "bf16", "FA4")} <= set(skip)
    assert capsys.readouterr().out.count("check gradients") == len(checks)


def _has_backward(head_dim: int) -> bool:
    return any(c["head_dim"] == head_dim for c in getattr(fa_cute._C, "backward_configs", list)())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("option, kind", [("--bwd", "backward"), ("--fwdbwd", "fwdbwd")])
def test_grad_pass_tables_on_a_gpu(option, kind, tmp_path) -> None:
    path = tmp_path / "grad.json"
    argv = [option, "--seqlens", "1024", "--causal", "both", "--warmup", "5", "--rep", "10",
            "--json", str(path)]
    assert bench.main(argv) == 0
    result = json.loads(path.read_text())
    assert result["grad_pass"] == option[2:] and len(result["rows"]) == 2
    for r in result["rows"]:
        assert r["kind"] == kind and r["tflops"]["FLASH"] > 0
        if _has_backward(128):
            assert r["tflops"]["fa_cute"] > 0
        else:
            assert r["tflops"]["fa_cute"] is None and "fa_cute" in r["dash"]
        if kind == "fwdbwd":
            # at least the gradients (the size of q, k and v) beyond the inputs
            grads_mib = 3 * r["batch"] * r["nheads"] * 1024 * 128 * 2 / 2**20
            for c in ("FLASH", "CUDNN") + (("fa_cute",) if _has_backward(128) else ()):
                assert r["peak_mib"][c] >= grads_mib, (c, r["peak_mib"])
        else:
            assert "peak_mib" not in r


# --fwdbwd's peak-memory table -----------------------------------------------------------------

def _fwdbwd_record() -> dict:
    return dict(_backward_record(), kind="fwdbwd",
                peak_mib={"fa_cute": 96.0, "FLASH": 120.0, "CUDNN": 128.4, "EFFICIENT": None})


def test_memory_table() -> None:
    columns = ["fa_cute", "FLASH", "CUDNN", "EFFICIENT"]
    title, header, rule, row = bench.render_memory([_fwdbwd_record()], columns).splitlines()
    assert title.startswith("peak memory (MiB) of one forward+backward beyond q, k, v and "
                            "dout, head dim 128, non-causal forward+backward")
    assert header.split() == ["dtype", "N", "B", "H", "fa_cute", "FLASH", "CUDNN",
                              "EFFICIENT", "fa/CUDNN", "fa/FLASH"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert row.split() == ["bf16", "4096", "4", "16", "96", "120", "128", "n/a", "0.75x",
                           "0.80x"]
    # a column the row never ran (not_timed's dash), and fa_cute without a number
    record = dict(_fwdbwd_record(), peak_mib={"FLASH": 120.0}, dash=["fa_cute"])
    row = bench.render_memory([record], ["fa_cute", "FLASH"]).splitlines()[-1].split()
    assert row == ["bf16", "4096", "4", "16", "-", "120", "n/a"]


class _FakeCuda:
    """torch.cuda's four memory functions over a counter that steps allocate from."""

    def __init__(self) -> None:
        self.allocated, self.peak, self.calls = 0, 0, []

    def synchronize(self) -> None:
        self.calls.append("synchronize")

    def reset_peak_memory_stats(self) -> None:
        self.calls.append("reset")
        self.peak = self.allocated

    def memory_allocated(self) -> int:
        return self.allocated

    def max_memory_allocated(self) -> int:
        return self.peak

    def allocate(self, nbytes: int) -> None:
        self.allocated += nbytes
        self.peak = max(self.peak, self.allocated)


def test_peak_memory_counts_the_second_call_beyond_what_was_there() -> None:
    cuda = _FakeCuda()
    cuda.allocate(500 * 2**20)  # the inputs
    sizes = iter([64 * 2**20, 3 * 2**20])  # a warm-up that allocates a workspace once

    def step():
        extra = next(sizes) + 2 * 2**20  # a transient buffer, freed before returning
        cuda.allocate(extra)
        cuda.allocate(-2 * 2**20)
        return extra

    assert bench.peak_memory_mib(step, cuda) == pytest.approx(5.0)
    assert cuda.calls == ["synchronize", "reset", "synchronize"]


def test_fwdbwd_peak_runs_forward_and_backward_in_the_context() -> None:
    cuda, seen = _FakeCuda(), []

    class Context:
        def __enter__(self):
            seen.append("enter")

        def __exit__(self, *exc):
            seen.append("exit")

    def forward(q, k, v):
        seen.append(q.requires_grad and k.requires_grad and v.requires_grad)
        cuda.allocate(2**20)
        return (q * k).sum(-1, keepdim=True) * v

    q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))
    assert bench.fwdbwd_peak_mib(forward, (q, k, v), Context(), cuda) == pytest.approx(1.0)
    assert seen == ["enter", True, True, "exit"] and not q.requires_grad

    def refusing(q, k, v):
        raise RuntimeError("no kernel for these inputs")

    assert bench.fwdbwd_peak_mib(refusing, (q, k, v), Context(), cuda) is None
