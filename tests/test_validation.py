"""Every rejection path of fa_cute.forward and fa_cute.sdpa, and what a valid call hands the
kernel, on CPU tensors (runs anywhere, GPU or not).

The device is checked last, so CPU tensors reach every other check; a CPU call that passes
them all must fail on the device alone, with a ValueError that mentions CUDA. Tests of what
a valid call launches switch that last check off (`no_device_check`) and read the launch
(`_validate.validate`, `_launch.kernel_args`) instead of running it.
"""

import inspect
import math
from typing import Callable, Dict, List

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fa_cute
from fa_cute import _C, _api, _configs, _launch, _validate

CONFIGS = [c for c in fa_cute.configs() if c["dtypes"] != ["e4m3"]]  # the FP8-only ones: test_fp8.py
HEAD_DIM = CONFIGS[0]["head_dim"]
SAME_HEAD_DIM = [c for c in CONFIGS if c["head_dim"] == HEAD_DIM]
# Not a multiple of any tile's rows: any length runs, the kernel masks ragged tails.
SEQ = 100
BATCH, HEADS = 2, 2
SHAPE = (BATCH, SEQ, HEADS, HEAD_DIM)
BF16 = torch.bfloat16
UNSUPPORTED_HEAD_DIM = max(c["head_dim"] for c in CONFIGS) + 8


def randn(*shape: int, dtype: torch.dtype = BF16) -> torch.Tensor:
    return torch.randn(shape).to(dtype)


def args(**changes) -> Dict:
    """Valid keyword arguments for fa_cute.forward (apart from the CPU device), changed."""
    base = dict(q=randn(*SHAPE), k=randn(*SHAPE), v=randn(*SHAPE))
    base.update(changes)
    return base


def kv(*shape: int, dtype: torch.dtype = BF16) -> Dict:
    """k and v of one shape."""
    return dict(k=randn(*shape, dtype=dtype), v=randn(*shape, dtype=dtype))


def misaligned(*shape: int) -> torch.Tensor:
    """A contiguous bf16 tensor whose data starts 2 bytes past a 16-byte boundary."""
    n = math.prod(shape)
    return randn(n + 8)[1:n + 1].view(shape)


def padded_rows(*shape: int) -> torch.Tensor:
    """Last dim contiguous, but each row 4 elements (8 bytes) longer than headdim."""
    return randn(*shape[:-1], shape[-1] + 4)[..., :shape[-1]]


def strided_last_dim(*shape: int) -> torch.Tensor:
    return randn(*shape[:-1], 2 * shape[-1])[..., ::2]


def overlapping_q_and_out() -> Dict:
    """q and out in one buffer, out one row (of HEADS * HEAD_DIM elements) further on."""
    n, row = math.prod(SHAPE), HEADS * HEAD_DIM
    buf = randn(n + row)
    return args(q=buf[:n].view(SHAPE), out=buf[row:].view(SHAPE))


def expanded_out() -> torch.Tensor:
    return randn(BATCH, SEQ, 1, HEAD_DIM).expand(SHAPE)


