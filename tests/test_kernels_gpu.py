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
