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


def _torch_cp_worker(rank, world, init, results):
    """PyTorch's own context_parallel (DTensor's ring over SDPA's flash op) with
    fa_cute.activate(): its per-step flash attention runs fa_cute's kernel (counted at _C)."""
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import context_parallel
    from torch.distributed.tensor.experimental._attention import context_parallel_unshard
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=init, rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cuda", (world,))
        gen = torch.Generator().manual_seed(12)
        q, k, v = (torch.randn(2, 8, 256 * world, D, generator=gen).to(f"cuda:{rank}", torch.bfloat16)
                   for _ in range(3))
        calls = []
        forward = fa_cute._C.forward
        fa_cute._C.forward = lambda *a, **kw: calls.append(1) or forward(*a, **kw)
        fa_cute.activate()
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                cp_qkv = [t.clone() for t in (q, k, v)]
                with context_parallel(mesh, buffers=tuple(cp_qkv), buffer_seq_dims=(2, 2, 2)):
                    out = F.scaled_dot_product_attention(*cp_qkv, is_causal=True)
                (out,) = context_parallel_unshard(mesh, [out], [2])
        finally:
            fa_cute.deactivate()
            fa_cute._C.forward = forward
        results[rank] = ((out.float() - full.float()).abs().max().item(), len(calls))
    finally:
        dist.destroy_process_group()


def test_pytorch_context_parallel_runs_on_fa_cute(tmp_path) -> None:
    import torch.multiprocessing as mp

    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs, this machine has {torch.cuda.device_count()}")
    if not hasattr(torch.library, "get_kernel"):
        pytest.skip("fa_cute.activate needs PyTorch >= 2.9")
    results = mp.Manager().dict()
    mp.spawn(_torch_cp_worker, args=(2, f"file://{tmp_path}/rendezvous", results), nprocs=2)
    for rank in range(2):
        err, calls = results[rank]
        assert calls > 1, f"rank {rank}: fa_cute's kernel ran {calls} times under context_parallel"
        assert err < 2e-2, f"rank {rank}: context-parallel output off by {err}"
