"""Kernel-structure cases: more tiles than resident blocks (persistent configs loop over
tiles and prefetch the next tile's Q/K under the current O store), and every ladder rung.
Skipped where PyTorch sees no CUDA GPU."""

import math

import pytest
import torch

import fa_cute
from fa_cute._reference import attention_ref, check_close

pytestmark = pytest.mark.cuda

CONFIGS = fa_cute.configs()
CONFIG_IDS = [c["name"] for c in CONFIGS]


def _check(make_qkv, config: dict, dtype: torch.dtype, batch: int, nheads: int,
           seqlen: int) -> None:
    q, k, v = make_qkv(batch, seqlen, nheads, config["head_dim"], dtype, "cuda")
    out = torch.full_like(q, float("nan"))
    fa_cute.forward(q, k, v, config=config["name"], out=out)
    scale = 1.0 / math.sqrt(config["head_dim"])
    check_close(out, attention_ref(q, k, v, scale), attention_ref(q, k, v, scale, upcast=False))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_more_tiles_than_blocks(make_qkv, config, dtype) -> None:
    """Several waves of tiles (a persistent block runs many tiles, switching (batch, head)
    between them) and one K/V block per tile at the shortest length."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    seqlen = 4 * math.lcm(config["block_m"], config["block_n"])
    nheads = math.ceil(5 * sms / (seqlen // config["block_m"]) / 3)
    _check(make_qkv, config, dtype, 3, nheads, seqlen)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_single_kv_block(make_qkv, config) -> None:
    """seqlen equal to one K/V block: the first iteration is also the last."""
    seqlen = math.lcm(config["block_m"], config["block_n"])
    _check(make_qkv, config, torch.bfloat16, 2, 3, seqlen)


def test_offsets_beyond_2_pow_31_elements(make_qkv) -> None:
    """The second batch of q, k, v and out starts more than 2^31 elements from the first, so
    the kernel's batch offsets must be 64-bit (a 32-bit offset would wrap and read the wrong
    memory, or fault). Each tensor is a strided view into a 4 GiB buffer."""
    free, _ = torch.cuda.mem_get_info()
    batch_stride = 2**31 + 1024  # elements; a multiple of 8 keeps rows 16-byte aligned
    if free < 4 * 2 * (batch_stride + 2**20) + 2**30:
        pytest.skip("needs about 18 GB of free GPU memory")
    config = fa_cute.configs()[0]
    seqlen, nheads, d = math.lcm(config["block_m"], config["block_n"]), 2, config["head_dim"]
    shape, strides = (2, seqlen, nheads, d), (batch_stride, nheads * d, d, 1)
    dense = make_qkv(2, seqlen, nheads, d, torch.bfloat16, "cuda")
    views = []
    for t in (*dense, torch.full_like(dense[0], float("nan"))):
        buf = torch.empty(batch_stride + seqlen * nheads * d, dtype=torch.bfloat16, device="cuda")
        view = buf.as_strided(shape, strides)
        view.copy_(t)
        views.append(view)
    q, k, v, out = views
    fa_cute.forward(q, k, v, config=config["name"], out=out)
    scale = 1.0 / math.sqrt(d)
    check_close(out.contiguous(), attention_ref(*dense, scale),
                attention_ref(*dense, scale, upcast=False))


def test_auto_runs_a_seqlen_that_no_tile_divides(make_qkv) -> None:
    """seqlen 192 is not a multiple of the default 128-row tile: auto's pick runs it (its
    last query tile and key block ragged, row-predicated), whatever tiles the build holds."""
    q, k, v = make_qkv(2, 192, 3, 128, torch.bfloat16, "cuda")
    out = fa_cute.forward(q, k, v)
    scale = 1.0 / math.sqrt(128)
    check_close(out, attention_ref(q, k, v, scale), attention_ref(q, k, v, scale, upcast=False))
