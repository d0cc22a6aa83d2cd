"""Issue 16 on a GPU: gradients of the backward kernel against a float64 reference under
FlashAttention's rule (our max abs error at most twice the plain computation's in the input
dtype, plus a small slack), through `fa_cute.backward`, `forward` and `sdpa`; a compiled
training step equal to eager; a CUDA-graph-captured forward and backward; a toy model
trained on fa_cute against the same model on torch SDPA; opcheck of the ops.
tests/test_backward.py tests the plumbing on CPU.
"""

from typing import List

import pytest
import torch

import fa_cute
from fa_cute import _C
from fa_cute._configs import check_config_fits, smem_limit_of
from fa_cute._reference import attention_grads_ref, attention_ref

from attention_cases import ToyModel, check_grad_errors, check_training_matches, training_losses

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not hasattr(_C, "backward"),
                       reason="this build of fa_cute._C has no backward kernel (_C.backward)"),
]

HEAD_DIMS = [64, 128]
DTYPES = [torch.bfloat16, torch.float16]


def _built(head_dim: int, dtype=torch.bfloat16) -> bool:
    """Whether this build runs both the forward and the backward of a head dim here, in
    dtype (a build may hold one dtype: FA_CUTE_DTYPES)."""
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    if not any(c["head_dim"] == head_dim and name in c["dtypes"] for c in fa_cute.configs()):
        return False
    major, minor = torch.cuda.get_device_capability()
    try:
        config = _C.default_backward_config(head_dim, major, minor)
    except ValueError:
        return False
    return any(c["name"] == config and name in c["dtypes"] for c in BACKWARD_CONFIGS)


def needs_head_dim(head_dim: int, dtype=torch.bfloat16) -> None:
    if not _built(head_dim, dtype):
        pytest.skip(f"head dim {head_dim}, {dtype}: no forward or backward config built for this GPU")


def make(batch, seqlen, heads, head_dim, dtype, grad=True) -> torch.Tensor:
    return torch.randn(batch, seqlen, heads, head_dim, device="cuda", dtype=dtype,
                       requires_grad=grad)


def check_grads(got, q, k, v, dout, scale, *, causal, causal_offset=None) -> List[float]:
    """got against the float64 reference under FlashAttention's rule (check_grad_errors)."""
    ref = attention_grads_ref(q, k, v, dout, scale, causal=causal, causal_offset=causal_offset)
    plain = attention_grads_ref(q, k, v, dout, scale, upcast=False, causal=causal,
                                causal_offset=causal_offset)
    return check_grad_errors(got, ref, plain, q.dtype)


