"""Fuzzing the public entry points, fa_cute.forward, fa_cute.sdpa and fa_cute.resolve_config
(issue 13): whatever they are given, they raise ValueError or TypeError whose message names
an argument that was made wrong, or (valid inputs on a GPU) return the right shape. Never
another exception, a crash, a hang or a silent wrong answer.

Each example starts from a valid call (random sizes, grouped-query heads, both layouts, a
built head dim) and spoils some of its arguments at random: a non-tensor, another dtype or
dim count, a size of 0 or beyond the kernels' 32-bit lengths (stride-0 expanded, so no
memory), odd strides, misaligned or transposed views, negated views, freed storages, sparse
or meta tensors, nonsense scales, flags, configs, masks and outs. Spoilings that make any
call invalid are "definite": the call must then fail naming one of the spoiled arguments.
The others ("maybe": a transposed view, a changed size, a stride) may leave it valid, so it
may also fail only on the device, which is checked last.

On CPU (CI) every call ends in an error. The `cuda` variants draw CUDA tensors: a call
that passes validation runs the kernel, and its result's shape is checked.
"""

import math
import re
from typing import Any, Dict, List, Optional, Set, Tuple

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fa_cute
from fa_cute import _C

CONFIG_NAMES = [c["name"] for c in fa_cute.configs()]
HEAD_DIMS = sorted({c["head_dim"] for c in fa_cute.configs()})
VALID_DTYPES = [torch.bfloat16, torch.float16]
BAD_DTYPES = [torch.float32, torch.float64, torch.int8, torch.int32, torch.int64, torch.uint8,
              torch.bool, torch.complex64]
NON_TENSORS = [None, 0, 3, 1.5, "q", [1.0], (2, 2), {"a": 1}, object()]


def huge_lengths(device: str) -> List[int]:
    """Sizes past what the kernels take (`_C.limits()`), and on CPU the largest they do take
    (on a GPU that one would run, for minutes, into an output of terabytes)."""
    max_seqlen = _C.limits()["max_seqlen"]
    return [max_seqlen] * (device == "cpu") + [max_seqlen + 1, 2**31 - 1, 2**31, 2**32 + 3]


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                      HealthCheck.too_slow])


class Spoiled:
    """The names of the arguments an example spoiled: `definite` made the call invalid,
    `maybe` may have."""

    def __init__(self) -> None:
        self.definite: Set[str] = set()
        self.maybe: Set[str] = set()

    def add(self, name: str, definite: bool) -> None:
        (self.definite if definite else self.maybe).add(name)


def names_one_of(message: str, names: Set[str]) -> bool:
    return any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", message) for n in names)


def device_error(message: str) -> bool:
    """The last check's error: every other check passed."""
    return re.match(r"^\w+ is on (cpu|meta)\b", message) is not None


def check_error(exc: BaseException, spoiled: Spoiled) -> None:
    """exc is what the call raised; it must be the error the spoiling allows."""
    assert isinstance(exc, (ValueError, TypeError)), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    if device_error(message):
        assert not spoiled.definite, (
            f"{message!r}: only the device was refused, although {sorted(spoiled.definite)} "
            "were spoiled")
        return
    assert names_one_of(message, spoiled.definite | spoiled.maybe), (
        f"{type(exc).__name__}: {message!r} names none of the spoiled arguments "
        f"(definite {sorted(spoiled.definite)}, maybe {sorted(spoiled.maybe)})")


# Tensors.

def dense(shape: Tuple[int, ...], dtype: torch.dtype, device: str) -> torch.Tensor:
    """Random finite values where the kernel runs (the GPU variant checks that its outputs
    are finite); zeros on CPU, where validation never reads them and random ones would take
    most of the test's time."""
    if device != "cpu" and (dtype.is_floating_point or dtype.is_complex):
        return torch.randn(shape, device=device).to(dtype)
    return torch.zeros(shape, dtype=dtype, device=device)


# In the order they apply: a negated view, a freed storage and a sparse tensor take no
# further views or copies (PyTorch refuses views past a storage's end, and .to() resolves
# the negation).
SPOILINGS = ["non_tensor", "dtype", "swap_dtype", "ndim", "size", "huge", "transpose",
             "last_dim_strided", "padded_rows", "misaligned", "odd_strides", "expand", "meta",
             "neg", "freed", "sparse"]


