"""benchmarks/ncu_summary.py on a small Nsight Compute source export (CPU only)."""

import importlib.util
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "ncu_summary.py"
spec = importlib.util.spec_from_file_location("ncu_summary", SCRIPT)
ncu_summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ncu_summary)

HEADER = ('"Address","Source","Warp Stall Sampling (All Samples)","Instructions Executed",'
          '"stall_barrier","stall_wait","stall_barrier (Not Issued)"')
ROWS = [
    '"0x10","  HGMMA.64x128x16.F32.BF16 R24, gdesc[UR16], R24","10","8","1","9","1"',
    '"0x20","@!P0 MUFU.EX2 R3, R4","30","64","0","30","0"',
    '"0x30","  WARPGROUP.DEPBAR.LE gsb0, 0x0","60","8","60","0","0"',
]


def test_summary_counts(tmp_path) -> None:
    path = tmp_path / "k.sass.csv"
    path.write_text('"Kernel Name","my_kernel",\n' + HEADER + "\n" + "\n".join(ROWS) + "\n")
    text = ncu_summary.summarise(str(path), top=2)
    lines = text.splitlines()
    assert "my_kernel" in lines[0] and "100 samples" in lines[0]
    assert lines[1] == "  stall reasons (% of samples): barrier 61.0, wait 39.0"
    assert lines[2] == "  samples by opcode: WARPGROUP 60.0%, MUFU 30.0%, HGMMA 10.0%"
    assert lines[3] == "  executed warp-instructions 80: MUFU 80.0%, HGMMA 10.0%, WARPGROUP 10.0%"
    assert "60.00% WARPGROUP.DEPBAR" in lines[4] and "30.00% @!P0 MUFU.EX2" in lines[5]
    assert len(lines) == 6


def test_rejects_another_export(tmp_path) -> None:
    path = tmp_path / "details.csv"
    path.write_text('"ID","Metric Name"\n"0","Duration"\n')
    with pytest.raises(ValueError, match="--print-source sass"):
        ncu_summary.summarise(str(path))