CASES = [
    # (id, make the arguments, exception, message pattern)
    ("q-list", lambda: args(q=[[1.0]]), TypeError, r"q must be a torch\.Tensor; got list"),
    ("k-none", lambda: args(k=None), TypeError, r"k must be a torch\.Tensor"),
    ("v-int", lambda: args(v=3), TypeError, r"v must be a torch\.Tensor"),
    ("q-sparse", lambda: args(q=torch.randn(SHAPE).to_sparse()), TypeError,
     r"q must be a dense \(strided\) torch\.Tensor"),
    ("q-float32", lambda: args(q=randn(*SHAPE, dtype=torch.float32)), TypeError,
     r"q has dtype torch\.float32; allowed: torch\.bfloat16 or torch\.float16"),
    ("q-int8", lambda: args(q=torch.ones(SHAPE, dtype=torch.int8)), TypeError,
     r"q has dtype torch\.int8"),
    ("k-mixed", lambda: args(k=randn(*SHAPE, dtype=torch.float16)), TypeError,
     r"k has dtype torch\.float16 but q has torch\.bfloat16"),
    ("v-mixed", lambda: args(v=randn(*SHAPE, dtype=torch.float16)), TypeError,
     r"v has dtype torch\.float16"),
    ("q-3d", lambda: args(q=randn(SEQ, HEADS, HEAD_DIM)), ValueError, r"q must be 4-D"),
    ("k-5d", lambda: args(k=randn(1, *SHAPE)), ValueError, r"k must be 4-D"),
    ("v-2d", lambda: args(v=randn(SEQ, HEAD_DIM)), ValueError, r"v must be 4-D"),
    ("kv-shapes", lambda: args(v=randn(BATCH, 2 * SEQ, HEADS, HEAD_DIM)), ValueError,
     r"k and v must have the same shape"),
    ("kv-batch", lambda: args(**kv(BATCH + 1, SEQ, HEADS, HEAD_DIM)), ValueError,
     r"batch of k and v \(3\) must equal batch of q \(2\)"),
    ("kv-headdim", lambda: args(**kv(BATCH, SEQ, HEADS, HEAD_DIM + 8)), ValueError,
     r"headdim of k and v .* must equal headdim of q"),
    ("q-nheads-not-multiple",
     lambda: args(q=randn(BATCH, SEQ, 6, HEAD_DIM), **kv(BATCH, SEQ, 4, HEAD_DIM)), ValueError,
     r"nheads of q \(6\) must be a multiple of nheads of k and v \(4\)"),
    ("kv-more-heads-than-q", lambda: args(**kv(BATCH, SEQ, 2 * HEADS, HEAD_DIM)), ValueError,
     rf"nheads of q \({HEADS}\) must be a multiple of nheads of k and v \({2 * HEADS}\)"),
    ("kv-nheads-0", lambda: args(**kv(BATCH, SEQ, 0, HEAD_DIM)), ValueError,
     rf"nheads of q \({HEADS}\) must be a multiple of nheads of k and v \(0\)"),
    ("q-seqlen-0", lambda: args(q=randn(BATCH, 0, HEADS, HEAD_DIM)),
     ValueError, r"seqlen of q must be >= 1; got 0"),
    ("kv-seqlen-0", lambda: args(**kv(BATCH, 0, HEADS, HEAD_DIM)),
     ValueError, r"seqlen of k and v must be >= 1; got 0"),
    ("causal-int", lambda: args(causal=1), TypeError, r"causal must be True or False; got int"),
    ("causal-none", lambda: args(causal=None), TypeError,
     r"causal must be True or False; got NoneType"),
    ("causal-str", lambda: args(causal="true"), TypeError,
     r"causal must be True or False; got str"),
    ("causal-tensor", lambda: args(causal=torch.tensor(True)), TypeError,
     r"causal must be True or False; got Tensor"),
    ("return-lse-int", lambda: args(return_lse=1), TypeError,
     r"return_lse must be True or False; got int"),
    ("return-lse-none", lambda: args(return_lse=None), TypeError,
     r"return_lse must be True or False; got NoneType"),
    ("headdim-unsupported",
     lambda: args(q=randn(BATCH, SEQ, HEADS, UNSUPPORTED_HEAD_DIM),
                  **kv(BATCH, SEQ, HEADS, UNSUPPORTED_HEAD_DIM)),
     ValueError, rf"headdim of q \({UNSUPPORTED_HEAD_DIM}\) is not supported; built head "
                 rf"dims: .*\b{HEAD_DIM}\b"),
    ("config-unknown", lambda: args(config="sm00_nope"), ValueError,
     rf"config 'sm00_nope' is not built; built configs: .*{CONFIGS[0]['name']}"),
    ("config-not-str", lambda: args(config=3), TypeError, r"config must be a config name"),
    ("config-headdim",
     lambda: args(q=randn(BATCH, SEQ, HEADS, UNSUPPORTED_HEAD_DIM),
                  **kv(BATCH, SEQ, HEADS, UNSUPPORTED_HEAD_DIM), config=CONFIGS[0]["name"]),
     ValueError, rf"config '{CONFIGS[0]['name']}' is for head_dim {HEAD_DIM}, but q, k and v have "
                 rf"headdim {UNSUPPORTED_HEAD_DIM}"),
    ("scale-nan", lambda: args(softmax_scale=math.nan), ValueError,
     r"softmax_scale must be a finite number > 0; got nan"),
    ("scale-inf", lambda: args(softmax_scale=math.inf), ValueError,
     r"softmax_scale must be a finite number > 0"),
    ("scale--inf", lambda: args(softmax_scale=-math.inf), ValueError,
     r"softmax_scale must be a finite number > 0"),
    ("scale-huge-int", lambda: args(softmax_scale=10**400), ValueError,
     r"softmax_scale must be a finite number > 0"),
    ("scale-zero", lambda: args(softmax_scale=0.0), ValueError,
     r"softmax_scale must be a finite number > 0; got 0\.0"),
    ("scale-negative", lambda: args(softmax_scale=-0.5), ValueError,
     r"softmax_scale must be a finite number > 0; got -0\.5"),
    ("k-seqlen-stride-2^31",
     lambda: args(k=torch.empty_strided(SHAPE, (0, 2**31, 0, 1), dtype=BF16, device="meta")),
     ValueError,
     r"k has seqlen stride 2147483648; it must be below \d+ elements"),
    ("scale-str", lambda: args(softmax_scale="0.1"), TypeError,
     r"softmax_scale must be a real number or None; got str"),
    ("scale-bool", lambda: args(softmax_scale=True), TypeError, r"softmax_scale .* got bool"),
    ("scale-tensor", lambda: args(softmax_scale=torch.tensor(0.1)), TypeError,
     r"softmax_scale .* got Tensor"),
    ("q-last-dim-strided", lambda: args(q=strided_last_dim(*SHAPE)), ValueError,
     r"q must have a contiguous last dim .*\.contiguous\(\)"),
    ("k-row-stride", lambda: args(k=padded_rows(*SHAPE)), ValueError,
     rf"k has strides batch {SEQ * HEADS * (HEAD_DIM + 4)}, seqlen {HEADS * (HEAD_DIM + 4)}, "
     rf"nheads {HEAD_DIM + 4}, headdim 1; .* multiples of 8 elements \(16 bytes\)"
     r".*\.contiguous\(\)"),
    ("v-misaligned", lambda: args(v=misaligned(*SHAPE)), ValueError,
     r"v\.data_ptr\(\) is not 16-byte aligned.*\.clone\(\)"),
    ("out-list", lambda: args(out=[0.0]), TypeError, r"out must be a torch\.Tensor"),
    ("out-dtype", lambda: args(out=randn(*SHAPE, dtype=torch.float16)), TypeError,
     r"out has dtype torch\.float16; it must match q"),
    ("out-shape", lambda: args(out=randn(BATCH, SEQ, HEADS + 1, HEAD_DIM)), ValueError,
     r"out has shape .* it must match q"),
    ("out-last-dim-strided", lambda: args(out=strided_last_dim(*SHAPE)), ValueError,
     r"out must have a contiguous last dim"),
    ("out-row-stride", lambda: args(out=padded_rows(*SHAPE)), ValueError,
     r"out has strides .* multiples of 8"),
    ("out-misaligned", lambda: args(out=misaligned(*SHAPE)), ValueError,
     r"out\.data_ptr\(\) is not 16-byte aligned"),
    ("out-expanded", lambda: args(out=expanded_out()), ValueError,
     r"out has elements that share memory"),
    ("out-is-k", lambda: (lambda a: dict(a, out=a["k"]))(args()), ValueError,
     r"out overlaps the memory of k"),
    ("out-is-v", lambda: (lambda a: dict(a, out=a["v"]))(args()), ValueError,
     r"out overlaps the memory of v"),
    ("out-overlaps-q", overlapping_q_and_out, ValueError, r"out overlaps the memory of q"),
    # Valid apart from the device: the last check rejects them.
    ("cpu", lambda: args(), ValueError, r"q is on cpu; fa_cute runs on CUDA tensors only"),
    ("cpu-batch-0", lambda: args(q=randn(0, SEQ, HEADS, HEAD_DIM), **kv(0, SEQ, HEADS, HEAD_DIM)),
     ValueError, r"q is on cpu; .*CUDA"),
    ("cpu-nheads-0", lambda: args(q=randn(BATCH, SEQ, 0, HEAD_DIM), **kv(BATCH, SEQ, 0, HEAD_DIM)),
     ValueError, r"q is on cpu; .*CUDA"),
    ("cpu-out-is-q", lambda: (lambda a: dict(a, out=a["q"]))(args()), ValueError,
     r"q is on cpu; .*CUDA"),
    ("cpu-bhnd-views", lambda: args(**{n: randn(BATCH, HEADS, SEQ, HEAD_DIM).transpose(1, 2)
                                       for n in "qkv"}),
     ValueError, r"q is on cpu; .*CUDA"),
    ("cpu-expanded-kv", lambda: args(**{n: randn(BATCH, SEQ, 1, HEAD_DIM).expand(SHAPE)
                                        for n in "kv"}),
     ValueError, r"q is on cpu; .*CUDA"),
    ("cpu-size1-odd-stride",
     lambda: args(q=torch.as_strided(randn(math.prod(SHAPE) + 8), (1, SEQ, HEADS, HEAD_DIM),
                                     (3, HEADS * HEAD_DIM, HEAD_DIM, 1)),
                  **kv(1, SEQ, HEADS, HEAD_DIM)),
     ValueError, r"q is on cpu; .*CUDA"),
    ("cpu-scale-int", lambda: args(softmax_scale=2), ValueError, r"q is on cpu"),
    ("cpu-config-named", lambda: args(config=SAME_HEAD_DIM[0]["name"]), ValueError, r"q is on cpu"),
    ("cpu-every-config-any-seqlen",  # no block-multiple rule: 1 and 100 rows on every tile
     lambda: args(q=randn(BATCH, 1, HEADS, HEAD_DIM), config=SAME_HEAD_DIM[-1]["name"]),
     ValueError, r"q is on cpu"),
    ("cpu-gqa", lambda: args(**kv(BATCH, SEQ, 1, HEAD_DIM)), ValueError, r"q is on cpu"),
    ("cpu-kv-longer", lambda: args(**kv(BATCH, 3 * SEQ + 5, HEADS, HEAD_DIM), causal=True),
     ValueError, r"q is on cpu"),
    ("cpu-kv-shorter", lambda: args(**kv(BATCH, 7, HEADS, HEAD_DIM), causal=True),
     ValueError, r"q is on cpu"),
    ("cpu-nheads-0-kv-0",
     lambda: args(q=randn(BATCH, SEQ, 0, HEAD_DIM), **kv(BATCH, SEQ, 0, HEAD_DIM)),
     ValueError, r"q is on cpu"),
    ("cpu-return-lse-with-out", lambda: args(return_lse=True, out=randn(*SHAPE)), ValueError,
     r"q is on cpu"),
]