def spoil_tensor(data: st.DataObject, name: str, t: torch.Tensor, spoiled: Spoiled,
                 device: str) -> Any:
    """t (valid) spoiled in some ways, or t itself; each spoiling recorded under name."""
    kinds = data.draw(st.lists(st.sampled_from(SPOILINGS), max_size=2, unique=True),
                      label=f"{name} spoilings")
    # A strided last dim or a misaligned start is undone by a later spoiling that copies the
    # values into new memory: whether the layout ends up invalid is decided by the last one.
    bad_layout = False
    for kind in sorted(kinds, key=SPOILINGS.index):
        # Those that copy the values need a tensor that is not huge (expanded) or meta.
        copyable = t.numel() <= 1 << 22 and t.device.type != "meta"
        if kind == "non_tensor":
            spoiled.add(name, True)
            return data.draw(st.sampled_from(NON_TENSORS), label=f"{name} value")
        if kind == "dtype":
            t = t.to(data.draw(st.sampled_from(BAD_DTYPES), label=f"{name} dtype"))
            spoiled.add(name, True)
        elif kind == "swap_dtype" and t.dtype in VALID_DTYPES:
            # Valid if every tensor swaps: a mismatch is the error otherwise.
            t = t.to(torch.float16 if t.dtype == torch.bfloat16 else torch.bfloat16)
            spoiled.add(name, False)
        elif kind == "ndim":
            ndim = data.draw(st.sampled_from([0, 1, 2, 3, 5, 6]), label=f"{name} ndim")
            shape = (tuple(t.shape) + (1, 1))[:ndim]
            t = dense(shape, t.dtype, t.device.type)
            spoiled.add(name, True)
        elif kind in ("size", "huge") and t.dim() >= 1:
            dim = data.draw(st.integers(0, t.dim() - 1), label=f"{name} dim")
            sizes = huge_lengths(device) if kind == "huge" else [0, 1, 2, 3, 5, 8, 64]
            n = data.draw(st.sampled_from(sizes), label=f"{name} size")
            shape = list(t.shape)
            shape[dim] = n
            if math.prod(shape) < 2**62:  # PyTorch's numel is an int64
                # Stride 0 in the changed dim (in all, from an empty one): any length
                # without memory.
                t = t.narrow(dim, 0, 1).expand(shape) if t.shape[dim] else \
                    torch.zeros((), dtype=t.dtype, device=t.device).expand(shape)
                spoiled.add(name, False)
        elif kind == "transpose" and t.dim() >= 3:
            t = t.transpose(1, 2)
            spoiled.add(name, False)
        elif kind == "last_dim_strided" and t.dim() >= 1 and copyable:
            t = torch.cat([t, t], dim=-1)[..., ::2]
            bad_layout = t.shape[-1] > 1 and t.numel() > 0
            spoiled.add(name, False)
        elif kind == "padded_rows" and t.dim() >= 1 and t.shape[-1] >= 1 and copyable:
            pad = data.draw(st.sampled_from([1, 3, 4, 8]), label=f"{name} pad")
            t = torch.cat([t, t[..., :1].expand(*t.shape[:-1], pad)], dim=-1)[..., :t.shape[-1]]
            bad_layout = False
            spoiled.add(name, False)
        elif kind == "misaligned" and t.numel() > 0 and copyable:
            offset = data.draw(st.integers(1, 7), label=f"{name} offset")
            buf = torch.zeros(t.numel() + 8, dtype=t.dtype, device=t.device)
            t = buf[offset:offset + t.numel()].view(t.shape)
            # 1 to 7 elements of 2 bytes past a 16-byte boundary; any other dtype or dim
            # count is refused anyway.
            bad_layout = True
            spoiled.add(name, False)
        elif kind == "odd_strides" and t.dim() >= 1:
            strides = data.draw(st.lists(st.integers(0, 200), min_size=t.dim(), max_size=t.dim()),
                                label=f"{name} strides")
            extent = sum((n - 1) * s for n, s in zip(t.shape, strides)) + 1 if t.numel() else 0
            if extent <= 1 << 24:
                t = torch.zeros(extent, dtype=t.dtype, device=t.device).as_strided(t.shape,
                                                                                   strides)
                bad_layout = False
                spoiled.add(name, False)
        elif kind == "expand" and t.dim() >= 1 and t.numel() > 0:
            dim = data.draw(st.integers(0, t.dim() - 1), label=f"{name} expanded dim")
            t = t.narrow(dim, 0, 1).expand(t.shape)
            spoiled.add(name, False)
        elif kind == "neg" and t.dtype is not torch.bool:
            t = t._neg_view()
            spoiled.add(name, True)
        elif kind == "freed":
            t.untyped_storage().resize_(0)
            spoiled.add(name, t.numel() > 0)
        elif (kind == "sparse" and t.dim() >= 1 and not t.is_neg() and "freed" not in kinds
              and copyable):
            t = t.to_sparse()
            spoiled.add(name, True)
        elif kind == "meta" and t.layout == torch.strided:
            t = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
            bad_layout = bad_layout and t.dim() >= 1 and t.stride(-1) != 1  # no data_ptr to misalign
            spoiled.add(name, False)
    if bad_layout:
        spoiled.add(name, True)
    return t


