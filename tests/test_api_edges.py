"""Edge cases of the Python layer (issue 13) on CPU tensors: a bad `out` on grouped-query
decode shapes, tensors whose storage was freed or shrunk, negated and conjugate views, and
what the validated-launch cache must not let through for any of them.

The device is checked last, so a CPU call that passes every other check fails with
"is on cpu"; a test that expects another error therefore shows that check fired first.
"""

import math
from typing import Callable, List

import pytest
import torch

import fa_cute
from fa_cute import _cache, _launch

CONFIGS = fa_cute.configs()
HEAD_DIM = CONFIGS[0]["head_dim"]
BF16 = torch.bfloat16
BATCH, SEQ_K = 2, 37
# A one-row grouped-query decode (the launch packs it: 8 query heads, 2 K/V heads) and an
# ordinary prefill shape, on which the same bad out must fail the same way.
DECODE_Q, DECODE_KV = (BATCH, 1, 8, HEAD_DIM), (BATCH, SEQ_K, 2, HEAD_DIM)
PREFILL_Q, PREFILL_KV = (BATCH, SEQ_K, 2, HEAD_DIM), (BATCH, SEQ_K, 2, HEAD_DIM)


def randn(*shape: int, dtype: torch.dtype = BF16) -> torch.Tensor:
    return torch.randn(shape).to(dtype)


def freed(t: torch.Tensor) -> torch.Tensor:
    """t with its storage freed the way FSDP frees a sharded parameter's."""
    t.untyped_storage().resize_(0)
    return t


def qkv(q_shape, kv_shape):
    return randn(*q_shape), randn(*kv_shape), randn(*kv_shape)


# Bad outs, as functions of q: (id, make out, exception, message pattern).
BAD_OUTS = [
    ("list", lambda q: [0.0], TypeError, r"^out must be a torch\.Tensor; got list$"),
    ("int", lambda q: 3, TypeError, r"^out must be a torch\.Tensor; got int$"),
    ("1-d", lambda q: randn(q.numel()), ValueError, r"^out has shape \(\d+,\); it must match q"),
    ("3-d", lambda q: randn(*q.shape[1:]), ValueError, r"^out has shape .*; it must match q"),
    ("5-d", lambda q: randn(1, *q.shape), ValueError, r"^out has shape .*; it must match q"),
    ("0-d", lambda q: torch.tensor(1.0, dtype=BF16), ValueError,
     r"^out has shape \(\); it must match q"),
    ("fp16", lambda q: randn(*q.shape, dtype=torch.float16), TypeError,
     r"^out has dtype torch\.float16; it must match q \(torch\.bfloat16\)$"),
    ("complex-conj", lambda q: torch.randn(q.shape, dtype=torch.complex64).conj(), TypeError,
     r"^out has dtype torch\.complex64; it must match q"),
    ("sparse", lambda q: torch.zeros(q.shape, dtype=BF16).to_sparse(), TypeError,
     r"^out must be a dense \(strided\) torch\.Tensor; got layout torch\.sparse_coo$"),
    ("nested", lambda q: torch.nested.nested_tensor([randn(*q.shape[1:])] * q.shape[0]),
     TypeError, r"^out must be a dense \(strided\) torch\.Tensor; got a nested tensor$"),
    ("neg-view", lambda q: randn(*q.shape)._neg_view(), ValueError,
     r"^out is a negated view \(is_neg\(\) is True\).*call \.resolve_neg\(\) on it$"),
    ("freed", lambda q: freed(randn(*q.shape)), ValueError,
     rf"^out reaches byte (?:{2 * math.prod(DECODE_Q)}|{2 * math.prod(PREFILL_Q)}) of its storage, "
     r"which holds 0 bytes"),
    ("strided-last-dim", lambda q: randn(*q.shape[:-1], 2 * q.shape[-1])[..., ::2], ValueError,
     r"^out must have a contiguous last dim"),
    ("expanded", lambda q: randn(q.shape[0], 1, 1, q.shape[3]).expand(q.shape), ValueError,
     r"^out has elements that share memory"),
]


@pytest.mark.parametrize("shape", ["decode-gqa", "prefill"])
@pytest.mark.parametrize("make_out, exc, pattern", [c[1:] for c in BAD_OUTS],
                         ids=[c[0] for c in BAD_OUTS])
