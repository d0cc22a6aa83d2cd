"""fa_cute.context_parallel on CPU with the kernels stood in for (test_backward.py's
`kernels`: the float64 reference forward, a backward that computes from the merged output
and LSE as the kernel does): the zigzag split and its inverse, the virtual ring's output and
gradients against full attention through the float64 reference (worlds of 1-3 ranks,
causal and not, GQA), and the arguments' checks. tests/test_context_parallel_gpu.py runs
the kernels, and the distributed ring where a machine has several GPUs."""

import pytest
import torch

from fa_cute import context_parallel as cp
from fa_cute._reference import attention_grads_ref, attention_ref

from conftest import install_reference_forward
from test_backward import backward_c, install_backward_c, kernels  # noqa: F401 (fixtures)

BF16 = torch.bfloat16
D = 128


def _qkv(seqlen=24, nheads=4, nheads_k=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, seqlen, nheads, D, generator=gen).to(BF16)
    k, v = (torch.randn(2, seqlen, nheads_k, D, generator=gen).to(BF16) for _ in range(2))
    return q, k, v


def test_zigzag_round_trip() -> None:
    x = torch.arange(2 * 12 * 3).view(2, 12, 3)
    for world in (1, 2, 3):
        shards = [cp.zigzag_shard(x, r, world) for r in range(world)]
        assert all(s.shape == (2, 12 // world, 3) for s in shards)
        assert torch.equal(cp.zigzag_unshard(shards), x)
    # Rank 0 of 2 holds chunks 0 and 3 of 4: positions 0-2 and 9-11.
    assert cp.zigzag_shard(x, 0, 2)[0, :, 0].tolist() == [0, 3, 6, 27, 30, 33]


def test_zigzag_checks() -> None:
    x = torch.zeros(1, 10, 2)
    with pytest.raises(ValueError, match="multiple of 2 \\* world"):
        cp.zigzag_shard(x, 0, 3)
    with pytest.raises(ValueError, match="rank must be"):
        cp.zigzag_shard(x, 2, 2)
    with pytest.raises(ValueError, match="world must be"):
        cp.zigzag_shard(x, 0, 0)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_virtual_ring_matches_full_attention(kernels, world: int, causal: bool) -> None:  # noqa: F811
    q, k, v = (t.requires_grad_() for t in _qkv(seed=world))
    out = cp.virtual_ring_attention(q, k, v, world=world, causal=causal)
    ref = attention_ref(q.detach(), k.detach(), v.detach(), D ** -0.5, causal=causal)
    assert (out.detach().double() - ref).abs().max().item() < 2e-2
    dout = torch.randn(out.shape).to(BF16)
    out.backward(dout)
    ref_grads = attention_grads_ref(q, k, v, dout, D ** -0.5, causal=causal)
    for name, g, r in zip("qkv", (q.grad, k.grad, v.grad), ref_grads):
        err = (g.double() - r).abs().max().item()
        assert err <= 0.02 * r.abs().max().item() + 1e-3, (name, err)
    # One backward call per rank and step (the zigzag split makes each step's visible pairs
    # one block), as many as the forward's.
    assert len(kernels) == world * world


def test_checks() -> None:
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="multiple of 2 \\* world"):
        cp.virtual_ring_attention(q, k, v, world=5)
    with pytest.raises(TypeError, match="causal must be True or False"):
        cp.virtual_ring_attention(q, k, v, world=2, causal=1)
    with pytest.raises(ValueError, match="one sequence length"):
        cp.virtual_ring_attention(q, k[:, :12], v[:, :12], world=2)
    with pytest.raises(RuntimeError, match="init_process_group"):
        cp.ring_attention(q, k, v)


# --- ring_attention over torch.distributed (gloo, CPU processes) ------------------------------
# Each process stands the kernels in as the fixtures do (the float64 reference forward, the
# backward from the merged output and LSE as the kernel computes it): the ring's
# communication and merge through fa_cute's own forward and backward calls.

def _ring_worker(rank: int, world: int, init: str, causal: bool, results) -> None:
    import torch.distributed as dist

    patches = pytest.MonkeyPatch()
    install_reference_forward(patches)
    install_backward_c(patches)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        q, k, v = _qkv(seqlen=8 * world, seed=7)
        dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(8)).to(BF16)
        shards = [cp.zigzag_shard(t, rank, world).requires_grad_() for t in (q, k, v)]
        out = cp.ring_attention(*shards, causal=causal)
        out.backward(cp.zigzag_shard(dout, rank, world))
        results[rank] = [out.detach()] + [t.grad for t in shards]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("world", [2, 3])
def test_ring_attention_over_gloo(world: int, causal: bool, tmp_path) -> None:
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_ring_worker, args=(world, f"file://{tmp_path}/rendezvous", causal, results),
             nprocs=world)
    out, dq, dk, dv = (cp.zigzag_unshard([results[r][i] for r in range(world)]) for i in range(4))
    q, k, v = (t.requires_grad_() for t in _qkv(seqlen=8 * world, seed=7))
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(8)).to(BF16)
    ref = attention_ref(q.detach(), k.detach(), v.detach(), D ** -0.5, causal=causal)
    assert (out.double() - ref).abs().max().item() < 2e-2
    for name, g, r in zip("qkv", (dq, dk, dv), attention_grads_ref(q, k, v, dout, D ** -0.5,
                                                                  causal=causal)):
        err = (g.double() - r).abs().max().item()
        assert err <= 0.02 * r.abs().max().item() + 1e-3, (name, err)
