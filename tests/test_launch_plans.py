"""Launch plans (`_cache.PLANS`, issue 14): a KV cache that grows by a key a step (the
README's `k_cache[:, :n]` decode loop) is validated in full once, then each new length is
derived from the plan, and the derived launch is exactly what `_validate.validate` would
return.

The caches key CUDA tensors only: here CPU tensors pose as CUDA ones (is_cuda True, a fake
GPU for auto's pick, no device check), as in tests/test_api_edges.py.
"""

from typing import Iterator, List

import pytest
import torch

import fa_cute
from fa_cute import _C, _cache, _configs, _validate

HEAD_DIM = fa_cute.configs()[0]["head_dim"]
BF16 = torch.bfloat16
B, HK, CAPACITY = 2, 2, 400
FULL_VALIDATE = _validate.validate  # the checks themselves, uncounted by the `checks` fixture


@pytest.fixture
def checks(fake_cuda, validations) -> Iterator[List[int]]:
    """The seqlen_k of each full validation under `_cache.validate_cached`, on fresh caches, with
    CPU tensors posing as CUDA ones (conftest's `fake_cuda`)."""
    # Tests change auto's inputs (the heuristic, the tuned pick): no pick outlives them.
    _configs.auto_config.cache_clear()
    yield validations
    _configs.auto_config.cache_clear()


def caches(capacity: int = CAPACITY, heads: int = HK):
    return (torch.randn(B, capacity, heads, HEAD_DIM).to(BF16),
            torch.randn(B, capacity, heads, HEAD_DIM).to(BF16))


def both(q, k, v, **kwargs):
    """(`_cache.validate_cached`'s launch, `_validate.validate`'s own for the same call)."""
    args = dict(causal=False, bottom_right=True, softmax_scale=None, config="auto", out=None)
    args.update(kwargs)
    return (_cache.validate_cached(q, k, v, **args), FULL_VALIDATE(q, k, v, **args))


@pytest.mark.parametrize("seqlen_q, nheads, causal", [
    (1, 8, False),   # GQA decode (packed)
    (1, 8, True),    # causal decode: the mask hides nothing, launched non-causal
    (1, 2, False),   # MHA decode
    (4, 8, True),    # a causal chunk (speculative decode, chunked prefill)
    (9, 2, False),
])
@pytest.mark.parametrize("config", ["auto", None, fa_cute.configs()[0]["name"]])
def test_growing_cache_is_validated_once(checks: List[int], seqlen_q: int, nheads: int,
                                         causal: bool, config) -> None:
    k_cache, v_cache = caches()
    q = torch.randn(B, seqlen_q, nheads, HEAD_DIM).to(BF16)
    for n in range(300, 340):
        cached, full = both(q, k_cache[:, :n], v_cache[:, :n], causal=causal, config=config)
        assert cached == full
        assert cached.seqlen_k == n
    assert checks == [300]


@pytest.mark.parametrize("is_causal", [False, True])
def test_growing_cache_through_sdpa(checks: List[int], is_causal: bool) -> None:
    """sdpa's top-left mask: from 2 keys on, one row sees some but not all (launched
    causal); a single key is masked by nothing (launched non-causal, no plan)."""
    k_cache, v_cache = (t.transpose(1, 2) for t in caches())
    query = torch.randn(B, 8, 3, HEAD_DIM).to(BF16)
    for n in range(1, 40):
        q, k, v = (t.transpose(1, 2) for t in (query, k_cache[:, :, :n], v_cache[:, :, :n]))
        cached, full = both(q, k, v, causal=is_causal, bottom_right=False,
                            names=_validate.SDPA_NAMES)
        assert cached == full
    # Length 1 (its seqlen stride reads as 0) makes no plan; length 2 does.
    assert checks == [1, 2]


def test_shrinking_and_jumping_lengths(checks: List[int]) -> None:
    """Any length covered by the plan, in any order, not only the next one."""
    k_cache, v_cache = caches()
    q = torch.randn(B, 1, 8, HEAD_DIM).to(BF16)
    for n in (300, 17, 399, 2, 250, 300):
        cached, full = both(q, k_cache[:, :n], v_cache[:, :n])
        assert cached == full
    assert checks == [300]


