"""The build's self-description: `configs()`, `_C.default_config`, `_C.build_info` and
`python -m fa_cute.info`. Runs anywhere: none of it needs a GPU."""

import os
import re
import subprocess
import sys

import pytest
import torch

import fa_cute
from fa_cute import _C

KEYS = {"name", "family", "head_dim", "block_m", "block_n", "num_warps", "dtypes", "rung",
        "varlen", "description", "smem_bytes"}


def test_configs_describe_the_built_kernels() -> None:
    configs = fa_cute.configs()
    assert isinstance(configs, list) and configs
    for c in configs:
        assert isinstance(c, dict) and set(c) == KEYS, c
        assert isinstance(c["varlen"], bool), c
        assert re.fullmatch(r"sm\d+a?", c["family"]), c
        assert c["rung"] is not None or c["name"].startswith(c["family"].rstrip("a")), c
        assert c["head_dim"] > 0 and c["head_dim"] % 8 == 0, c
        assert c["block_m"] > 0 and c["block_n"] > 0 and c["num_warps"] > 0, c
        assert c["dtypes"] and set(c["dtypes"]) <= {"bf16", "fp16"}, c
        assert (c["rung"] is None) != c["name"].startswith("ladder"), c
        assert c["rung"] is None or (isinstance(c["rung"], int) and c["rung"] >= 1), c
        assert isinstance(c["description"], str) and c["description"], c
        # At least a K and a V tile of 2-byte elements (a smaller number would let auto pick
        # a config the GPU cannot hold), at most the 227 KiB a block of any GPU so far may
        # opt in to (sm_90, sm_100).
        assert isinstance(c["smem_bytes"], int), c
        assert 2 * c["block_n"] * c["head_dim"] * 2 <= c["smem_bytes"] <= 227 * 1024, c
    names = [c["name"] for c in configs]
    assert len(set(names)) == len(names), names
    assert names == sorted(names), "configs() is sorted by name (docs/design.md)"


def test_configs_returns_a_copy() -> None:
    fa_cute.configs()[0]["block_m"] = -1
    fa_cute.configs()[0]["dtypes"].append("fp8")
    c = fa_cute.configs()[0]
    assert c["block_m"] > 0 and "fp8" not in c["dtypes"]


@pytest.mark.parametrize("cc", [(8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)])
def test_default_config_is_built(cc) -> None:
    by_name = {c["name"]: c for c in fa_cute.configs()}
    for head_dim in sorted({c["head_dim"] for c in by_name.values()}):
        for seqlen_q, seqlen_k in ((1, 4096), (4, 4096), (100, 100), (128, 128), (1024, 1024),
                                   (4096, 4096), (16384, 16384), (16384, 1)):
            name = _C.default_config(head_dim, seqlen_q, seqlen_k, *cc)
            assert name in by_name, (head_dim, seqlen_q, seqlen_k, cc, name)
            assert by_name[name]["head_dim"] == head_dim, (head_dim, name)
            assert by_name[name]["rung"] is None, f"the heuristic picked ladder config {name}"


def test_default_config_for_h100_at_4096() -> None:
    assert _C.default_config(128, 4096, 4096, 9, 0) in {c["name"] for c in fa_cute.configs()}


def test_default_config_rejects_unbuilt_head_dim() -> None:
    with pytest.raises(ValueError):
        _C.default_config(24, 4096, 4096, 9, 0)


def test_unknown_config_name() -> None:
    c = fa_cute.configs()[0]
    q = torch.randn(1, c["block_m"], 1, c["head_dim"]).to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"config 'no_such_config' is not built; built configs: "
                                         + c["name"]):
        fa_cute.forward(q, q, q, config="no_such_config")


def test_build_info() -> None:
    info = _C.build_info()
    assert set(info) >= {"version", "archs", "cutlass_version", "cuda_version"}
    assert info["version"] == fa_cute.__version__
    assert info["cutlass_version"].split(".")[0].isdigit(), info
    assert info["archs"], info


def test_info_module_runs() -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    run = subprocess.run([sys.executable, "-m", "fa_cute.info"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert f"fa_cute {fa_cute.__version__}" in out
    assert f"CUTLASS {_C.build_info()['cutlass_version']}" in out
    for c in fa_cute.configs():
        assert c["name"] in out
    if torch.cuda.is_available():
        assert torch.cuda.get_device_name(0) in out
    else:
        assert "no CUDA GPU visible" in out


def test_import_without_torch_says_what_to_install() -> None:
    """pip does not install torch for fa_cute, so its absence must be an actionable error."""
    code = "import sys; sys.modules['torch'] = None; import fa_cute"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "fa_cute needs PyTorch" in run.stderr and "pip install torch" in run.stderr, run.stderr


def test_sm80_fallback_without_an_sm80_config_names_the_reason(monkeypatch) -> None:
    """An input only the Ampere-style kernel takes (an expanded tensor, a softcap at Hopper's
    d=256), in a build without an sm80 config of its head dim: a ValueError that says why and
    what is missing, not the C++ heuristic's 'head_dim not supported' of a built head dim."""
    from fa_cute import _configs

    head_dim = next(iter(fa_cute.configs()))["head_dim"]
    without = {name: c for name, c in _configs.CONFIGS.items()
               if not (c["family"] == "sm80" and c["head_dim"] == head_dim)}
    monkeypatch.setattr(_configs, "CONFIGS", without)
    with pytest.raises(ValueError, match=rf"^k has stride 0 .*: this build has no config of the "
                                         rf"Ampere-style \(sm80\) kernel.*head_dim {head_dim} "):
        _configs.sm80_default(head_dim, 128, 128, False, "k has stride 0 in its nheads dim")