SHAPES = {
    # batch, seqlen_q, seqlen_k, nheads, nheads_k
    "mha-square": (2, 128, 128, 4, 4),
    "gqa-ragged": (2, 113, 1000, 8, 2),
    "mqa": (1, 17, 300, 6, 1),
    "one-row": (3, 1, 17, 4, 2),
    "one-key": (2, 17, 1, 4, 4),
    "no-key-rows": (2, 1000, 113, 4, 2),  # causal: the first 887 rows see no key
    "odd": (1, 17, 17, 2, 1),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_the_reference(shape, causal, head_dim, dtype) -> None:
    needs_head_dim(head_dim, dtype)
    batch, seqlen_q, seqlen_k, nheads, nheads_k = SHAPES[shape]
    q = make(batch, seqlen_q, nheads, head_dim, dtype, grad=False)
    k, v = (make(batch, seqlen_k, nheads_k, head_dim, dtype, grad=False) for _ in range(2))
    dout = make(batch, seqlen_q, nheads, head_dim, dtype, grad=False)
    out, lse = fa_cute.forward(q, k, v, causal=causal, return_lse=True)
    got = fa_cute.backward(dout, q, k, v, out, lse, causal=causal)
    check_grads(got, q, k, v, dout, head_dim ** -0.5, causal=causal)
    if causal and seqlen_q > seqlen_k:
        assert not got[0][:, :seqlen_q - seqlen_k].any(), "rows that see no key: dq must be 0"


# Every backward config of the build, run by name --------------------------------------------
#
# The matrix: dtype x head dim x causal x MHA/GQA/MQA x (seqlen_q, seqlen_k) x layout,
# on every kernel family. Taken from `_C.backward_configs()` at collection, so new configs
# (the Hopper family's bwd_sm90_*, more sm80 tiles) are picked up without editing this file.
# Sampled, not the full product: for each config, every combination of its dtypes, causal,
# head layout (MHA/GQA/MQA) and memory layout, each with a seqlen pair taken in turn from
# SEQLEN_PAIRS (so every pair and every listed length appears for every config); and for
# the head-dim-128 configs, the whole pair list for both causal values in bf16.
# out and lse come from the float64 reference (the backward reads only them), so a head
# dim with a backward config and no forward one is tested too.

BACKWARD_CONFIGS = getattr(_C, "backward_configs", list)()
SEQLEN_PAIRS = [(1, 1), (17, 17), (113, 113), (239, 239), (799, 799), (1024, 1024),
                (4224, 4224), (1, 239), (239, 1), (17, 1024), (1024, 17), (113, 799),
                (799, 113), (239, 4224), (4224, 113)]
HEAD_LAYOUTS = {"mha": (4, 4), "gqa": (6, 2), "mqa": (3, 1)}
MEMORY_LAYOUTS = ("contiguous", "transposed")
DTYPE_OF = {"bf16": torch.bfloat16, "fp16": torch.float16}
SWEEP_HEAD_DIM = 128


def matrix_cases(configs=BACKWARD_CONFIGS) -> list:
    """pytest params (config, dtype, causal, heads, layout, (seqlen_q, seqlen_k)); its
    coverage is checked on CPU in tests/test_backward_config.py."""
    cases = []
    for n, cfg in enumerate(configs):
        combos = [(dtype, causal, heads, layout) for dtype in cfg["dtypes"]
                  for causal in (False, True) for heads in HEAD_LAYOUTS
                  for layout in MEMORY_LAYOUTS]
        # Rotated per config, so that the long pairs meet other combinations in each.
        pairs = [SEQLEN_PAIRS[(i + 5 * n) % len(SEQLEN_PAIRS)] for i in range(len(combos))]
        if len(combos) < len(SEQLEN_PAIRS):  # a config of one dtype: still every pair
            combos += combos[:len(SEQLEN_PAIRS) - len(combos)]
            pairs = [SEQLEN_PAIRS[(i + 5 * n) % len(SEQLEN_PAIRS)] for i in range(len(combos))]
        rows = [(cfg["name"], *combo, pair) for combo, pair in zip(combos, pairs)]
        if cfg["head_dim"] == SWEEP_HEAD_DIM:
            dtype = "bf16" if "bf16" in cfg["dtypes"] else cfg["dtypes"][0]
            rows += [(cfg["name"], dtype, causal, "gqa", "contiguous", pair)
                     for causal in (False, True) for pair in SEQLEN_PAIRS]
        for row in dict.fromkeys(rows):  # in order, without repeats
            name, dtype, causal, heads, layout, (sq, sk) = row
            cases.append(pytest.param(*row, id=f"{name}-{dtype}-{'causal' if causal else 'full'}"
                                              f"-{heads}-{sq}x{sk}-{layout}"))
    return cases


def _config_runs_here(cfg: dict) -> None:
    major, minor = torch.cuda.get_device_capability()
    try:
        check_config_fits(cfg, "this GPU", (major, minor),
                          smem_limit_of(torch.cuda.current_device()))
    except ValueError as exc:
        pytest.skip(str(exc))


def _laid_out(t: torch.Tensor, layout: str) -> torch.Tensor:
    """t (batch, seqlen, heads, d) as given, or copied into (batch, heads, seqlen, d)
    storage viewed with .transpose(1, 2) (SDPA users' layout)."""
    if layout == "contiguous":
        return t.contiguous()
    return t.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.parametrize("config, dtype_name, causal, heads, layout, lengths", matrix_cases())
def test_each_backward_config(config, dtype_name, causal, heads, layout, lengths) -> None:
    cfg = next(c for c in BACKWARD_CONFIGS if c["name"] == config)
    _config_runs_here(cfg)
    dtype, head_dim = DTYPE_OF[dtype_name], cfg["head_dim"]
    (seqlen_q, seqlen_k), (nheads, nheads_k) = lengths, HEAD_LAYOUTS[heads]
    batch = 2 if max(lengths) <= 1024 else 1
    q = _laid_out(make(batch, seqlen_q, nheads, head_dim, dtype, grad=False), layout)
    k, v = (_laid_out(make(batch, seqlen_k, nheads_k, head_dim, dtype, grad=False), layout)
            for _ in range(2))
    dout = _laid_out(make(batch, seqlen_q, nheads, head_dim, dtype, grad=False), layout)
    scale = head_dim ** -0.5
    out64, lse = attention_ref(q, k, v, scale, causal=causal, return_lse=True)
    out = _laid_out(out64.to(dtype), layout)
    got = fa_cute.backward(dout, q, k, v, out, lse.float().contiguous(), causal=causal,
                           config=config)
    check_grads(got, q, k, v, dout, scale, causal=causal)
    if causal and seqlen_q > seqlen_k:
        assert not got[0][:, :seqlen_q - seqlen_k].any(), "rows that see no key: dq must be 0"


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("causal", [False, True])
def test_forward_gradients_in_sdpa_layout(causal, head_dim, dtype) -> None:
    """Autograd through forward on (batch, nheads, seqlen, headdim) storage viewed with
    .transpose(1, 2), a loss that is not a plain sum."""
    needs_head_dim(head_dim, dtype)

    def leaf(seqlen, heads):
        return torch.randn(2, heads, seqlen, head_dim, device="cuda",
                           dtype=dtype).transpose(1, 2).requires_grad_()

    q, k, v = leaf(300, 8), leaf(517, 2), leaf(517, 2)
    out = fa_cute.forward(q, k, v, causal=causal)
    weight = torch.randn_like(out)
    (out * weight).float().sum().backward()
    check_grads((q.grad, k.grad, v.grad), q, k, v, weight, head_dim ** -0.5, causal=causal)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("lengths", [(256, 256), (100, 300), (300, 100)])
def test_sdpa_gradients_top_left(is_causal, lengths) -> None:
    needs_head_dim(128)
    seqlen_q, seqlen_k = lengths
    query = torch.randn(2, 8, seqlen_q, 128, device="cuda", dtype=torch.bfloat16,
                        requires_grad=True)
    key, value = (torch.randn(2, 2, seqlen_k, 128, device="cuda", dtype=torch.bfloat16,
                              requires_grad=True) for _ in range(2))
    out = fa_cute.sdpa(query, key, value, is_causal=is_causal, enable_gqa=True)
    dout = torch.randn_like(out)
    out.backward(dout)
    got = tuple(t.grad.transpose(1, 2) for t in (query, key, value))
    check_grads(got, *(t.transpose(1, 2) for t in (query, key, value)), dout.transpose(1, 2),
                128 ** -0.5, causal=is_causal, causal_offset=0 if is_causal else None)


@pytest.mark.parametrize("api", ["forward", "sdpa"])
def test_recorded_backward_reuses_its_launch(api: str) -> None:
    """A recorded call's backward takes its launch from _cache.RECORDED_BACKWARD after the
    first call of its shapes (checking only dout's layout): three steps of fresh inputs of one
    shape, each against the float64 reference, then a summed loss, whose dout is an expanded
    tensor (stride 0), which the full checks take."""
    from fa_cute import _cache
    head_dim = 64 if _built(64) else 128
    needs_head_dim(head_dim)
    _cache.RECORDED_BACKWARD.clear()

    def step(loss_weight):
        q, k, v = make(2, 333, 4, head_dim, torch.bfloat16), *(make(2, 555, 2, head_dim, torch.bfloat16)
                                                                for _ in range(2))
        if api == "sdpa":
            out = fa_cute.sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                               enable_gqa=True).transpose(1, 2)
        else:
            out = fa_cute.forward(q, k, v, causal=True)
        dout = torch.ones_like(out) if loss_weight is None else loss_weight(out)
        (out.float().sum() if loss_weight is None else (out * dout).float().sum()).backward()
        # sdpa's causal mask is top-left: seqlen_q - seqlen_k as forward's bottom-right offset.
        offset = 0 if api == "sdpa" else None
        check_grads((q.grad, k.grad, v.grad), q, k, v, dout, head_dim ** -0.5, causal=True,
                    causal_offset=offset)

    for _ in range(3):
        step(torch.randn_like)
    assert len(_cache.RECORDED_BACKWARD) == 1
    step(None)