def test_bad_out_fails_alike_on_every_shape(shape: str, make_out: Callable, exc: type,
                                            pattern: str) -> None:
    """The packing decision of a grouped-query decode reads out's strides: it used to read
    them before out was checked at all (AttributeError on a list, IndexError on a 1-D
    tensor)."""
    q, k, v = qkv(*((DECODE_Q, DECODE_KV) if shape == "decode-gqa" else (PREFILL_Q, PREFILL_KV)))
    with pytest.raises(exc, match=pattern):
        fa_cute.forward(q, k, v, out=make_out(q))


def test_good_out_on_decode_shape_reaches_the_device_check() -> None:
    q, k, v = qkv(DECODE_Q, DECODE_KV)
    with pytest.raises(ValueError, match=r"^q is on cpu"):
        fa_cute.forward(q, k, v, out=randn(*DECODE_Q))


# Freed and shrunk storages.

@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_freed_storage_is_refused(name: str) -> None:
    tensors = dict(zip("qkv", qkv(PREFILL_Q, PREFILL_KV)))
    freed(tensors[name])
    assert tensors[name].data_ptr() == 0  # what the kernel would have been handed
    nbytes = 2 * math.prod(PREFILL_Q)
    with pytest.raises(ValueError, match=rf"^{name} reaches byte {nbytes} of its storage, which "
                                         r"holds 0 bytes \(a storage freed with "
                                         r"\.untyped_storage\(\)\.resize_\(0\), as FSDP does"):
        fa_cute.forward(**tensors)


def test_freed_storage_of_an_offset_view_is_refused() -> None:
    """A view into a freed buffer has a data_ptr of its offset, not 0: the check is on the
    storage's size, not on the pointer."""
    n = math.prod(PREFILL_KV)
    buf = randn(3 * n)
    k = buf[n:2 * n].view(PREFILL_KV)
    freed(buf)
    assert k.data_ptr() == 2 * n
    with pytest.raises(ValueError, match=rf"^k reaches byte {4 * n} of its storage, which holds "
                                         r"0 bytes"):
        fa_cute.forward(randn(*PREFILL_Q), k, randn(*PREFILL_KV))


def test_shrunk_storage_is_refused() -> None:
    v = randn(*PREFILL_KV)
    nbytes = v.untyped_storage().nbytes()
    v.untyped_storage().resize_(nbytes - 16)  # the last 8 elements gone
    with pytest.raises(ValueError, match=rf"^v reaches byte {nbytes} of its storage, which holds "
                                         rf"{nbytes - 16} bytes"):
        fa_cute.forward(randn(*PREFILL_Q), randn(*PREFILL_KV), v)


def test_sdpa_names_its_freed_argument() -> None:
    query, key, value = (t.transpose(1, 2) for t in qkv(PREFILL_Q, PREFILL_KV))
    freed(value)
    with pytest.raises(ValueError, match=r"^value reaches byte \d+ of its storage, which holds 0"):
        fa_cute.sdpa(query, key, value)


def test_empty_and_meta_tensors_need_no_storage() -> None:
    """An empty problem reads nothing (its storage may hold 0 bytes), and a meta tensor's
    storage reports the size it would have: both pass on to the device check."""
    q, k, v = qkv((0, 5, 2, HEAD_DIM), (0, 5, 2, HEAD_DIM))
    assert q.untyped_storage().nbytes() == 0
    with pytest.raises(ValueError, match=r"^q is on cpu"):
        fa_cute.forward(q, k, v)
    q, k, v = (torch.empty(PREFILL_Q, dtype=BF16, device="meta") for _ in range(3))
    with pytest.raises(ValueError, match=r"^q is on meta"):
        fa_cute.forward(q, k, v)


# Negated and conjugate views.

@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_neg_view_is_refused(name: str) -> None:
    tensors = dict(zip("qkv", qkv(PREFILL_Q, PREFILL_KV)))
    tensors[name] = tensors[name]._neg_view()
    with pytest.raises(ValueError, match=rf"^{name} is a negated view \(is_neg\(\) is True\), "
                                         r"whose values the kernel would read un-negated; call "
                                         r"\.resolve_neg\(\) on it$"):
        fa_cute.forward(**tensors)
    tensors[name] = tensors[name].resolve_neg()
    with pytest.raises(ValueError, match=r"^q is on cpu"):
        fa_cute.forward(**tensors)


