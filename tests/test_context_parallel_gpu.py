"""fa_cute.context_parallel on GPUs: the virtual ring (one GPU, W virtual ranks) against full
attention through the float64 reference under FlashAttention's 2x rule, outputs and
gradients (check_grad_errors), causal (zigzag) and not, GQA; and ring_attention over NCCL
on 2 and 4 GPUs where the machine has them (skipped otherwise), its shards against one
GPU's virtual ring. tests/test_context_parallel.py tests the logic on CPU."""

import pytest
import torch

import fa_cute
from fa_cute import context_parallel as cp
from fa_cute._reference import attention_grads_ref, attention_ref, check_close

from attention_cases import DEVICE, built_dtype, check_grad_errors, require_head_dim

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not hasattr(fa_cute._C, "backward"), reason="no backward in this build"),
]

D = 128


def _inputs(seqlen, nheads=8, nheads_k=2, seed=0):
    require_head_dim(D)
    dtype = built_dtype(D)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, seqlen, nheads, D, generator=gen).to(DEVICE, dtype)
    k, v, dout = (torch.randn(2, seqlen, h, D, generator=gen).to(DEVICE, dtype)
                  for h in (nheads_k, nheads_k, nheads))
    return q, k, v, dout


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("world, seqlen", [(2, 1024), (4, 2048), (3, 600)])
def test_virtual_ring_matches_full_attention(world, seqlen, causal) -> None:
    q, k, v, dout = _inputs(seqlen, seed=world)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = cp.virtual_ring_attention(*leaves, world=world, causal=causal)
    out.backward(dout)
    scale = D ** -0.5
    check_close(out.detach(), attention_ref(q, k, v, scale, causal=causal),
                attention_ref(q, k, v, scale, upcast=False, causal=causal))
    ref = attention_grads_ref(q, k, v, dout, scale, causal=causal)
    plain = attention_grads_ref(q, k, v, dout, scale, upcast=False, causal=causal)
    check_grad_errors([t.grad for t in leaves], ref, plain, q.dtype)


def _nccl_worker(rank, world, init, causal, results):
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=init, rank=rank, world_size=world)
    try:
        q, k, v, dout = (t.to(f"cuda:{rank}") for t in _inputs(512 * world, seed=11))
        shards = [cp.zigzag_shard(t, rank, world).contiguous().requires_grad_() for t in (q, k, v)]
        out = cp.ring_attention(*shards, causal=causal)
        out.backward(cp.zigzag_shard(dout, rank, world).contiguous())
        results[rank] = [t.detach().cpu() for t in [out] + [s.grad for s in shards]]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("world", [2, 4])
def test_ring_attention_over_nccl(world, causal, tmp_path) -> None:
    import torch.multiprocessing as mp

    if torch.cuda.device_count() < world:
        pytest.skip(f"needs {world} GPUs, this machine has {torch.cuda.device_count()}")
    results = mp.Manager().dict()
    mp.spawn(_nccl_worker, args=(world, f"file://{tmp_path}/rendezvous", causal, results), nprocs=world)
    got = [cp.zigzag_unshard([results[r][i] for r in range(world)]) for i in range(4)]
    q, k, v, dout = _inputs(512 * world, seed=11)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = cp.virtual_ring_attention(*leaves, world=world, causal=causal)
    out.backward(dout)
    # The same pairs and merges as one GPU's virtual ring; dq and the travelling dK/dV sums
    # differ only in the fp32 order of their additions.
    for a, b in zip(got, [out.detach()] + [t.grad for t in leaves]):
        torch.testing.assert_close(a.to(DEVICE), b, atol=2e-2, rtol=2e-2)