def test_only_requested_gradients() -> None:
    needs_head_dim(128)
    q = make(2, 64, 4, 128, torch.bfloat16)
    k, v = make(2, 64, 4, 128, torch.bfloat16, grad=False), make(2, 64, 4, 128, torch.bfloat16)
    fa_cute.forward(q, k, v).float().sum().backward()
    assert q.grad is not None and k.grad is None and v.grad is not None


def test_unsupported_head_dim_fails_before_the_forward() -> None:
    """A head dim this build has a forward for but no backward: a call that records gradients
    raises before the forward runs, naming the head dim."""
    checked = 0
    for head_dim in (64, 96, 128, 192, 256):
        for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
            has_forward = any(c["head_dim"] == head_dim and name in c["dtypes"]
                              for c in fa_cute.configs())
            if not has_forward or _built(head_dim, dtype):
                continue
            q = make(1, 16, 2, head_dim, dtype)
            with pytest.raises(ValueError, match=rf"headdim of q \({head_dim}\)"):
                fa_cute.forward(q, q, q)
            checked += 1
    if not checked:
        pytest.skip("every head dim and dtype with a forward here has a backward too")


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_training_step_matches_eager(backend: str) -> None:
    needs_head_dim(128)
    torch._dynamo.reset()

    def step(q, k, v):
        out = fa_cute.forward(q, k, v, causal=True)
        return (out.float() * out.float()).mean()

    q = make(2, 300, 8, 128, torch.bfloat16)
    k, v = make(2, 517, 2, 128, torch.bfloat16), make(2, 517, 2, 128, torch.bfloat16)
    step(q, k, v).backward()
    eager = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    torch.compile(step, fullgraph=True, backend=backend)(q, k, v).backward()
    for a, t in zip(eager, (q, k, v)):
        # dq is summed with atomic adds in any order: equal up to that rounding.
        torch.testing.assert_close(t.grad, a, atol=2e-2 * a.abs().max().item(), rtol=0)


