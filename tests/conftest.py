"""Shared test setup: the `cuda` marker, per-case seeding and random inputs.

Tests marked `cuda` are skipped, never failed, where PyTorch sees no CUDA GPU (CI has none);
everything else runs anywhere.
"""

import zlib
from typing import Callable, List, Tuple

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU; skipped when none is visible")


def pytest_collection_modifyitems(config: pytest.Config, items) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU visible to PyTorch")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _empty_tuning_cache(tmp_path_factory: pytest.TempPathFactory):
    """config="auto" reads an empty tuning cache in every test, never the user's own (whose
    picks would make results depend on the machine), and no test writes the user's."""
    from fa_cute import _cache

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FA_CUTE_CACHE_DIR", str(tmp_path_factory.mktemp("fa_cute_cache")))
        _cache.forget_tuning()
        yield
    _cache.forget_tuning()


@pytest.fixture(autouse=True)
def _seed_from_test_id(request: pytest.FixtureRequest) -> None:
    """Fresh inputs in every case, reproducible from the case's id (its params included)."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


Tensors = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def random_qkv(batch: int, seqlen: int, nheads: int, head_dim: int, dtype: torch.dtype,
               device: str, *, layout: str = "bnhd", magnitude: float = 1.0,
               offset: float = 0.0) -> Tensors:
    """Random q, k, v shaped (batch, seqlen, nheads, head_dim), never zeros.

    layout "bnhd": contiguous tensors; "bhnd": (batch, nheads, seqlen, head_dim) storage
    viewed with .transpose(1, 2), the way SDPA users hold their tensors. q and k are scaled
    by `magnitude` (a peaky softmax); `offset` is added to all three.
    """
    shape = {"bnhd": (batch, seqlen, nheads, head_dim),
             "bhnd": (batch, nheads, seqlen, head_dim)}[layout]
    scales = (magnitude, magnitude, 1.0)
    q, k, v = ((torch.randn(shape, device=device) * s + offset).to(dtype) for s in scales)
    if layout == "bhnd":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    return q, k, v


@pytest.fixture
def make_qkv() -> Callable[..., Tensors]:
    """`random_qkv`, as a fixture so that test modules need not import conftest."""
    return random_qkv


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> List[int]:
    """The seqlen_k of each full validation (`_validate.validate` called by
    `_cache.validate_cached`), on fresh validated-launch and launch-plan caches."""
    from fa_cute import _cache, _validate

    monkeypatch.setattr(_cache, "VALIDATED", {})
    monkeypatch.setattr(_cache, "PLANS", {})
    seen: List[int] = []
    validate = _validate.validate

    def counting(q, k, v, **kwargs):
        seen.append(k.shape[1])
        return validate(q, k, v, **kwargs)

    monkeypatch.setattr(_cache, "validate", counting)
    return seen


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU tensors pose as CUDA ones to the validation caches, which key CUDA tensors only:
    is_cuda True, a fake sm80 GPU for auto's pick, no device check."""
    from fa_cute import _configs, _validate

    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(_configs, "gpu_of", lambda index: ("fake GPU", (8, 0)))
    monkeypatch.setattr(_configs, "smem_limit_of", lambda index: None)
    monkeypatch.setattr(_validate, "check_devices", lambda *args, **kwargs: None)


@pytest.fixture
def reference_forward(monkeypatch: pytest.MonkeyPatch) -> list:
    """The forward kernel's results computed on CPU (the float64 reference written into the
    output and LSE, as the kernel would write them), without the device check; returns the
    launches (`_launch.Launch`) in order."""
    return install_reference_forward(monkeypatch)


def install_reference_forward(monkeypatch: pytest.MonkeyPatch) -> list:
    """`reference_forward`'s stand-in, for a caller without fixtures (a spawned process)."""
    from fa_cute import _api, _validate
    from fa_cute._reference import attention_ref

    monkeypatch.setattr(_validate, "check_devices", lambda *args, **kwargs: None)
    launches = []

    def launch(launch, q, k, v, out, lse, timed, sdpa_layout=False):
        launches.append(launch)
        if sdpa_layout:  # (batch, nheads, seqlen, headdim): forward's layout is the transpose
            q, k, v, out = (t.transpose(1, 2) for t in (q, k, v, out))
        window = (launch.window_left, launch.window_right)
        aligned = launch.is_causal or window != (-1, -1)
        o, l = attention_ref(q, k, v, launch.softmax_scale, causal=launch.is_causal,
                             causal_offset=launch.causal_offset if aligned else None,
                             return_lse=True, softcap=launch.softcap, window_size=window)
        out.copy_(o)
        if lse is not None:
            lse.copy_(l.reshape(lse.shape))
        return 0.0

    monkeypatch.setattr(_api, "launch_kernel", launch)
    return launches