@pytest.mark.parametrize("make_args, exc, pattern", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_rejected(make_args: Callable[[], Dict], exc: type, pattern: str) -> None:
    kwargs = make_args()
    q, k, v = kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v")
    with pytest.raises(exc, match=pattern):
        fa_cute.forward(q, k, v, **kwargs)


def test_forward_timed_validates_too() -> None:
    with pytest.raises(ValueError, match=r"q is on cpu; .*CUDA"):
        fa_cute.forward_timed(*args().values())
    with pytest.raises(TypeError, match=r"causal must be True or False"):
        fa_cute.forward_timed(*args().values(), causal="yes")


def test_keyword_only_options() -> None:
    """Everything after q, k, v is keyword-only, so positional misuse fails loudly."""
    for fn, fp8 in ((fa_cute.forward, ["q_descale", "k_descale", "v_descale"]), (fa_cute.forward_timed, [])):
        params = inspect.signature(fn).parameters
        assert list(params) == ["q", "k", "v", "causal", "softmax_scale", "return_lse",
                                "config", "out", "softcap", "window_size"] + fp8, fn
        assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in list(params)[3:])
        assert params["causal"].default is False and params["return_lse"].default is False
    with pytest.raises(TypeError):
        fa_cute.forward(*args().values(), True)


