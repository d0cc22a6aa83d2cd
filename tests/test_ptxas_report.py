"""benchmarks/ptxas_report.py's parse of a ptxas -v log (CPU only): a kernel's spills are
its own "Function properties" lines, not those of a device function it calls, which ptxas
prints after the kernel's."""

import importlib.util
import pathlib

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "ptxas_report.py"
spec = importlib.util.spec_from_file_location("ptxas_report", SCRIPT)
ptxas_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ptxas_report)

LOG = """\
ptxas info    : Compiling entry function '_Z6kernelv' for 'sm_90a'
ptxas info    : Function properties for _Z6kernelv
    160 bytes stack frame, 468 bytes spill stores, 496 bytes spill loads
ptxas info    : Used 168 registers, used 16 barriers, 160 bytes cumulative stack size
ptxas info    : Compile time = 1.0 ms
ptxas info    : Function properties for _Z6calleev
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_Z5otherv' for 'sm_90a'
ptxas info    : Function properties for _Z5otherv
    0 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers
"""


def test_callee_properties_are_not_the_kernels() -> None:
    kernels = ptxas_report.parse(LOG)
    assert [(k["name"], k["regs"], k["spill_st"], k["spill_ld"]) for k in kernels] == [
        ("_Z6kernelv", 168, 468, 496), ("_Z5otherv", 32, 8, 4)]