def test_cuda_graph_captures_forward_and_backward() -> None:
    needs_head_dim(128)
    q = make(2, 256, 4, 128, torch.bfloat16)
    k, v = make(2, 256, 4, 128, torch.bfloat16), make(2, 256, 4, 128, torch.bfloat16)
    dout = torch.randn(2, 256, 4, 128, device="cuda", dtype=torch.bfloat16)

    def step():
        out = fa_cute.forward(q, k, v, causal=True)
        return torch.autograd.grad(out, (q, k, v), dout)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up: validation caches, allocator pools
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    with torch.no_grad():
        for t in (q, k, v):
            t.copy_(torch.randn_like(t))
        dout.copy_(torch.randn_like(dout))
    graph.replay()
    torch.cuda.synchronize()
    check_grads(captured, q.detach(), k.detach(), v.detach(), dout, 128 ** -0.5, causal=True)


def test_toy_model_trains_like_torch_sdpa() -> None:
    """Two causal attention layers, trained a few steps from the same weights and data on
    fa_cute.sdpa and on torch's SDPA: both losses fall, and stay close step by step."""
    needs_head_dim(128)

    def train(attention) -> List[float]:
        torch.manual_seed(0)
        model = ToyModel(attention, 512).cuda()
        x, target = (torch.randn(4, 256, 512, device="cuda") for _ in range(2))
        return training_losses(model, x, target, torch.optim.AdamW(model.parameters(), lr=1e-3),
                               steps=8, autocast=torch.bfloat16)

    ours = train(lambda q, k, v: fa_cute.sdpa(q, k, v, is_causal=True))
    theirs = train(lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True))
    check_training_matches(ours, theirs, rel_tol=1e-2)


@pytest.mark.parametrize("causal", [False, True])
def test_opcheck(causal: bool) -> None:
    needs_head_dim(128)
    q = make(2, 100, 8, 128, torch.bfloat16)
    k, v = make(2, 300, 2, 128, torch.bfloat16), make(2, 300, 2, 128, torch.bfloat16)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor",
             "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.fa_cute.forward.default,
                          (q, k, v, causal, None, True, None), test_utils=utils)
    torch.library.opcheck(torch.ops.fa_cute.sdpa.default,
                          (*(t.transpose(1, 2) for t in (q, k, v)), causal, None, True),
                          test_utils=utils)
    with torch.no_grad():
        out, lse = fa_cute.forward(q, k, v, causal=causal, return_lse=True)
    torch.library.opcheck(torch.ops.fa_cute.backward.default,
                          (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse,
                           causal, None, False, True),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))