def test_validation_leaves_inputs_alone() -> None:
    a = args()
    before = {n: t.clone() for n, t in a.items()}
    with pytest.raises(ValueError):
        fa_cute.forward(**a)
    for n, t in a.items():
        assert torch.equal(t, before[n]), n


DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.int8]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_arguments_raise_only_value_or_type_error(data: st.DataObject) -> None:
    """Whatever the shapes, dtypes and options, a CPU call raises ValueError or TypeError
    (never another exception, never a crash)."""
    def tensor(label: str) -> torch.Tensor:
        dims = data.draw(st.lists(st.sampled_from([0, 1, 2, 8, SEQ, HEAD_DIM]), min_size=2,
                                  max_size=5).filter(lambda d: math.prod(d) <= 1 << 26),
                         label=f"{label} shape")
        dtype = data.draw(st.sampled_from(DTYPES), label=f"{label} dtype")
        t = torch.empty(dims, dtype=dtype)  # validation never reads the values
        if data.draw(st.booleans(), label=f"{label} transposed") and t.dim() >= 3:
            t = t.transpose(1, 2)
        return t

    q, k, v = tensor("q"), tensor("k"), tensor("v")
    kwargs = dict(
        softmax_scale=data.draw(st.one_of(st.none(), st.floats(), st.integers(),
                                          st.text(max_size=2))),
        config=data.draw(st.one_of(st.none(),
                                   st.sampled_from(["auto"] + [c["name"] for c in CONFIGS]),
                                   st.text(max_size=4), st.integers())),
        out=data.draw(st.one_of(st.none(), st.just(q), st.just(k)), label="out"),
        causal=data.draw(st.one_of(st.booleans(), st.none(), st.integers(0, 1)), label="causal"),
        return_lse=data.draw(st.one_of(st.booleans(), st.none()), label="return_lse"),
    )
    with pytest.raises((ValueError, TypeError)):
        fa_cute.forward(q, k, v, **kwargs)


# What a valid call launches: the device check switched off, the kernel never called.

FORWARD_PARAMS = ["config", "dtype", "q", "k", "v", "o", "lse", "batch", "seqlen_q", "seqlen_k",
                  "nheads", "nheads_k", "head_dim", "q_strides", "k_strides", "v_strides",
                  "o_strides", "softmax_scale", "is_causal", "causal_offset"]  # docs: _C.forward


@pytest.fixture
def no_device_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_validate, "check_devices", lambda *args, **kwargs: None)


@pytest.fixture
def launches(no_device_check, monkeypatch: pytest.MonkeyPatch) -> List[Dict]:
    """The arguments each `_C.forward` call would get (as a dict), recorded instead of run."""
    calls: List[Dict] = []

    def record(launch, q, k, v, out, lse, timed, sdpa_layout=False):
        # out_tensor: out in forward's layout, as the kernel writes it.
        calls.append(dict(zip(FORWARD_PARAMS, _launch.kernel_args(launch, q, k, v, out, lse, sdpa_layout)),
                          launch=launch, out_tensor=out.transpose(1, 2) if sdpa_layout else out,
                          lse_tensor=lse, timed=timed))
        return 1.5

    monkeypatch.setattr(_api, "launch_kernel", record)
    return calls


def validate(q, k, v, *, causal=False, bottom_right=True, out=None, config="auto"):
    return _validate.validate(q, k, v, causal=causal, bottom_right=bottom_right,
                              softmax_scale=None, config=config, out=out)


@pytest.mark.parametrize("seqlen_q, seqlen_k, causal, bottom_right, is_causal, offset", [
    (SEQ, SEQ, False, True, False, 0),
    (SEQ, SEQ, True, True, True, 0),
    (5, 9, True, True, True, 4),     # forward: bottom-right, the last query sees every key
    (5, 9, True, False, True, 0),    # sdpa: top-left
    (9, 5, True, True, True, -4),    # the first 4 rows see no key
    (9, 5, True, False, True, 0),
    (1, 9, True, True, False, 0),    # one query row aligned bottom-right sees every key
    (1, 9, True, False, True, 0),    # top-left, it sees key 0 only
    (9, 1, True, False, False, 0),   # every row sees the one key
    (9, 1, True, True, True, -8),    # only the last row sees it
])
def test_causal_alignment(no_device_check, seqlen_q: int, seqlen_k: int, causal: bool,
                          bottom_right: bool, is_causal: bool, offset: int) -> None:
    launch = validate(randn(BATCH, seqlen_q, HEADS, HEAD_DIM),
                      **kv(BATCH, seqlen_k, HEADS, HEAD_DIM), causal=causal,
                      bottom_right=bottom_right)
    assert (launch.is_causal, launch.causal_offset) == (is_causal, offset)
    assert (launch.seqlen_q, launch.seqlen_k, launch.nheads, launch.nheads_k, launch.packed) == \
        (seqlen_q, seqlen_k, HEADS, HEADS, False)