def test_sdpa_names_its_neg_view() -> None:
    query, key, value = (t.transpose(1, 2) for t in qkv(PREFILL_Q, PREFILL_KV))
    with pytest.raises(ValueError, match=r"^key is a negated view"):
        fa_cute.sdpa(query, key._neg_view(), value)


@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_conj_views_are_complex_and_refused_by_dtype(name: str) -> None:
    """Only complex tensors carry a conjugate bit (a real tensor's conj() is itself)."""
    assert not randn(2).conj().is_conj()
    tensors = dict(zip("qkv", qkv(PREFILL_Q, PREFILL_KV)))
    tensors[name] = torch.randn(tensors[name].shape, dtype=torch.complex64).conj()
    assert tensors[name].is_conj()
    with pytest.raises(TypeError, match=rf"^{name} has dtype torch\.complex64"):
        fa_cute.forward(**tensors)


# The validated-launch cache. It keys only CUDA tensors: here CPU tensors pose as CUDA ones
# (is_cuda True, a fake GPU for auto's pick, no device check), so that a second call of a
# shape is answered from the cache, as it would be on a GPU.

@pytest.fixture
def cached(fake_cuda, validations: List[int]) -> List[int]:
    """The full validations under `_cache.validate_cached` (conftest's `validations`), on fresh
    caches, with CPU tensors posing as CUDA ones (conftest's `fake_cuda`)."""
    return validations


def validate_cached(q, k, v) -> _launch.Launch:
    return _cache.validate_cached(q, k, v, causal=False, bottom_right=True, softmax_scale=None,
                                  config="auto", out=None)


def test_cache_answers_a_repeated_shape(cached: List[int]) -> None:
    """The premise of the tests below: a second call of a shape skips the checks."""
    first = validate_cached(*qkv(DECODE_Q, DECODE_KV))
    again = validate_cached(*qkv(DECODE_Q, DECODE_KV))
    assert again == first and first.packed
    assert len(cached) == 1 and len(_cache.VALIDATED) == 1


@pytest.mark.parametrize("name", ["q", "k", "v"])
@pytest.mark.parametrize("how", ["freed", "shrunk"])
def test_cache_hit_still_checks_the_storage(cached: List[int], name: str, how: str) -> None:
    """The key holds data_ptr() % 16, which is 0 for a freed tensor: a hit must not skip
    the storage check."""
    validate_cached(*qkv(DECODE_Q, DECODE_KV))
    tensors = dict(zip("qkv", qkv(DECODE_Q, DECODE_KV)))
    storage = tensors[name].untyped_storage()
    storage.resize_(0 if how == "freed" else storage.nbytes() - 16)
    with pytest.raises(ValueError, match=rf"^{name} reaches byte \d+ of its storage"):
        validate_cached(**tensors)
    assert len(cached) == 2


def test_cache_hit_still_refuses_a_neg_view(cached: List[int]) -> None:
    q, k, v = qkv(DECODE_Q, DECODE_KV)
    validate_cached(q, k, v)
    with pytest.raises(ValueError, match=r"^k is a negated view"):
        validate_cached(q, k._neg_view(), v)
    assert len(cached) == 2


