"""fa_cute.forward on a GPU, against a float64 reference with FlashAttention's accuracy rule
(fa_cute._reference.check_close). Skipped where PyTorch sees no CUDA GPU."""

import math
import zlib
from typing import Optional

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fa_cute
from fa_cute import _C, _launch
from fa_cute._reference import attention_ref, check_close

pytestmark = pytest.mark.cuda

# The dtypes this build holds (FA_CUTE_DTYPES may leave one out).
_BUILT_DTYPES = {name for c in fa_cute.configs() for name in c["dtypes"]}
DTYPES = [dt for dt, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"))
          if name in _BUILT_DTYPES]
DTYPE_IDS = [name for name in ("bf16", "fp16") if name in _BUILT_DTYPES]
HEAD_DIM = 128
DEVICE = "cuda"


def blocks(config: dict) -> int:
    """The smallest seqlen the config accepts."""
    return math.lcm(config["block_m"], config["block_n"])


def default_config(seqlen: int, head_dim: int = HEAD_DIM, device: str = DEVICE) -> dict:
    major, minor = torch.cuda.get_device_capability(device)
    name = _C.default_config(head_dim, seqlen, seqlen, major, minor)
    return {c["name"]: c for c in fa_cute.configs()}[name]


def assert_matches_reference(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                             v: torch.Tensor, scale: Optional[float] = None) -> None:
    """out == softmax(q k^T * scale) v within the FlashAttention rule, computed on q's GPU."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    ref = attention_ref(q, k, v, scale, upcast=True)
    plain = attention_ref(q, k, v, scale, upcast=False)
    check_close(out, ref, plain)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("batch, nheads, seqlen",
                         [(1, 1, 128), (2, 3, 256), (3, 2, 640), (1, 2, 4096)])
def test_matches_reference(make_qkv, dtype, batch, nheads, seqlen) -> None:
    assert seqlen % blocks(default_config(seqlen)) == 0, "pick a seqlen the default config takes"
    q, k, v = make_qkv(batch, seqlen, nheads, HEAD_DIM, dtype, DEVICE)
    out = fa_cute.forward(q, k, v)
    assert out.shape == q.shape and out.dtype == dtype and out.device == q.device
    assert_matches_reference(out, q, k, v)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", fa_cute.configs(), ids=[c["name"] for c in fa_cute.configs()])
def test_every_config(make_qkv, config, dtype) -> None:
    seqlen = 2 * blocks(config)
    q, k, v = make_qkv(2, seqlen, 3, config["head_dim"], dtype, DEVICE)
    try:
        out = fa_cute.forward(q, k, v, config=config["name"])
    except ValueError as exc:
        if "needs a GPU of compute capability" not in str(exc):
            raise
        pytest.skip(str(exc))
    assert_matches_reference(out, q, k, v)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def _sm80_built() -> bool:
    """Whether an Ampere-style config of HEAD_DIM is built: the kernel of expanded inputs."""
    return any(c["family"] == "sm80" and c["head_dim"] == HEAD_DIM for c in fa_cute.configs())


@pytest.mark.parametrize("layout", ["bhnd", "packed-qkv", "expanded-kv", "strided-out"])
def test_non_contiguous(make_qkv, dtype, layout) -> None:
    """Views with other strides read and write the same elements as contiguous tensors."""
    batch, seqlen, nheads = 2, 256, 4
    shape = (batch, seqlen, nheads, HEAD_DIM)
    out = None
    if layout == "bhnd":
        q, k, v = make_qkv(batch, seqlen, nheads, HEAD_DIM, dtype, DEVICE, layout="bhnd")
    elif layout == "packed-qkv":  # one (B, N, 3, H, d) buffer, as QKV projections produce
        qkv = torch.randn(batch, seqlen, 3, nheads, HEAD_DIM, device=DEVICE).to(dtype)
        q, k, v = qkv.unbind(dim=2)
    elif layout == "expanded-kv":  # one K/V head broadcast to all heads: head stride 0
        if not _sm80_built():
            pytest.skip("an expanded K/V needs an sm80 config of this head dim (none built)")
        q, _, _ = make_qkv(*shape, dtype, DEVICE)
        k, v = (torch.randn(batch, seqlen, 1, HEAD_DIM, device=DEVICE).to(dtype).expand(shape)
                for _ in range(2))
    else:  # output into (B, H, N, d) storage, poisoned
        q, k, v = make_qkv(*shape, dtype, DEVICE)
        out = torch.full((batch, nheads, seqlen, HEAD_DIM), math.nan, device=DEVICE,
                         dtype=dtype).transpose(1, 2)
    result = fa_cute.forward(q, k, v, out=out)
    assert_matches_reference(result, q, k, v)
    # The same kernel on contiguous copies (auto may pick another kernel for them: an
    # expanded K/V cannot go through TMA).
    config = fa_cute.resolve_config(q, k, v)
    contiguous = fa_cute.forward(q.contiguous(), k.contiguous(), v.contiguous(), config=config)
    assert torch.equal(result, contiguous)


def test_expanded_kv_and_the_hopper_kernel(make_qkv) -> None:
    """TMA cannot broadcast: auto sends an expanded K/V to the sm80 kernel; naming a Hopper
    config for it is refused with the argument and the way out."""
    hopper = [c["name"] for c in fa_cute.configs()
              if c["family"] == "sm90a" and c["rung"] is None and c["head_dim"] == HEAD_DIM
              and c["dtypes"] != ["e4m3"]]
    if not hopper or not _sm80_built() or torch.cuda.get_device_capability(DEVICE) != (9, 0):
        pytest.skip("needs built Hopper and sm80 configs and a compute capability 9.0 GPU")
    shape = (2, 256, 4, HEAD_DIM)
    q, _, _ = make_qkv(*shape, DTYPES[0], DEVICE)
    k, v = (torch.randn(2, 256, 1, HEAD_DIM, device=DEVICE).to(DTYPES[0]).expand(shape)
            for _ in range(2))
    assert fa_cute.resolve_config(q, k, v).startswith("sm80")
    assert_matches_reference(fa_cute.forward(q, k, v), q, k, v)
    with pytest.raises(ValueError, match=r"k has stride 0 in its nheads dim .*TMA.*\.contiguous\(\)"):
        fa_cute.forward(q, k, v, config=hopper[0])
    assert_matches_reference(fa_cute.forward(q, k.contiguous(), v.contiguous(), config=hopper[0]),
                             q, k, v)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("magnitude, offset", [(10.0, 0.0), (30.0, 0.0), (1.0, 4.0), (8.0, -3.0)],
                         ids=["x10", "x30", "offset+4", "x8-offset-3"])
def test_large_magnitude_and_offsets(make_qkv, dtype, magnitude, offset) -> None:
    """Peaky softmax (row maxima that move between key blocks) and shifted inputs."""
    q, k, v = make_qkv(1, 1024, 2, HEAD_DIM, dtype, DEVICE, magnitude=magnitude, offset=offset)
    assert_matches_reference(fa_cute.forward(q, k, v), q, k, v)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("scale", [0.5, 0.01, 1e-6])
def test_softmax_scale(make_qkv, dtype, scale) -> None:
    q, k, v = make_qkv(2, 256, 2, HEAD_DIM, dtype, DEVICE)
    assert_matches_reference(fa_cute.forward(q, k, v, softmax_scale=scale), q, k, v, scale)


def test_default_scale_is_inverse_sqrt_head_dim(make_qkv) -> None:
    q, k, v = make_qkv(1, 256, 2, HEAD_DIM, DTYPES[0], DEVICE)
    explicit = fa_cute.forward(q, k, v, softmax_scale=1.0 / math.sqrt(HEAD_DIM))
    assert torch.equal(fa_cute.forward(q, k, v), explicit)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_out_poisoned_with_nan_is_fully_written(make_qkv, dtype) -> None:
    q, k, v = make_qkv(2, 512, 3, HEAD_DIM, dtype, DEVICE)
    out = torch.full_like(q, math.nan)
    result = fa_cute.forward(q, k, v, out=out)
    assert result is out
    assert not torch.isnan(out).any()
    assert_matches_reference(out, q, k, v)


def test_out_may_be_q(make_qkv) -> None:
    """In place: every thread block reads its Q tile before writing the same rows of O."""
    q, k, v = make_qkv(2, 512, 2, HEAD_DIM, DTYPES[0], DEVICE)
    q_before = q.clone()
    result = fa_cute.forward(q, k, v, out=q)
    assert result is q
    assert_matches_reference(result, q_before, k, v)


def test_side_stream(make_qkv) -> None:
    """The kernel runs on PyTorch's current stream: here a side stream whose inputs are
    written only after a long sleep on that stream. A launch on any other stream would read
    the NaN that fills them until then."""
    src = make_qkv(2, 1024, 2, HEAD_DIM, DTYPES[0], DEVICE)
    q, k, v = (torch.full_like(t, math.nan) for t in src)
    fa_cute.forward(*src)  # load the kernel first: a lazy module load may synchronize
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # about 50 ms at 2 GHz
        for dst, s in zip((q, k, v), src):
            dst.copy_(s)
        out = fa_cute.forward(q, k, v)
    side.synchronize()
    assert_matches_reference(out, *src)


def test_current_stream_handle() -> None:
    """The launch's stream handle (PyTorch's private raw-stream binding where this PyTorch
    has it) is the one torch.cuda.current_stream names: the default stream, a side stream
    inside torch.cuda.stream, and the default again after it."""
    dev = torch.cuda.current_device()
    assert _launch.current_stream(dev) == torch.cuda.current_stream(dev).cuda_stream
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        assert (_launch.current_stream(dev) == side.cuda_stream
                != torch.cuda.default_stream(dev).cuda_stream)
    assert _launch.current_stream(dev) == torch.cuda.current_stream(dev).cuda_stream


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_forward_timed(make_qkv, dtype) -> None:
    q, k, v = make_qkv(2, 1024, 4, HEAD_DIM, dtype, DEVICE)
    out, ms = fa_cute.forward_timed(q, k, v)
    assert isinstance(ms, float) and math.isfinite(ms) and ms > 0.0, ms
    assert torch.equal(out, fa_cute.forward(q, k, v)), "two runs differ: a race?"
    assert_matches_reference(out, q, k, v)


@pytest.mark.parametrize("batch, nheads", [(0, 2), (2, 0)])
def test_empty_batch_or_heads(batch, nheads) -> None:
    seqlen = blocks(default_config(256))
    q = torch.randn(batch, seqlen, nheads, HEAD_DIM, device=DEVICE).to(DTYPES[0])
    out = fa_cute.forward(q, q.clone(), q.clone())
    assert out.shape == q.shape and out.dtype == q.dtype and out.device == q.device
    given_out = torch.empty_like(q)
    assert fa_cute.forward(q, q.clone(), q.clone(), out=given_out) is given_out
    assert fa_cute.forward_timed(q, q.clone(), q.clone())[1] == 0.0


def test_rejects_mixed_devices(make_qkv) -> None:
    q, k, v = make_qkv(1, 256, 2, HEAD_DIM, DTYPES[0], DEVICE)
    with pytest.raises(ValueError, match=r"k is on cpu; fa_cute runs on CUDA tensors only"):
        fa_cute.forward(q, k.cpu(), v)
    with pytest.raises(ValueError, match=r"out is on cpu"):
        fa_cute.forward(q, k, v, out=torch.empty_like(q, device="cpu"))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_second_device(make_qkv) -> None:
    """Tensors on cuda:1 run there, on cuda:1's current stream, while cuda:0 stays current."""
    q, k, v = make_qkv(2, 512, 2, HEAD_DIM, DTYPES[0], "cuda:1")
    current = torch.cuda.current_device()
    out = fa_cute.forward(q, k, v)
    assert torch.cuda.current_device() == current
    assert out.device == q.device
    torch.cuda.synchronize("cuda:1")
    assert_matches_reference(out, q, k, v)
    with pytest.raises(ValueError, match=r"k is on cuda:0 but q is on cuda:1"):
        fa_cute.forward(q, k.to("cuda:0"), v)


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 3), nheads=st.integers(1, 5), n_blocks=st.integers(1, 6),
       dtype=st.sampled_from(DTYPES), layout=st.sampled_from(["bnhd", "bhnd"]))
def test_random_shapes(make_qkv, batch, nheads, n_blocks, dtype, layout) -> None:
    seqlen = n_blocks * 128
    assume(seqlen % blocks(default_config(seqlen)) == 0)
    torch.manual_seed(zlib.crc32(repr((batch, nheads, seqlen, dtype, layout)).encode()))
    q, k, v = make_qkv(batch, seqlen, nheads, HEAD_DIM, dtype, DEVICE, layout=layout)
    assert_matches_reference(fa_cute.forward(q, k, v), q, k, v)
