"""Every rejection path of fa_cute.forward, on CPU tensors (runs anywhere, GPU or not).

The device is checked last, so CPU tensors reach every other check; a CPU call that passes
them all must fail on the device alone, with a ValueError that mentions CUDA.
"""

import math
from functools import reduce
from typing import Callable, Dict

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fa_cute

CONFIGS = fa_cute.configs()
HEAD_DIM = CONFIGS[0]["head_dim"]
SAME_HEAD_DIM = [c for c in CONFIGS if c["head_dim"] == HEAD_DIM]
# A seqlen that every config of HEAD_DIM accepts, whichever one the default heuristic picks.
SEQ = reduce(math.lcm, [c[b] for c in SAME_HEAD_DIM for b in ("block_m", "block_n")])
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


def _block_n_config():
    """A config with a seqlen that is a multiple of block_m but not of block_n, if any."""
    for c in CONFIGS:
        if c["block_m"] % c["block_n"]:
            return c
    return None


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
    ("kv-nheads", lambda: args(**kv(BATCH, SEQ, 1, HEAD_DIM)), ValueError,
     r"nheads of k and v \(1\) differs .* not yet supported"),
    ("kv-seqlen", lambda: args(**kv(BATCH, 2 * SEQ, HEADS, HEAD_DIM)), ValueError,
     r"seqlen of k and v .* differs .* not yet supported"),
    ("seqlen-0", lambda: args(q=randn(BATCH, 0, HEADS, HEAD_DIM), **kv(BATCH, 0, HEADS, HEAD_DIM)),
     ValueError, r"seqlen \(q\.shape\[1\]\) must be >= 1; got 0"),
    ("headdim-unsupported",
     lambda: args(q=randn(BATCH, SEQ, HEADS, UNSUPPORTED_HEAD_DIM),
                  **kv(BATCH, SEQ, HEADS, UNSUPPORTED_HEAD_DIM)),
     ValueError, rf"headdim {UNSUPPORTED_HEAD_DIM} \(q\.shape\[3\]\) is not supported; built head "
                 rf"dims: .*\b{HEAD_DIM}\b"),
    ("seqlen-block-default",
     lambda: args(q=randn(BATCH, SEQ + 8, HEADS, HEAD_DIM), **kv(BATCH, SEQ + 8, HEADS, HEAD_DIM)),
     ValueError, r"seqlen of q \(\d+\) must be a multiple of \d+ \(block_m of config .*later"),
    ("seqlen-block-m",
     lambda: args(q=randn(BATCH, SEQ + 8, HEADS, HEAD_DIM), **kv(BATCH, SEQ + 8, HEADS, HEAD_DIM),
                  config=CONFIGS[0]["name"]),
     ValueError, rf"seqlen of q \({SEQ + 8}\) must be a multiple of {CONFIGS[0]['block_m']} "
                 rf"\(block_m of config {CONFIGS[0]['name']}\)"),
    ("config-unknown", lambda: args(config="sm00_nope"), ValueError,
     rf"config 'sm00_nope' is not built; built configs: .*{CONFIGS[0]['name']}"),
    ("config-not-str", lambda: args(config=3), TypeError, r"config must be a config name"),
    ("config-headdim",
     lambda: args(q=randn(BATCH, SEQ, HEADS, UNSUPPORTED_HEAD_DIM),
                  **kv(BATCH, SEQ, HEADS, UNSUPPORTED_HEAD_DIM), config=CONFIGS[0]["name"]),
     ValueError, rf"config '{CONFIGS[0]['name']}' is for head_dim {HEAD_DIM}, but q, k, v have "
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
     r"k has strides .* multiples of 8 elements \(16 bytes\).*\.contiguous\(\)"),
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
]

BLOCK_N_CONFIG = _block_n_config()
if BLOCK_N_CONFIG is not None:  # only reachable when block_n does not divide block_m
    _c = BLOCK_N_CONFIG
    CASES.append(("seqlen-block-n",
                  lambda: args(q=randn(BATCH, _c["block_m"], HEADS, _c["head_dim"]),
                               **kv(BATCH, _c["block_m"], HEADS, _c["head_dim"]),
                               config=_c["name"]),
                  ValueError, rf"seqlen of k and v \(\d+\) must be a multiple of {_c['block_n']} "
                              r"\(block_n"))


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


def test_keyword_only_options() -> None:
    """softmax_scale, config and out are keyword-only, so positional misuse fails loudly."""
    with pytest.raises(TypeError):
        fa_cute.forward(*args().values(), 0.1)


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
    )
    with pytest.raises((ValueError, TypeError)):
        fa_cute.forward(q, k, v, **kwargs)