def valid_sizes(data: st.DataObject) -> Dict[str, int]:
    nheads_k = data.draw(st.sampled_from([1, 2, 3]), label="nheads_k")
    return dict(batch=data.draw(st.sampled_from([1, 2, 3]), label="batch"),
                seqlen_q=data.draw(st.sampled_from([1, 2, 37, 130]), label="seqlen_q"),
                seqlen_k=data.draw(st.sampled_from([1, 37, 130]), label="seqlen_k"),
                nheads_k=nheads_k,
                nheads=nheads_k * data.draw(st.sampled_from([1, 2, 4]), label="group"),
                head_dim=data.draw(st.sampled_from(HEAD_DIMS), label="head_dim"))


def valid_tensors(data: st.DataObject, sizes: Dict[str, int], device: str, layout: str
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of the sizes in layout "bnhd" (forward's) or "bhnd" (sdpa's), either held as
    the layout's own contiguous tensors or as transposed views of the other layout."""
    dtype = data.draw(st.sampled_from(VALID_DTYPES), label="dtype")
    views = data.draw(st.booleans(), label="transposed storage")
    b, h, hk, d = sizes["batch"], sizes["nheads"], sizes["nheads_k"], sizes["head_dim"]
    tensors = []
    for n, heads in ((sizes["seqlen_q"], h), (sizes["seqlen_k"], hk), (sizes["seqlen_k"], hk)):
        if views:
            stored = (b, heads, n, d) if layout == "bnhd" else (b, n, heads, d)
            tensors.append(dense(stored, dtype, device).transpose(1, 2))
        else:
            shape = (b, n, heads, d) if layout == "bnhd" else (b, heads, n, d)
            tensors.append(dense(shape, dtype, device))
    return tuple(tensors)


def draw_option(data: st.DataObject, name: str, valid: st.SearchStrategy,
                invalid: st.SearchStrategy, spoiled: Spoiled) -> Any:
    """A valid value of an option, or (a quarter of the time) an invalid one."""
    if data.draw(st.integers(0, 3), label=f"spoil {name}") == 0:
        spoiled.add(name, True)
        return data.draw(invalid, label=name)
    return data.draw(valid, label=name)


FLAGS_INVALID = st.sampled_from([None, 0, 1, "True", 1.0, torch.tensor(True), [True]])
SCALE_VALID = st.one_of(st.none(), st.floats(1e-3, 1e3), st.integers(1, 4))
SCALE_INVALID = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 0, 0.0, -0.0, -1.0, -3, 10**400, True,
                     False, "0.1", [0.1], torch.tensor(0.1), 1j]),
    st.floats(max_value=0.0))
CONFIG_VALID = st.sampled_from([None, "auto"])
CONFIG_INVALID = st.one_of(st.text(max_size=6).filter(lambda s: s not in CONFIG_NAMES + ["auto"]),
                           st.integers(), st.sampled_from([b"auto", ["auto"], 1.0]))


def draw_config(data: st.DataObject, spoiled: Spoiled) -> Any:
    """A built config's name may be for another head dim or GPU: a maybe."""
    if data.draw(st.integers(0, 3), label="named config") == 0:
        spoiled.add("config", False)
        return data.draw(st.sampled_from(CONFIG_NAMES), label="config")
    return draw_option(data, "config", CONFIG_VALID, CONFIG_INVALID, spoiled)


def draw_out(data: st.DataObject, q: Any, k: Any, device: str, spoiled: Spoiled) -> Any:
    """None, q itself, a fresh tensor like q, k (overlaps it) or a spoiled tensor like q."""
    kind = data.draw(st.sampled_from(["none", "none", "q", "fresh", "k", "spoiled"]),
                     label="out kind")
    if kind == "none" or not isinstance(q, torch.Tensor) or q.layout != torch.strided:
        return None
    if kind == "q":
        # out is q: whatever spoiled q may be refused under out's name too (an expanded q
        # is an out whose elements share memory).
        if "q" in spoiled.definite | spoiled.maybe:
            spoiled.add("out", False)
        return q
    if kind == "k":
        # Overlapping memory, unless k (spoiled itself) is empty.
        spoiled.add("out", not (isinstance(k, torch.Tensor) and k.layout == torch.strided
                                and k.numel() == 0))
        return k
    # A q of huge sizes (stride-0 expanded) gets a meta out: no memory, and refused on the
    # device alone.
    fresh = torch.empty(q.shape, dtype=q.dtype, device="meta" if q.device.type == "meta" or
                        q.numel() > 1 << 24 else q.device)
    if kind == "fresh":
        return fresh
    return spoil_tensor(data, "out", fresh, spoiled, device)


# The calls.