def test_a_pick_that_changes_with_the_length_is_validated(
        checks: List[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """auto's pick may depend on seqlen_k (on an H100 a short query takes the Hopper tile
    from 512 keys): the plan stands only while the pick is the plan's."""
    # A config auto may pick for these CPU tensors (the placeholder GPU is an sm80 one).
    base = next(c for c in fa_cute.configs()
                if c["head_dim"] == HEAD_DIM and c["family"] == "sm80" and c["rung"] is None)
    other = dict(base, name="other_tile")
    monkeypatch.setitem(_configs.CONFIGS, "other_tile", other)
    heuristic = _C.default_config

    def pick(head_dim, seqlen_q, seqlen_k, cc_major, cc_minor, causal=False):
        return "other_tile" if seqlen_k >= 320 else heuristic(head_dim, seqlen_q, seqlen_k,
                                                              cc_major, cc_minor, causal)

    monkeypatch.setattr(_C, "default_config", pick)
    k_cache, v_cache = caches()
    q = torch.randn(B, 1, 8, HEAD_DIM).to(BF16)
    configs = []
    for n in range(300, 340):
        cached, full = both(q, k_cache[:, :n], v_cache[:, :n])
        assert cached == full
        configs.append(cached.config)
    assert checks == [300, 320]
    # Below 320 keys, the heuristic's own pick (whichever tile that is in this build).
    assert configs[0] != "other_tile"
    assert configs == [configs[0]] * 20 + ["other_tile"] * 20


def test_a_tuned_pick_holds_for_every_length(checks: List[int],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A pick of the tuning cache or table keys on seqlen_q alone: no heuristic is asked."""
    name = fa_cute.configs()[0]["name"]
    monkeypatch.setattr(_configs, "tuned_pick", lambda *args: _configs.CONFIGS[name])
    monkeypatch.setattr(_C, "default_config", None)  # any call would fail
    k_cache, v_cache = caches()
    q = torch.randn(B, 1, 8, HEAD_DIM).to(BF16)
    for n in range(300, 310):
        cached = _cache.validate_cached(q, k_cache[:, :n], v_cache[:, :n], causal=False,
                                        bottom_right=True, softmax_scale=None, config="auto",
                                        out=None)
        assert cached.config == name and cached.seqlen_k == n
    assert checks == [300]


def test_k_and_v_of_different_lengths_are_refused(checks: List[int]) -> None:
    k_cache, v_cache = caches()
    q = torch.randn(B, 1, 8, HEAD_DIM).to(BF16)
    both(q, k_cache[:, :300], v_cache[:, :300])
    with pytest.raises(ValueError, match=r"^k and v must have the same shape"):
        _cache.validate_cached(q, k_cache[:, :301], v_cache[:, :302], causal=False,
                               bottom_right=True, softmax_scale=None, config="auto", out=None)


def test_a_length_past_the_bound_is_refused(checks: List[int]) -> None:
    """Expanded (stride 0, no memory) K/V can claim any length: the bound is checked."""
    limit = _validate.LIMITS["max_seqlen"]
    k, v = (torch.randn(B, 1, HK, HEAD_DIM).to(BF16) for _ in range(2))
    q = torch.randn(B, 1, 8, HEAD_DIM).to(BF16)
    both(q, k.expand(B, 300, HK, HEAD_DIM), v.expand(B, 300, HK, HEAD_DIM))
    big = (B, limit + 1, HK, HEAD_DIM)
    with pytest.raises(ValueError, match=rf"^seqlen of k and v is {limit + 1}; at most {limit}"):
        _cache.validate_cached(q, k.expand(big), v.expand(big), causal=False, bottom_right=True,
                               softmax_scale=None, config="auto", out=None)


def test_a_length_past_the_storage_is_refused(checks: List[int]) -> None:
    """Each derived length checks its storage, as every hit does."""
    k_cache, v_cache = caches()
    q = torch.randn(B, 1, 8, HEAD_DIM).to(BF16)
    both(q, k_cache[:, :300], v_cache[:, :300])
    k = k_cache[:, :350]
    k.untyped_storage().resize_(k.untyped_storage().nbytes() // 2)
    with pytest.raises(ValueError, match=r"^k reaches byte \d+ of its storage"):
        _cache.validate_cached(q, k, v_cache[:, :350], causal=False, bottom_right=True,
                               softmax_scale=None, config="auto", out=None)


def test_the_plan_cache_is_bounded_and_forgotten(checks: List[int]) -> None:
    k_cache, v_cache = caches(capacity=_cache.VALIDATED_MAX + 50)
    q = torch.randn(B, 1, 8, HEAD_DIM).to(BF16)
    for n in range(2, _cache.VALIDATED_MAX + 40):
        _cache.validate_cached(q, k_cache[:, :n], v_cache[:, :n], causal=False,
                               bottom_right=True, softmax_scale=None, config="auto", out=None)
    assert checks == [2]
    # The oldest lengths went first; the newest are kept.
    assert len(_cache.VALIDATED) == _cache.VALIDATED_MAX and len(_cache.PLANS) == 1
    _cache.forget_tuning()
    assert not _cache.VALIDATED and not _cache.PLANS


def test_no_plan_for_tensors_that_are_not_4d() -> None:
    """A launch key of k or v with fewer than 2 dims (which `_validate.validate` then refuses,
    naming it) has no plan key; looking one up once raised IndexError out of forward."""
    def part(shape):
        return (BF16, torch.Size(shape), (), torch.device("cpu"), torch.strided, False, 0)

    q4 = part((2, 1, 8, HEAD_DIM))
    for k_shape, v_shape in [((), (2, 5, 2, HEAD_DIM)), ((2, 5, 2, HEAD_DIM), (3,)),
                             ((2, 5, 2), (2, 5, 2, HEAD_DIM))]:
        assert _cache.plan_key((q4, part(k_shape), part(v_shape), bool, False)) is None
    assert _cache.plan_key((q4, part((2, 5, 2, HEAD_DIM)), part((2, 5, 2, HEAD_DIM)))) is not None
