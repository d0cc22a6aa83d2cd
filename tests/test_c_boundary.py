"""fa_cute._C called directly, with nonsense: every call must raise ValueError naming the
argument, never launch (issue 13, "The C++ layer trusts its caller").

The integer checks run before any CUDA call, so everything not marked `cuda` runs on CI
without a GPU. Those tests pass fake, well-aligned pointers: a valid call built from them
passes every integer check and only then fails, on CUDA (`assert_reaches_cuda`), which is
what makes each nonsense case's ValueError the work of the check under test. The `cuda`
tests pass real tensors' pointers, and pointers just outside them.
"""

import math
import os
from typing import Callable, Dict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fa_cute
from fa_cute import _C

CONFIG = _C.configs()[0]
NAME, DTYPE = CONFIG["name"], CONFIG["dtypes"][0]
D, BLOCK_M, BLOCK_N = CONFIG["head_dim"], CONFIG["block_m"], CONFIG["block_n"]
LIMITS = _C.limits()
MAX_SEQLEN = LIMITS["max_seqlen"]
INT_MAX = 2**31 - 1
# Fake device addresses: 16-byte aligned and far apart. No CUDA allocation holds them.
FAKE = 0x7E00_0000_0000
B, SQ, SK, H, HK = 2, 100, 300, 4, 2


def strides(seqlen: int, heads: int):
    return (seqlen * heads * D, heads * D, D)


def forward_args(**changes) -> Dict:
    """`_C.forward`'s keyword arguments for a valid problem on fake pointers, changed."""
    args = dict(config=NAME, dtype=DTYPE, q=FAKE, k=FAKE + 2**32, v=FAKE + 2 * 2**32,
                o=FAKE + 3 * 2**32, lse=0, batch=B, seqlen_q=SQ, seqlen_k=SK, nheads=H,
                nheads_k=HK, head_dim=D, q_strides=strides(SQ, H), k_strides=strides(SK, HK),
                v_strides=strides(SK, HK), o_strides=strides(SQ, H), softmax_scale=D**-0.5,
                is_causal=False, causal_offset=0, softcap=0.0, window_left=-1, window_right=-1,
                device=0, stream=0, timed=False,
                num_splits=1, o_accum=0, lse_accum=0)
    args.update(changes)
    return args


def num_splits_args(**changes) -> Dict:
    args = dict(config=NAME, dtype=DTYPE, batch=B, seqlen_q=SQ, seqlen_k=SK, nheads=H,
                nheads_k=HK, is_causal=False, device=0)
    args.update(changes)
    return args


def assert_reaches_cuda(call: Callable[[], object]) -> None:
    """call passes every integer check: it fails only on CUDA, either because there is none
    (RuntimeError) or because its fake pointers are no allocation (ValueError)."""
    with pytest.raises((RuntimeError, ValueError)) as info:
        call()
    if info.type is ValueError:
        assert "not in a CUDA device allocation" in str(info.value), str(info.value)


