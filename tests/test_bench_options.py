"""`python -m fa_cute.bench`'s causal, multi-head-dim and decode options without a GPU: option
parsing and errors, FLOP and byte counts, the tables' titles and cells, the plot's files.
(tests/test_cli.py covers the options that predate these.)"""

import pytest

from fa_cute import _timing, bench


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
    assert row.split() == ["bf16", "2048", "8", "16", "200.0", "250.0", "n/a", "0.80x", "n/a",
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
                              "fa_cute", "GB/s", "FLASH", "GB/s", "CUDNN", "GB/s", "fa/FLASH",
                              "fa/CUDNN", "fa_cute", "config"]
    assert row.split() == ["fp16", "4096", "500.0", "625.0", "n/a", "2000", "1600", "n/a",
                           "1.25x", "n/a", "sm80_m64n64w4_d128"]
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
