"""src/generated/ is what src/generate_kernels.py writes from its config table (the one
source of every config's name, family, tile and kind), and is committed: CMake, the
registry and the heuristic's table read those files, not the generator. No GPU needed."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_files_are_current() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "src" / "generate_kernels.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_generated_files_are_committed() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    run = subprocess.run(["git", "status", "--porcelain", "--", "src/generated"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "", f"src/generated/ differs from the last commit:\n{run.stdout}"