def assert_rejects(match: str, call: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_baselines_pass_the_integer_checks():
    assert_reaches_cuda(lambda: _C.forward(**forward_args()))
    assert_reaches_cuda(lambda: _C.forward(**forward_args(is_causal=True, causal_offset=SK - SQ)))
    assert_reaches_cuda(lambda: _C.forward(**forward_args(softcap=30.0)))
    assert_reaches_cuda(lambda: _C.forward(**forward_args(window_left=MAX_SEQLEN, window_right=0,
                                                          causal_offset=SK - SQ)))
    if torch.cuda.is_available():  # num_splits takes no pointer: on a GPU it answers
        assert 1 <= _C.num_splits(**num_splits_args()) <= LIMITS["max_splits"]
    else:
        assert_reaches_cuda(lambda: _C.num_splits(**num_splits_args()))
    # The largest lengths limits() admits, with K and V expanded along seqlen.
    assert_reaches_cuda(lambda: _C.forward(**forward_args(
        seqlen_k=MAX_SEQLEN, k_strides=(0, 0, D), v_strides=(0, 0, D), is_causal=True,
        causal_offset=MAX_SEQLEN - SQ)))
    assert_reaches_cuda(lambda: _C.forward(**forward_args(
        batch=1, seqlen_q=MAX_SEQLEN, q_strides=strides(MAX_SEQLEN, H),
        o_strides=strides(MAX_SEQLEN, H), causal_offset=-MAX_SEQLEN, is_causal=True)))


def test_limits():
    assert LIMITS["max_splits"] == 128
    # Every int32 sum of the kernels: a length plus a block, a row plus causal_offset plus
    # blocks (blocks are at most 256 rows).
    assert MAX_SEQLEN + LIMITS["max_causal_offset"] + 3 * 256 <= INT_MAX
    for c in _C.configs():
        assert MAX_SEQLEN + c["block_n"] - 1 <= INT_MAX
        assert MAX_SEQLEN + c["block_m"] - 1 <= INT_MAX
    assert 2 * LIMITS["max_tiles"] <= INT_MAX + 1
    # backward's dq_accum rows per (batch, head): whole query blocks of every config.
    for c in getattr(_C, "backward_configs", list)():
        assert LIMITS["dq_accum_row_align"] % c["block_m"] == 0, c["name"]
    assert MAX_SEQLEN + LIMITS["dq_accum_row_align"] - 1 <= INT_MAX


# The review's nonsense calls and more: (the argument a message names, changes).
WRAP_KEYS = [2**31 - BLOCK_N + 1, 2**31 - BLOCK_N // 2, INT_MAX]
FORWARD_CASES = [
    ("q", dict(q=0)), ("k", dict(k=0)), ("v", dict(v=0)), ("out", dict(o=0)),
    ("q", dict(q=FAKE + 2)), ("out", dict(o=FAKE + 8)),
    ("q", dict(q=2**64 - 16)),  # the extent would wrap the address space
    ("lse", dict(lse=FAKE + 2)),
    ("batch", dict(batch=0)), ("batch", dict(batch=-3)), ("nheads", dict(nheads=0)),
    ("nheads_k", dict(nheads_k=0)), ("nheads_k", dict(nheads_k=-2)), ("nheads", dict(nheads_k=3)),
    ("batch \\* nheads", dict(batch=2**16, nheads=2**15, nheads_k=1)),
    ("batch \\* nheads \\* ceil", dict(batch=2**11, nheads=2**8, nheads_k=1, seqlen_q=2**13 * BLOCK_M,
                                       q_strides=(0, 0, 0), o_strides=(0, 0, 0))),
    ("seqlen_q", dict(seqlen_q=0)), ("seqlen_q", dict(seqlen_q=-1)),
    ("seqlen_q", dict(seqlen_q=MAX_SEQLEN + 1)), ("seqlen_q", dict(seqlen_q=INT_MAX)),
    ("seqlen_k", dict(seqlen_k=0)), ("seqlen_k", dict(seqlen_k=MAX_SEQLEN + 1)),
    *[("seqlen_k", dict(seqlen_k=n, k_strides=(0, 0, D), v_strides=(0, 0, D))) for n in WRAP_KEYS],
    ("head_dim", dict(head_dim=D + 8)), ("head_dim", dict(head_dim=-D)),
    ("q: batch, seqlen and head strides must be >= 0", dict(q_strides=(-SQ * H * D, H * D, D))),
    ("k: batch, seqlen and head strides must be >= 0", dict(k_strides=(SK * HK * D, HK * D, -D))),
    ("v: batch, seqlen and head strides must be >= 0", dict(v_strides=(0, -HK * D, D))),
    ("out: batch, seqlen and head strides must be >= 0", dict(o_strides=(-8, H * D, D))),
    ("q: .*multiples of 8", dict(q_strides=(SQ * H * D, H * D + 4, D))),
    ("k: seqlen stride", dict(k_strides=(0, 2**31 // BLOCK_N, D))),
    ("q: sizes and strides address more than 2\\^48", dict(q_strides=(2**62, H * D, D))),
    ("v: sizes and strides address more than 2\\^48", dict(v_strides=(2**47, HK * D, D))),
    ("softmax_scale", dict(softmax_scale=0.0)), ("softmax_scale", dict(softmax_scale=-1.0)),
    ("softmax_scale", dict(softmax_scale=math.inf)), ("softmax_scale", dict(softmax_scale=math.nan)),
    ("softcap", dict(softcap=-1.0)), ("softcap", dict(softcap=math.inf)), ("softcap", dict(softcap=math.nan)),
    ("window_left", dict(window_left=-2)), ("window_left", dict(window_left=MAX_SEQLEN + 1)),
    ("window_right", dict(window_right=-2)), ("window_right", dict(window_right=INT_MAX)),
    ("causal_offset", dict(is_causal=True, causal_offset=INT_MAX)),
    ("causal_offset", dict(is_causal=True, causal_offset=-2**31)),
    ("causal_offset", dict(is_causal=True, causal_offset=MAX_SEQLEN + 1)),
    ("num_splits", dict(num_splits=0)), ("num_splits", dict(num_splits=-1)),
    ("num_splits", dict(num_splits=INT_MAX, o_accum=FAKE + 4 * 2**32, lse_accum=FAKE + 5 * 2**32)),
    ("num_splits", dict(num_splits=129, seqlen_k=2**20, k_strides=(0, 0, D), v_strides=(0, 0, D),
                        o_accum=FAKE + 4 * 2**32, lse_accum=FAKE + 5 * 2**32)),
    # More splits than key blocks: some splits would get no key.
    ("num_splits", dict(num_splits=-(-SK // BLOCK_N) + 1, o_accum=FAKE + 4 * 2**32,
                        lse_accum=FAKE + 5 * 2**32)),
    ("o_accum", dict(num_splits=2, o_accum=0, lse_accum=FAKE + 5 * 2**32)),
    ("lse_accum", dict(num_splits=2, o_accum=FAKE + 4 * 2**32, lse_accum=0)),
    ("o_accum", dict(num_splits=2, o_accum=FAKE + 2, lse_accum=FAKE + 5 * 2**32)),
    ("device", dict(device=-1)), ("device", dict(device=-2**31)),
    ("stream", dict(stream=3)), ("stream", dict(stream=12345)), ("stream", dict(stream=2**63)),
    ("stream", dict(stream=2**64 - 8)),
    ("config", dict(config="no_such_config")), ("dtype", dict(dtype="fp32")),
]


@pytest.mark.parametrize("match,changes", FORWARD_CASES, ids=[str(c) for _, c in FORWARD_CASES])
def test_forward_rejects(match: str, changes: Dict):
    assert_rejects(match, lambda: _C.forward(**forward_args(**changes)))


# One argument of a valid call made nonsense, drawn at random.
NONSENSE_INT = st.one_of(st.integers(-2**31, 0), st.integers(MAX_SEQLEN + 1, INT_MAX))
FUZZ_FIELDS = {
    "batch": ("batch", NONSENSE_INT),
    "nheads_k": ("nheads", st.one_of(st.integers(-2**31, 0), st.sampled_from([3, 5, 7]))),
    "seqlen_q": ("seqlen_q", NONSENSE_INT),
    "seqlen_k": ("seqlen_k", NONSENSE_INT),
    "causal_offset": ("causal_offset", st.one_of(st.integers(-2**31, -MAX_SEQLEN - 1),
                                                 st.integers(MAX_SEQLEN + 1, INT_MAX))),
    "num_splits": ("num_splits", st.one_of(st.integers(-2**31, 0), st.integers(129, INT_MAX))),
    "device": ("device", st.integers(-2**31, -1)),
    "q": ("q", st.one_of(st.just(0), st.integers(1, 2**64 - 1).filter(lambda p: p % 16))),
    "lse": ("lse", st.integers(1, 2**64 - 1).filter(lambda p: p % 4)),
    "stream": ("stream", st.integers(3, 2**64 - 1).filter(lambda s: s % 8 or s >= 2**57)),
    "k_strides": ("k: batch, seqlen and head strides",
                  st.tuples(st.integers(-2**60, -1).map(lambda x: 8 * x), st.integers(0, 2**10),
                            st.integers(0, 2**10)) | st.permutations([-8, 0, D]).map(tuple)),
    "q_strides": ("q: sizes and strides", st.tuples(st.integers(2**45, 2**59).map(lambda x: 8 * x),
                                                    st.just(H * D), st.just(D))),
}


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(sorted(FUZZ_FIELDS)), data=st.data())
def test_forward_fuzz(field: str, data):
    match, values = FUZZ_FIELDS[field]
    value = data.draw(values)
    changes = {field: value}
    if field == "num_splits":
        changes.update(o_accum=FAKE + 4 * 2**32, lse_accum=FAKE + 5 * 2**32)
    if field == "causal_offset":
        changes.update(is_causal=data.draw(st.booleans()))
    assert_rejects(match, lambda: _C.forward(**forward_args(**changes)))


NUM_SPLITS_CASES = [
    ("batch", dict(batch=0)), ("nheads", dict(nheads=-1)), ("nheads", dict(nheads_k=3)),
    ("seqlen_q", dict(seqlen_q=INT_MAX)), ("seqlen_k", dict(seqlen_k=2**31 - BLOCK_N + 1)),
    ("seqlen_k", dict(seqlen_k=-1)), ("device", dict(device=-1)), ("dtype", dict(dtype="int8")),
]


@pytest.mark.parametrize("match,changes", NUM_SPLITS_CASES, ids=[str(c) for _, c in NUM_SPLITS_CASES])
def test_num_splits_rejects(match: str, changes: Dict):
    assert_rejects(match, lambda: _C.num_splits(**num_splits_args(**changes)))


@pytest.mark.parametrize("match,args", [
    ("seqlen_q", (D, 0, 4096, 8, 0)), ("seqlen_q", (D, INT_MAX, 4096, 8, 0)),
    ("seqlen_k", (D, 4096, -1, 8, 0)), ("seqlen_k", (D, 4096, MAX_SEQLEN + 1, 9, 0)),
    ("cc_minor", (D, 4096, 4096, 8, -1)), ("cc_minor", (D, 4096, 4096, 9, 10)),
    ("compute capability", (D, 4096, 4096, 7, 5)), ("compute capability", (D, 4096, 4096, -1, 0)),
    ("head_dim", (-D, 4096, 4096, 8, 0)), ("head_dim", (0, 4096, 4096, 8, 0)),
])
def test_default_config_rejects(match: str, args):
    assert_rejects(match, lambda: _C.default_config(*args))


def test_default_config_accepts_the_limits():
    assert _C.default_config(D, MAX_SEQLEN, MAX_SEQLEN, 8, 0) in {c["name"] for c in _C.configs()}
    assert _C.default_config(D, 1, 1, 9, 0) in {c["name"] for c in _C.configs()}


# --- Real tensors (GPU) -----------------------------------------------------------------

TORCH_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}[DTYPE]


def cuda_problem(seqlen_q: int = 256, seqlen_k: int = 512):
    q = torch.randn(B, seqlen_q, H, D, device="cuda", dtype=TORCH_DTYPE)
    k = torch.randn(B, seqlen_k, HK, D, device="cuda", dtype=TORCH_DTYPE)
    v = torch.randn(B, seqlen_k, HK, D, device="cuda", dtype=TORCH_DTYPE)
    o = torch.empty_like(q)
    lse = torch.empty(B, H, seqlen_q, device="cuda", dtype=torch.float32)
    return q, k, v, o, lse


def real_args(q, k, v, o, lse, /, **changes) -> Dict:
    """`forward_args` of real CUDA tensors; changes may replace their pointers (q=..., o=...)."""
    args = forward_args(q=q.data_ptr(), k=k.data_ptr(), v=v.data_ptr(), o=o.data_ptr(),
                        lse=lse.data_ptr(), seqlen_q=q.shape[1], seqlen_k=k.shape[1],
                        q_strides=strides(q.shape[1], H), k_strides=strides(k.shape[1], HK),
                        v_strides=strides(k.shape[1], HK), o_strides=strides(q.shape[1], H),
                        device=q.device.index,
                        stream=torch.cuda.current_stream(q.device).cuda_stream)
    args.update(changes)
    return args


@pytest.mark.cuda
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(256, 512), (1, 4096)])
def test_valid_direct_call_matches_forward(seqlen_q: int, seqlen_k: int):
    """A direct call with the split count and buffers fa_cute.forward would use gives its
    output bit for bit (decode shapes split the keys, prefill ones do not)."""
    q, k, v, o, lse = cuda_problem(seqlen_q, seqlen_k)
    splits = _C.num_splits(**num_splits_args(seqlen_q=seqlen_q, seqlen_k=seqlen_k, is_causal=True,
                                             device=q.device.index))
    split = {}
    if splits > 1:
        rows = B * H * seqlen_q
        o_accum = torch.empty(splits * rows * D, device="cuda", dtype=torch.float32)
        lse_accum = torch.empty(splits * rows, device="cuda", dtype=torch.float32)
        split = dict(num_splits=splits, o_accum=o_accum.data_ptr(), lse_accum=lse_accum.data_ptr())
    args = real_args(q, k, v, o, lse, is_causal=True, causal_offset=seqlen_k - seqlen_q, **split)
    assert _C.forward(**args) == 0.0
    ref, ref_lse = fa_cute.forward(q, k, v, causal=True, return_lse=True, config=NAME)
    torch.cuda.synchronize()
    assert torch.equal(o, ref)
    assert torch.equal(lse, ref_lse)


@pytest.mark.cuda
def test_device_index_past_the_count():
    assert_rejects("device", lambda: _C.forward(**forward_args(device=torch.cuda.device_count())))
    assert_rejects("device", lambda: _C.num_splits(**num_splits_args(device=torch.cuda.device_count())))


@pytest.mark.cuda
@pytest.mark.parametrize("field", ["q", "k", "v", "o", "lse"])
def test_pointer_in_no_allocation(field: str):
    """A fake pointer (no allocation) and a host pointer: each raises, naming the operand."""
    host = torch.empty(1 << 20, dtype=torch.uint8)  # pageable host memory, not CUDA's
    name = "out" if field == "o" else field
    tensors = cuda_problem()
    for ptr in (FAKE, host.data_ptr() + (-host.data_ptr()) % 16):
        assert_rejects(f"{name}: the data pointer is not in a CUDA device allocation",
                       lambda: _C.forward(**real_args(*tensors, **{field: ptr})))


def allocation_end(ptr: int) -> int:
    """The end of the caching allocator's segment that holds ptr (its cudaMalloc)."""
    for seg in torch.cuda.memory_snapshot():
        if seg["address"] <= ptr < seg["address"] + seg["total_size"]:
            return seg["address"] + seg["total_size"]
    raise AssertionError("no segment holds the tensor")


@pytest.mark.cuda
@pytest.mark.skipif("expandable_segments:True" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
                    reason="expandable segments reserve one address range for all segments")
def test_extent_past_the_allocation():
    """Operands that start inside their allocation but end 16 bytes past it, or far past."""
    q, k, v, o, lse = cuda_problem()
    q_bytes = q.numel() * q.element_size()
    end = allocation_end(q.data_ptr())
    inside = dict(q=end - q_bytes)
    _C.forward(**real_args(q, k, v, o, lse, **inside))  # the last byte of the allocation: fine
    assert_rejects("q: its sizes and strides address",
                   lambda: _C.forward(**real_args(q, k, v, o, lse, q=end - q_bytes + 16)))
    lse_end = allocation_end(lse.data_ptr())
    assert_rejects("lse: its sizes and strides address",
                   lambda: _C.forward(**real_args(q, k, v, o, lse, lse=lse_end - lse.numel() * 4 + 16)))
    # K and V of the real pointer, read 2^20 rows of 2^16 elements (far past any allocation).
    far = dict(seqlen_k=2**20, k_strides=(0, 2**16, D), v_strides=(0, 2**16, D))
    assert_rejects("k: its sizes and strides address", lambda: _C.forward(**real_args(q, k, v, o, lse, **far)))
    torch.cuda.synchronize()


@pytest.mark.cuda
def test_split_buffers_must_be_allocations():
    q, k, v, o, lse = cuda_problem(seqlen_q=1, seqlen_k=4096)
    rows = B * H * 1
    o_accum = torch.empty(2 * rows * D, device="cuda", dtype=torch.float32)
    lse_accum = torch.empty(2 * rows, device="cuda", dtype=torch.float32)
    split = dict(num_splits=2, o_accum=o_accum.data_ptr(), lse_accum=lse_accum.data_ptr())
    assert_rejects("o_accum: the data pointer is not in a CUDA device allocation",
                   lambda: _C.forward(**real_args(q, k, v, o, lse, **{**split, "o_accum": FAKE})))
    assert_rejects("lse_accum: the data pointer is not in a CUDA device allocation",
                   lambda: _C.forward(**real_args(q, k, v, o, lse, **{**split, "lse_accum": FAKE})))


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_pointer_of_another_device():
    tensors = cuda_problem()
    other = torch.empty(B * 256 * H * D, device="cuda:1", dtype=TORCH_DTYPE)
    assert_rejects("q: the data pointer is memory of device 1, not of device 0",
                   lambda: _C.forward(**real_args(*tensors, q=other.data_ptr())))