def test_cache_hits_a_window_sliding_through_one_buffer(cached: List[int]) -> None:
    """The storage check is per call, not in the key: a fixed-length window moving through a
    fixed buffer (a ring KV cache) keeps hitting, and a window past the buffer's end (its
    storage shrunk under it) does not."""
    buf_k, buf_v = randn(BATCH, 4 * SEQ_K, 2, HEAD_DIM), randn(BATCH, 4 * SEQ_K, 2, HEAD_DIM)
    q = randn(*DECODE_Q)
    for start in range(0, 3 * SEQ_K, 8):
        validate_cached(q, buf_k[:, start:start + SEQ_K], buf_v[:, start:start + SEQ_K])
    assert len(cached) == 1
    k = buf_k[:, -SEQ_K:]
    buf_k.untyped_storage().resize_(buf_k.untyped_storage().nbytes() // 2)
    with pytest.raises(ValueError, match=r"^k reaches byte \d+ of its storage"):
        validate_cached(q, k, buf_v[:, :SEQ_K])


# Sizes beyond what the kernels take: stride-0 expanded tensors, so no memory.

LIMITS = fa_cute._C.limits()
MAX_LEN = LIMITS["max_seqlen"]


def expanded(*shape: int) -> torch.Tensor:
    return torch.zeros(1, 1, 1, shape[3], dtype=BF16).expand(shape)


@pytest.mark.parametrize("what, q_shape, kv_shape, n", [
    ("batch of q", (MAX_LEN + 1, 1, 1, HEAD_DIM), (MAX_LEN + 1, 4, 1, HEAD_DIM), MAX_LEN + 1),
    ("seqlen of q", (1, 2**31, 1, HEAD_DIM), (1, 4, 1, HEAD_DIM), 2**31),
    ("seqlen of k and v", (1, 4, 1, HEAD_DIM), (1, MAX_LEN + 1, 1, HEAD_DIM), MAX_LEN + 1),
    ("nheads of q", (1, 4, 2**32, HEAD_DIM), (1, 4, 1, HEAD_DIM), 2**32),
    # An empty problem (batch 0) launches nothing, but reaches _C's config heuristic.
    ("nheads of q", (0, 4, 2**31, HEAD_DIM), (0, 4, 2**31, HEAD_DIM), 2**31),
])
def test_lengths_beyond_the_kernels_are_refused(what: str, q_shape, kv_shape, n: int) -> None:
    """Past 2^31 pybind11 used to refuse the call with a dump of _C's signature."""
    with pytest.raises(ValueError, match=rf"^{what} is {n}; at most {MAX_LEN} is supported "
                                         r"\(the kernels index in 32 bits: "
                                         r"fa_cute\._C\.limits\(\)\['max_seqlen'\]\)$"):
        fa_cute.forward(expanded(*q_shape), expanded(*kv_shape), expanded(*kv_shape))


def test_nheads_of_kv_beyond_the_kernels_is_refused() -> None:
    """q's heads at the bound, k's and v's past it: named as such, before the rule that q's
    be a multiple of theirs."""
    q = torch.empty_strided((1, 1, MAX_LEN, HEAD_DIM), (0, 0, 0, 1), dtype=BF16, device="meta")
    kv = torch.empty_strided((1, 1, MAX_LEN + 1, HEAD_DIM), (0, 0, 0, 1), dtype=BF16,
                             device="meta")
    with pytest.raises(ValueError, match=rf"^nheads of k and v is {MAX_LEN + 1}; at most "
                                         rf"{MAX_LEN} is supported"):
        fa_cute.forward(q, kv, kv)


def test_batch_times_nheads_beyond_the_tiles_is_refused() -> None:
    max_tiles = LIMITS["max_tiles"]
    batch = max_tiles // 64 + 1
    q = expanded(batch, 1, 64, HEAD_DIM)
    with pytest.raises(ValueError, match=rf"^batch \* nheads of q is {batch} \* 64 = "
                                         rf"{batch * 64}; at most {max_tiles} is supported"):
        fa_cute.forward(q, expanded(batch, 4, 8, HEAD_DIM), expanded(batch, 4, 8, HEAD_DIM))


def test_lengths_at_the_bound_pass_to_the_device_check() -> None:
    q = expanded(1, MAX_LEN, 2, HEAD_DIM)
    kv = expanded(1, MAX_LEN, 1, HEAD_DIM)
    with pytest.raises(ValueError, match=r"^q is on cpu"):
        fa_cute.forward(q, kv, kv, causal=True)
    with pytest.raises(ValueError, match=r"^query is on cpu"):
        fa_cute.sdpa(q.transpose(1, 2), kv.transpose(1, 2), kv.transpose(1, 2), enable_gqa=True)


def test_sdpa_names_its_huge_length() -> None:
    query = expanded(1, 2, 2**31, HEAD_DIM)  # sdpa's (batch, nheads, seqlen, headdim)
    key = expanded(1, 2, 4, HEAD_DIM)
    with pytest.raises(ValueError, match=r"^seqlen of query is 2147483648; at most"):
        fa_cute.sdpa(query, key, key)