@pytest.mark.parametrize("nheads, nheads_k", [(8, 2), (8, 1), (6, 3)])
@pytest.mark.parametrize("layout", ["bnhd", "bhnd"])
def test_decode_gqa_packed_views(nheads: int, nheads_k: int, layout: str) -> None:
    """Row j of K/V head hk in the views is query head hk * group + j, the same memory."""
    group = nheads // nheads_k
    if layout == "bnhd":
        q, out = randn(3, 1, nheads, HEAD_DIM), randn(3, 1, nheads, HEAD_DIM)
    else:  # SDPA's (batch, nheads, 1, headdim), and out a slice of a wider buffer
        q = randn(3, nheads, 1, HEAD_DIM).transpose(1, 2)
        out = randn(3, 1, nheads + 2, HEAD_DIM)[:, :, 1:nheads + 1]
    q_view, out_view = (t.as_strided((3, group, nheads_k, HEAD_DIM),
                                     _launch.packed_strides(t, nheads_k)) for t in (q, out))
    for view, t in ((q_view, q), (out_view, out)):
        assert view.shape == (3, group, nheads_k, HEAD_DIM)
        assert view.stride() == (t.stride(0), t.stride(2), group * t.stride(2), 1)
        # What the launch passes for the view, computed without building it.
        assert _launch.launch_strides(t, True, nheads_k) == _launch.row_strides(view)
        assert _launch.launch_strides(t, False, nheads_k) == _launch.row_strides(t)
        assert view.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()
        for b in range(3):
            for j in range(group):
                for hk in range(nheads_k):
                    assert view[b, j, hk].data_ptr() == t[b, 0, hk * group + j].data_ptr()
                    assert torch.equal(view[b, j, hk], t[b, 0, hk * group + j])
    if layout == "bnhd":  # the same, from torch ops on the contiguous tensor
        assert torch.equal(q_view, q[:, 0].reshape(3, nheads_k, group, HEAD_DIM).transpose(1, 2))
    out_view.fill_(7.0)
    assert bool((out == 7.0).all())


@pytest.mark.parametrize("causal", [False, True])
def test_decode_gqa_launch(launches: List[Dict], causal: bool) -> None:
    """A one-row GQA decode launches nheads // nheads_k rows of nheads_k heads on views of q
    and out; bottom-right causal is the same for one row. The LSE index the kernel writes,
    (b * nheads_k + hk) * group + j, is query head hk * group + j's in (batch, nheads, 1)."""
    batch, nheads, nheads_k, seqlen_k = 2, 8, 2, 37
    group = nheads // nheads_k
    q = randn(batch, nheads, 1, HEAD_DIM).transpose(1, 2)
    k, v = (randn(batch, nheads_k, seqlen_k, HEAD_DIM).transpose(1, 2) for _ in range(2))
    out, lse = fa_cute.forward(q, k, v, causal=causal, return_lse=True)
    (call,) = launches
    assert call["launch"].packed
    assert (call["batch"], call["seqlen_q"], call["seqlen_k"], call["nheads"], call["nheads_k"],
            call["head_dim"]) == (batch, group, seqlen_k, nheads_k, nheads_k, HEAD_DIM)
    assert (call["is_causal"], call["causal_offset"]) == (False, 0)
    assert call["q"] == q.data_ptr() and call["o"] == out.data_ptr()
    assert call["k"] == k.data_ptr() and call["v"] == v.data_ptr()
    assert call["q_strides"] == (q.stride(0), q.stride(2), group * q.stride(2))
    assert call["o_strides"] == (out.stride(0), out.stride(2), group * out.stride(2))
    assert call["k_strides"] == k.stride()[:3]
    assert lse.shape == (batch, nheads, 1) and lse.dtype == torch.float32
    assert lse.is_contiguous() and call["lse"] == lse.data_ptr()
    flat = lse.view(-1)
    for b in range(batch):
        for hk in range(nheads_k):
            for j in range(group):
                kernel_index = (b * nheads_k + hk) * group + j
                assert flat[kernel_index].data_ptr() == lse[b, hk * group + j, 0].data_ptr()