def fuzz_forward(data: st.DataObject, device: str) -> None:
    spoiled = Spoiled()
    sizes = valid_sizes(data)
    q, k, v = (spoil_tensor(data, name, t, spoiled, device)
               for name, t in zip("qkv", valid_tensors(data, sizes, device, "bnhd")))
    kwargs = dict(
        causal=draw_option(data, "causal", st.booleans(), FLAGS_INVALID, spoiled),
        softmax_scale=draw_option(data, "softmax_scale", SCALE_VALID, SCALE_INVALID, spoiled),
        return_lse=draw_option(data, "return_lse", st.booleans(), FLAGS_INVALID, spoiled),
        config=draw_config(data, spoiled),
        out=draw_out(data, q, k, device, spoiled))
    try:
        result = fa_cute.forward(q, k, v, **kwargs)
    except Exception as exc:  # noqa: BLE001  (what was raised is the test's subject)
        check_error(exc, spoiled)
        return
    assert not spoiled.definite, f"accepted although {sorted(spoiled.definite)} were spoiled"
    out, lse = result if kwargs["return_lse"] else (result, None)
    assert out.shape == q.shape and out.dtype == q.dtype and out.device == q.device
    if kwargs["out"] is not None:
        assert out is kwargs["out"]
    if lse is not None:
        assert lse.shape == (q.shape[0], q.shape[2], q.shape[1]) and lse.dtype == torch.float32
    assert bool(torch.isfinite(out.float()).all()) or q.shape[1] > k.shape[1]


def fuzz_sdpa(data: st.DataObject, device: str) -> None:
    spoiled = Spoiled()
    sizes = valid_sizes(data)
    query, key, value = (spoil_tensor(data, name, t, spoiled, device)
                         for name, t in zip(("query", "key", "value"),
                                            valid_tensors(data, sizes, device, "bhnd")))
    enable_gqa = draw_option(data, "enable_gqa", st.booleans(), FLAGS_INVALID, spoiled)
    if sizes["nheads"] != sizes["nheads_k"] and enable_gqa is False:
        # Definite unless a spoiled tensor changed the head counts.
        spoiled.add("enable_gqa", not (spoiled.definite | spoiled.maybe)
                    & {"query", "key", "value"})
    kwargs = dict(
        attn_mask=draw_option(data, "attn_mask", st.none(), st.sampled_from(
            [torch.ones(2, 2, dtype=torch.bool), torch.zeros(1), 0, "causal"]), spoiled),
        dropout_p=draw_option(data, "dropout_p", st.sampled_from([0, 0.0, -0.0]),
                              st.sampled_from([0.1, 1.0, math.nan, -0.5, "0", False, None]),
                              spoiled),
        is_causal=draw_option(data, "is_causal", st.booleans(), FLAGS_INVALID, spoiled),
        scale=draw_option(data, "scale", SCALE_VALID, SCALE_INVALID, spoiled),
        enable_gqa=enable_gqa)
    try:
        out = fa_cute.sdpa(query, key, value, **kwargs)
    except Exception as exc:  # noqa: BLE001
        check_error(exc, spoiled)
        return
    assert not spoiled.definite, f"accepted although {sorted(spoiled.definite)} were spoiled"
    assert out.shape == query.shape and out.dtype == query.dtype and out.is_contiguous()
    assert bool(torch.isfinite(out.float()).all())


def fuzz_resolve_config(data: st.DataObject, device: str) -> None:
    spoiled = Spoiled()
    sizes = valid_sizes(data)
    q, k, v = (spoil_tensor(data, name, t, spoiled, device)
               for name, t in zip("qkv", valid_tensors(data, sizes, device, "bnhd")))
    causal = draw_option(data, "causal", st.booleans(), FLAGS_INVALID, spoiled)
    config = draw_config(data, spoiled)
    try:
        name = fa_cute.resolve_config(q, k, v, causal=causal, config=config)
    except Exception as exc:  # noqa: BLE001
        check_error(exc, spoiled)
        return
    assert not spoiled.definite, f"accepted although {sorted(spoiled.definite)} were spoiled"
    assert name in CONFIG_NAMES and (config in (None, "auto") or name == config)


FUZZERS = {"forward": fuzz_forward, "sdpa": fuzz_sdpa, "resolve_config": fuzz_resolve_config}


@pytest.mark.parametrize("entry", list(FUZZERS))
@settings(max_examples=200, **SETTINGS)
@given(data=st.data())
def test_fuzz_cpu(entry: str, data: st.DataObject) -> None:
    FUZZERS[entry](data, "cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("entry", list(FUZZERS))
@settings(max_examples=200, **SETTINGS)
@given(data=st.data())
def test_fuzz_cuda(entry: str, data: st.DataObject) -> None:
    FUZZERS[entry](data, "cuda")
    torch.cuda.synchronize()  # a kernel fault surfaces here, in this example