@pytest.mark.parametrize("case", ["sdpa-causal", "no-gqa", "two-rows", "huge-head-stride"])
def test_decode_not_packed(no_device_check, case: str) -> None:
    """Top-left causal masks the one row (it sees key 0 only); without GQA or with more
    rows there is nothing to pack; a head stride whose packed tile would need 32-bit
    offsets past 2^31 runs unpacked."""
    nheads, nheads_k, seqlen_q = 8, 2, 1
    if case == "no-gqa":
        nheads_k = nheads
    if case == "two-rows":
        seqlen_q = 2
    q = randn(BATCH, seqlen_q, nheads, HEAD_DIM)
    kvs = kv(BATCH, 16, nheads_k, HEAD_DIM)
    if case == "huge-head-stride":
        # The smallest 16-byte multiple whose packed offsets pass 2^31 in the tallest tile.
        stride = -(-2**31 // (8 * _configs.MAX_BLOCK_M)) * 8
        q = torch.empty_strided((BATCH, 1, nheads, HEAD_DIM), (nheads * stride, 8, stride, 1),
                                dtype=BF16, device="meta")
        kvs = {n: torch.empty((BATCH, 16, nheads_k, HEAD_DIM), dtype=BF16, device="meta")
               for n in "kv"}
    launch = validate(q, causal=case == "sdpa-causal", bottom_right=False, **kvs)
    assert not launch.packed
    assert (launch.seqlen_q, launch.nheads, launch.nheads_k) == (seqlen_q, nheads, nheads_k)
    assert launch.is_causal == (case == "sdpa-causal")


def test_gqa_launch_reads_kv_in_place(launches: List[Dict]) -> None:
    q = randn(BATCH, SEQ, 6, HEAD_DIM)
    k, v = (randn(BATCH, SEQ + 3, 2, HEAD_DIM) for _ in range(2))
    out = fa_cute.forward(q, k, v, causal=True, softmax_scale=0.25)
    (call,) = launches
    assert not call["launch"].packed and call["lse"] == 0
    assert (call["seqlen_q"], call["seqlen_k"], call["nheads"], call["nheads_k"]) == (SEQ, SEQ + 3,
                                                                                      6, 2)
    assert (call["is_causal"], call["causal_offset"], call["softmax_scale"]) == (True, 3, 0.25)
    assert call["k"] == k.data_ptr() and call["k_strides"] == k.stride()[:3]
    assert call["o"] == out.data_ptr() and out.shape == q.shape and out.stride() == q.stride()


def test_return_lse_with_out_allocates_lse(launches: List[Dict]) -> None:
    q, given = randn(*SHAPE), randn(*SHAPE)
    (out, lse), ms = fa_cute.forward_timed(*args(q=q).values(), return_lse=True, out=given)
    assert out is given and ms == 1.5 and launches[0]["timed"]
    assert lse.shape == (BATCH, HEADS, SEQ) and lse.dtype == torch.float32 and lse.is_contiguous()
    assert not _validate.spans_overlap(lse, given) and launches[0]["lse"] == lse.data_ptr()
    assert fa_cute.forward(*args(q=q).values(), out=given) is given  # no LSE: just out
    assert launches[1]["lse"] == 0 and not launches[1]["timed"]


@pytest.mark.parametrize("batch, nheads, nheads_k", [(0, 4, 2), (2, 0, 2), (2, 0, 0)])
def test_empty_problem_launches_nothing(no_device_check, monkeypatch: pytest.MonkeyPatch,
                                        batch: int, nheads: int, nheads_k: int) -> None:
    monkeypatch.setattr(_C, "forward", None, raising=False)  # a call would fail
    q = randn(batch, 1, nheads, HEAD_DIM)
    (out, lse), ms = fa_cute.forward_timed(q, **kv(batch, 5, nheads_k, HEAD_DIM), return_lse=True)
    assert out.shape == q.shape and out.dtype == q.dtype and ms == 0.0
    assert lse.shape == (batch, nheads, 1) and lse.dtype == torch.float32 and lse.numel() == 0
    out = fa_cute.sdpa(q.transpose(1, 2), *(t.transpose(1, 2) for t in
                                            kv(batch, 5, nheads_k, HEAD_DIM).values()),
                       enable_gqa=True)
    assert out.shape == (batch, nheads, 1, HEAD_DIM)


def test_broadcast_dim_names_the_expanded_dim() -> None:
    """What sends a tensor away from the Hopper kernel (TMA cannot broadcast): a stride-0
    dim of size > 1, not a size-1 dim whatever its stride."""
    dense = torch.zeros(2, 8, 4, 64)
    assert _validate.broadcast_dim(dense) is None
    assert _validate.broadcast_dim(dense[:, :, :1]) is None  # size-1 head dim
    assert _validate.broadcast_dim(torch.zeros(2, 8, 1, 64).expand(2, 8, 4, 64)) == "nheads"
    assert _validate.broadcast_dim(torch.zeros(1, 8, 4, 64).expand(3, 8, 4, 64)) == "batch"
    assert _validate.broadcast_dim(torch.zeros(2, 1, 4, 64).expand(2, 8, 4, 64)) == "seqlen"
    assert _validate.broadcast_dim(torch.zeros(1, 1, 1, 64).expand(1, 1, 1, 64)) is None


def test_config_fits_the_gpu() -> None:
    cfg = dict(SAME_HEAD_DIM[0], smem_bytes=196608, family="sm80")
    _configs.check_config_fits(cfg, "cuda:0 (A)", (8, 0), 196608)
    _configs.check_config_fits(cfg, "cuda:0 (A)", (8, 0), None)  # a torch that does not say
    with pytest.raises(ValueError, match=rf"config '{cfg['name']}' needs 196608 bytes of shared "
                                         r"memory per block; cuda:0 \(A\) allows at most 167936"):
        _configs.check_config_fits(cfg, "cuda:0 (A)", (8, 0), 167936)
    with pytest.raises(ValueError, match=r"needs a GPU of compute capability 9\.0 exactly; "
                                         r"cuda:1 \(B\) has 8\.6"):
        _configs.check_config_fits(dict(cfg, family="sm90a"), "cuda:1 (B)", (8, 6), None)
    # sm_90a code (wgmma, TMA) runs on 9.0 only, not on newer GPUs.
    _configs.check_config_fits(dict(cfg, family="sm90a"), "cuda:1 (B)", (9, 0), None)
    with pytest.raises(ValueError, match=r"needs a GPU of compute capability 9\.0 exactly; "
                                         r"cuda:1 \(B\) has 10\.0"):
        _configs.check_config_fits(dict(cfg, family="sm90a"), "cuda:1 (B)", (10, 0), None)
    with pytest.raises(ValueError, match=r"needs a GPU of compute capability 8\.0 or newer; "
                                         r"cuda:1 \(B\) has 7\.5"):
        _configs.check_config_fits(cfg, "cuda:1 (B)", (7, 5), None)


# fa_cute.sdpa: torch's signature and semantics, or a ValueError/TypeError that says why not.

def bhnd(batch: int = BATCH, nheads: int = HEADS, seqlen: int = SEQ, head_dim: int = HEAD_DIM,
         dtype: torch.dtype = BF16) -> torch.Tensor:
    return randn(batch, nheads, seqlen, head_dim, dtype=dtype)


def sdpa_args(**changes) -> Dict:
    base = dict(query=bhnd(), key=bhnd(), value=bhnd())
    base.update(changes)
    return base


SDPA_CASES = [
    ("mask", lambda: sdpa_args(attn_mask=torch.ones(SEQ, SEQ, dtype=torch.bool)), ValueError,
     r"attn_mask must be None: .*torch\.nn\.functional\.scaled_dot_product_attention"),
    ("mask-float", lambda: sdpa_args(attn_mask=torch.zeros(SEQ, SEQ)), ValueError,
     r"attn_mask must be None"),
    ("dropout", lambda: sdpa_args(dropout_p=0.1), ValueError,
     r"dropout_p must be 0\.0: fa_cute\.sdpa has no dropout; got 0\.1; use "
     r"torch\.nn\.functional\.scaled_dot_product_attention"),
    ("dropout-nan", lambda: sdpa_args(dropout_p=math.nan), ValueError, r"dropout_p must be 0\.0"),
    ("dropout-str", lambda: sdpa_args(dropout_p="0"), TypeError,
     r"dropout_p must be a real number; got str"),
    ("dropout-bool", lambda: sdpa_args(dropout_p=False), TypeError, r"dropout_p .* got bool"),
    ("is-causal-int", lambda: sdpa_args(is_causal=1), TypeError,
     r"is_causal must be True or False; got int"),
    ("enable-gqa-none", lambda: sdpa_args(enable_gqa=None), TypeError,
     r"enable_gqa must be True or False; got NoneType"),
    ("gqa-not-enabled", lambda: sdpa_args(query=bhnd(nheads=8), key=bhnd(nheads=2),
                                          value=bhnd(nheads=2)),
     ValueError, r"query has 8 heads but key and value have 2; pass enable_gqa=True"),
    ("gqa-not-multiple", lambda: sdpa_args(query=bhnd(nheads=6), key=bhnd(nheads=4),
                                           value=bhnd(nheads=4), enable_gqa=True),
     ValueError, r"nheads of query \(6\) must be a multiple of nheads of key and value \(4\)"),
    ("query-3d", lambda: sdpa_args(query=randn(HEADS, SEQ, HEAD_DIM)), ValueError,
     r"query must be 4-D \(batch, nheads, seqlen, headdim\); got shape \(2, 100, \d+\)"),
    ("key-5d", lambda: sdpa_args(key=randn(1, BATCH, HEADS, SEQ, HEAD_DIM)), ValueError,
     r"key must be 4-D"),
    ("value-list", lambda: sdpa_args(value=[1.0]), TypeError,
     r"value must be a torch\.Tensor; got list"),
    ("kv-shapes", lambda: sdpa_args(value=bhnd(seqlen=SEQ + 1)), ValueError,
     rf"key and value must have the same shape; got key \({BATCH}, {HEADS}, {SEQ}, {HEAD_DIM}\) "
     rf"and value \({BATCH}, {HEADS}, {SEQ + 1}, {HEAD_DIM}\)"),
    ("key-dtype", lambda: sdpa_args(key=bhnd(dtype=torch.float16)), TypeError,
     r"key has dtype torch\.float16 but query has torch\.bfloat16"),
    ("query-float32", lambda: sdpa_args(query=bhnd(dtype=torch.float32)), TypeError,
     r"query has dtype torch\.float32; allowed"),
    ("query-seqlen-0", lambda: sdpa_args(query=bhnd(seqlen=0)), ValueError,
     r"seqlen of query must be >= 1; got 0"),
    ("scale-negative", lambda: sdpa_args(scale=-1.0), ValueError,
     r"scale must be a finite number > 0; got -1\.0"),
    ("scale-str", lambda: sdpa_args(scale="1"), TypeError, r"^scale must be a real number"),
    ("headdim-unsupported",
     lambda: sdpa_args(**{n: bhnd(head_dim=UNSUPPORTED_HEAD_DIM)
                          for n in ("query", "key", "value")}),
     ValueError, rf"headdim of query \({UNSUPPORTED_HEAD_DIM}\) is not supported"),
    ("query-row-stride",  # strides named by dim, in the transposed view's terms
     lambda: sdpa_args(query=randn(BATCH, HEADS, SEQ, HEAD_DIM + 4)[..., :HEAD_DIM]), ValueError,
     rf"query has strides batch {HEADS * SEQ * (HEAD_DIM + 4)}, seqlen {HEAD_DIM + 4}, nheads "
     rf"{SEQ * (HEAD_DIM + 4)}, headdim 1; the batch, seqlen and nheads strides must be "
     r"multiples of 8"),
    # Valid apart from the device.
    ("cpu", lambda: sdpa_args(), ValueError, r"query is on cpu; fa_cute runs on CUDA"),
    ("cpu-gqa", lambda: sdpa_args(query=bhnd(nheads=8), key=bhnd(nheads=2), value=bhnd(nheads=2),
                                  enable_gqa=True, is_causal=True), ValueError, r"query is on cpu"),
    ("cpu-mqa-decode", lambda: sdpa_args(query=bhnd(nheads=8, seqlen=1), key=bhnd(nheads=1),
                                         value=bhnd(nheads=1), enable_gqa=True),
     ValueError, r"query is on cpu"),
    ("cpu-dropout-int-0", lambda: sdpa_args(dropout_p=0), ValueError, r"query is on cpu"),
    ("cpu-gqa-flag-same-heads", lambda: sdpa_args(enable_gqa=True), ValueError, r"query is on cpu"),
    ("cpu-cross-lengths", lambda: sdpa_args(key=bhnd(seqlen=3), value=bhnd(seqlen=3),
                                            is_causal=True, scale=0.5), ValueError,
     r"query is on cpu"),
]


@pytest.mark.parametrize("make_args, exc, pattern", [c[1:] for c in SDPA_CASES],
                         ids=[c[0] for c in SDPA_CASES])
def test_sdpa_rejected(make_args: Callable[[], Dict], exc: type, pattern: str) -> None:
    kwargs = make_args()
    with pytest.raises(exc, match=pattern):
        fa_cute.sdpa(**kwargs)


def test_sdpa_signature_is_torchs() -> None:
    """Names, defaults and keyword-only options as torch 2.5+ has them (scale and enable_gqa
    after the `*`), so a call written for torch's SDPA means the same here."""
    params = inspect.signature(fa_cute.sdpa).parameters
    assert list(params) == ["query", "key", "value", "attn_mask", "dropout_p", "is_causal",
                            "scale", "enable_gqa"]
    assert [params[n].default for n in list(params)[3:]] == [None, 0.0, False, None, False]
    assert [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY] == \
        ["scale", "enable_gqa"]
    with pytest.raises(TypeError):
        fa_cute.sdpa(*sdpa_args().values(), None, 0.0, False, 0.5)  # torch refuses it too
    assert "sdpa" in fa_cute.__all__ and fa_cute.sdpa is _api.sdpa


@pytest.mark.parametrize("seqlen_q, seqlen_k, is_causal, nheads_k", [
    (SEQ, SEQ, False, HEADS), (5, 9, True, HEADS), (9, 5, True, 1), (1, 9, False, 1)])
def test_sdpa_launch(launches: List[Dict], seqlen_q: int, seqlen_k: int, is_causal: bool,
                     nheads_k: int) -> None:
    """Top-left causal (offset 0), the default scale 1/sqrt(d), no LSE, and a new contiguous
    (B, H, Nq, d) result the kernel writes through its (B, Nq, H, d) view."""
    query = bhnd(seqlen=seqlen_q)
    key, value = bhnd(nheads=nheads_k, seqlen=seqlen_k), bhnd(nheads=nheads_k, seqlen=seqlen_k)
    out = fa_cute.sdpa(query, key, value, is_causal=is_causal, enable_gqa=nheads_k != HEADS)
    assert out.shape == query.shape and out.dtype == query.dtype and out.is_contiguous()
    (call,) = launches
    assert call["o"] == out.data_ptr() and call["lse"] == 0 and call["lse_tensor"] is None
    assert call["out_tensor"].stride() == out.transpose(1, 2).stride()
    assert (call["is_causal"], call["causal_offset"]) == (is_causal, 0)
    assert call["softmax_scale"] == 1.0 / math.sqrt(HEAD_DIM)
    assert call["k"] == key.data_ptr() and call["k_strides"] == \
        (key.stride(0), key.stride(2), key.stride(1) if nheads_k > 1 else 0)
    packed = seqlen_q == 1 and nheads_k < HEADS
    assert call["launch"].packed == packed
    assert call["seqlen_q"] == (HEADS // nheads_k if packed else seqlen_q)
    # out's row strides as the kernel writes it: (batch, row, head) of its (B, Nq, H, d) view;
    # packed (one query row, nheads_k = 1 here), the H query heads are the tile's rows.
    b, h, nq, _ = out.stride()
    assert call["o_strides"] == ((b, h, 0) if packed else (b, nq if seqlen_q > 1 else 0, h))
