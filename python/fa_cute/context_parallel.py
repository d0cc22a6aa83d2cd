"""Context parallelism: attention over a sequence sharded across ranks (ring attention).

Each rank holds a shard of the sequence's queries, keys and values. The K/V shards travel
around a ring of ranks; at every step each rank attends its queries to the shard it holds,
and the partial attentions are merged by their log-sum-exps (`fa_cute.combine`: exact up to
rounding). The backward goes around the ring once more: dq stays where its queries are,
each shard's dK and dV travel with it and come home summed. Both directions run fa_cute's
kernels (`fa_cute.forward` with return_lse; `fa_cute.backward` from the merged output and
LSE, which it takes as they are).

Causal attention is balanced by the zigzag split: the sequence is cut into 2W chunks for W
ranks, and rank r holds chunks r and 2W - 1 - r (an early and a late one), so that every
rank has the same number of visible (query chunk, key chunk) pairs. Query chunk a sees key
chunk b whole for b < a, causally (its diagonal, equal lengths) for b = a, and not for
b > a.

    zigzag_shard(x, rank, world)          # this rank's two chunks along dim 1
    zigzag_unshard(shards)                # the full tensor from every rank's shard
    virtual_ring_attention(q, k, v, world=W, causal=True)  # one process, W virtual ranks
    ring_attention(q_shard, k_shard, v_shard, causal=True, group=pg)   # torch.distributed

`virtual_ring_attention` runs the ring's arithmetic (the same per-step calls, the same
merge) on one GPU without communication: the tests compare it with full attention.
`ring_attention` moves the shards with torch.distributed point-to-point operations (NCCL on
GPUs), the next shard's transfer issued before the current shard's attention.
"""

from typing import List, Optional, Sequence, Tuple

import torch

from ._api import backward as _fa_backward
from ._api import forward as _fa_forward
from ._combine import combine

__all__ = ["ring_attention", "virtual_ring_attention", "zigzag_shard", "zigzag_unshard"]


# --- The zigzag split ------------------------------------------------------------------------

def _check_world(world, rank: Optional[int] = None) -> int:
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be an int >= 1 (the number of ranks), got {world!r}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int)
                             or not 0 <= rank < world):
        raise ValueError(f"rank must be an int in [0, {world}), got {rank!r}")
    return world


def _chunks_of(rank: int, world: int) -> Tuple[int, int]:
    """The two chunks (of 2 * world) that rank holds: its own and its mirror."""
    return rank, 2 * world - 1 - rank


def zigzag_shard(x: torch.Tensor, rank: int, world: int, dim: int = 1) -> torch.Tensor:
    """Rank's shard of x along dim (the sequence dim of forward's (batch, seqlen, heads,
    headdim) layout): chunks rank and 2 * world - 1 - rank of 2 * world equal chunks,
    concatenated. The length along dim must be a multiple of 2 * world."""
    _check_world(world, rank)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    n = x.shape[dim]
    if n % (2 * world):
        raise ValueError(f"the sequence length {n} (dim {dim}) must be a multiple of 2 * world = "
                         f"{2 * world} for the zigzag split")
    chunks = x.chunk(2 * world, dim=dim)
    first, second = _chunks_of(rank, world)
    return torch.cat([chunks[first], chunks[second]], dim=dim)


def zigzag_unshard(shards: Sequence[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """The full tensor from every rank's shard (`zigzag_shard`'s inverse), shards in rank
    order."""
    world = len(shards)
    _check_world(world)
    chunks: List[Optional[torch.Tensor]] = [None] * (2 * world)
    for rank, shard in enumerate(shards):
        first, second = _chunks_of(rank, world)
        chunks[first], chunks[second] = shard.chunk(2, dim=dim)
    return torch.cat(chunks, dim=dim)


# --- One rank's steps ------------------------------------------------------------------------
# A rank's queries are its two chunks; at each step it holds one rank's K/V shard (two
# chunks). With the zigzag split the visible pairs of a step form one block, so each step is
# one fa_cute call (FlashAttention's zigzag ring):
#   - not causal: every query of the shard over every key of the held shard;
#   - the rank's own shard (step 0): causal over the whole shard (chunk r sees itself
#     causally; chunk 2W-1-r sees chunk r whole and itself causally: the shard's causal mask);
#   - an earlier rank's shard (s < r): every query over the shard's first chunk (chunk s,
#     before both of the rank's chunks; chunk 2W-1-s comes after both);
#   - a later rank's shard (s > r): the second query chunk over the whole shard (both of its
#     chunks lie between the rank's two).

def _block(rank: int, s: int, causal: bool, length: int):
    """(query rows, key rows, causal) of rank's call at the step that holds rank s's shard,
    rows as slices of the two-chunk shards of `length` rows."""
    half = length // 2
    if not causal:
        return slice(0, length), slice(0, length), False
    if s == rank:
        return slice(0, length), slice(0, length), True
    if s < rank:
        return slice(0, length), slice(0, half), False
    return slice(half, length), slice(0, length), False


class _RankState:
    """A rank's running forward: per query chunk, the partial outputs and LSEs so far."""

    def __init__(self):
        self.outs: List[List[torch.Tensor]] = [[], []]
        self.lses: List[List[torch.Tensor]] = [[], []]


def _forward_step(state: _RankState, q, k, v, rank: int, s: int, causal: bool,
                  softmax_scale) -> None:
    """Attend the rank's queries q to the K/V shard it holds (rank s's), adding the partial
    output and LSE of each query chunk the block covers to state."""
    rows, keys, diagonal = _block(rank, s, causal, q.shape[1])
    out, lse = _fa_forward(q[:, rows], k[:, keys], v[:, keys], causal=diagonal,
                           softmax_scale=softmax_scale, return_lse=True)
    half = q.shape[1] // 2
    first = 0 if rows.start == 0 else 1
    for i in range(first, 2):
        lo = (i - first) * half
        state.outs[i].append(out[:, lo:lo + half])
        state.lses[i].append(lse[..., lo:lo + half])


def _merge(state: _RankState, q: torch.Tensor):
    """The shard's merged output and LSE, (batch, 2c, heads, d) and (batch, heads, 2c); a
    chunk that saw no key at all gets 0 and -inf."""
    outs, lses = [], []
    for i, like in enumerate(q.chunk(2, dim=1)):
        if state.outs[i]:
            out, lse = combine(state.outs[i], state.lses[i])
        else:
            batch, n, heads, _ = like.shape
            out = torch.zeros_like(like)
            lse = torch.full((batch, heads, n), float("-inf"), device=like.device)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs, dim=1), torch.cat(lses, dim=-1)


def _backward_step(dq_acc, dk_acc, dv_acc, dout, q, k, v, out, lse, rank: int, s: int,
                   causal: bool, softmax_scale) -> None:
    """The rank's contributions at the step holding rank s's shard (the forward's block):
    dq into its own fp32 accumulator, dk and dv into the shard's."""
    rows, keys, diagonal = _block(rank, s, causal, q.shape[1])
    dq, dk, dv = _fa_backward(dout[:, rows], q[:, rows], k[:, keys], v[:, keys], out[:, rows],
                              lse[..., rows].contiguous(), causal=diagonal,
                              softmax_scale=softmax_scale)
    dq_acc[:, rows] += dq.float()
    dk_acc[:, keys] += dk.float()
    dv_acc[:, keys] += dv.float()


def _zeros_fp32(t: torch.Tensor) -> torch.Tensor:
    return torch.zeros(t.shape, dtype=torch.float32, device=t.device)


# --- The virtual ring ------------------------------------------------------------------------

def _check_inputs(q, k, v, causal) -> None:
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False; got {type(causal).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be (batch, seqlen, nheads, headdim), got shape "
                             f"{tuple(t.shape)}")
    if q.shape[1] != k.shape[1] or k.shape != v.shape:
        raise ValueError(f"q, k and v must have one sequence length (self-attention over the "
                         f"sharded sequence) and k and v one shape; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")


class _VirtualRing(torch.autograd.Function):
    """The ring of `world` ranks simulated in one process: the forward visits, for each
    rank, the K/V shards in ring order; the backward the same, with each shard's dK/dV
    accumulated as the travelling buffers of `ring_attention` would carry them."""

    @staticmethod
    def forward(ctx, q, k, v, world: int, causal: bool, softmax_scale):
        shards = [[zigzag_shard(t, r, world) for t in (q, k, v)] for r in range(world)]
        outs, lses = [], []
        for r in range(world):
            state = _RankState()
            for step in range(world):
                s = (r - step) % world  # the rank whose shard r holds at this step
                _forward_step(state, shards[r][0], shards[s][1], shards[s][2], r, s, causal,
                              softmax_scale)
            out, lse = _merge(state, shards[r][0])
            outs.append(out)
            lses.append(lse)
        ctx.save_for_backward(q, k, v, *outs, *lses)
        ctx.spec = (world, causal, softmax_scale)
        return zigzag_unshard(outs)

    @staticmethod
    def backward(ctx, dout):
        world, causal, scale = ctx.spec
        q, k, v, *rest = ctx.saved_tensors
        outs, lses = rest[:world], rest[world:]
        shards = [[zigzag_shard(t, r, world) for t in (q, k, v)] for r in range(world)]
        douts = [zigzag_shard(dout, r, world) for r in range(world)]
        dq, dk, dv = ([_zeros_fp32(shards[r][i]) for r in range(world)] for i in range(3))
        for r in range(world):
            for step in range(world):
                s = (r - step) % world
                _backward_step(dq[r], dk[s], dv[s], douts[r], shards[r][0], shards[s][1],
                               shards[s][2], outs[r], lses[r], r, s, causal, scale)
        grads = [zigzag_unshard(g).to(q.dtype) for g in (dq, dk, dv)]
        return (*grads, None, None, None)


def virtual_ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, world: int,
                           causal: bool = False, softmax_scale: Optional[float] = None
                           ) -> torch.Tensor:
    """Attention of q over k, v ((batch, seqlen, nheads, headdim), forward's layout; GQA as
    forward takes it) computed as a ring of `world` ranks would compute it, in one process:
    the sequence zigzag-sharded, each rank's queries attended to every shard in ring order
    and merged by LSE, and, with gradients, the ring's backward. seqlen must be a multiple
    of 2 * world. Differentiable."""
    _check_world(world)
    _check_inputs(q, k, v, causal)
    if q.shape[1] % (2 * world):
        raise ValueError(f"seqlen {q.shape[1]} must be a multiple of 2 * world = {2 * world}")
    return _VirtualRing.apply(q, k, v, world, causal, softmax_scale)


# --- The distributed ring ----------------------------------------------------------------------

def _ring_exchange(tensors: Sequence[torch.Tensor], group, rank: int, world: int):
    """Send tensors to the next rank and receive the previous rank's into new buffers;
    returns (the receive buffers, the requests to wait on)."""
    import torch.distributed as dist

    send_to = dist.get_global_rank(group, (rank + 1) % world) if group is not None else (rank + 1) % world
    recv_from = dist.get_global_rank(group, (rank - 1) % world) if group is not None else (rank - 1) % world
    received = [torch.empty_like(t) for t in tensors]
    ops = [dist.P2POp(dist.isend, t, send_to, group) for t in tensors]
    ops += [dist.P2POp(dist.irecv, t, recv_from, group) for t in received]
    return received, dist.batch_isend_irecv(ops)


class _Ring(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal: bool, softmax_scale, group):
        import torch.distributed as dist

        world, rank = dist.get_world_size(group), dist.get_rank(group)
        state = _RankState()
        kv = (k.contiguous(), v.contiguous())
        for step in range(world):
            if step + 1 < world:
                nxt, reqs = _ring_exchange(kv, group, rank, world)  # under this step's attention
            _forward_step(state, q, kv[0], kv[1], rank, (rank - step) % world, causal,
                          softmax_scale)
            if step + 1 < world:
                for req in reqs:
                    req.wait()
                kv = tuple(nxt)
        out, lse = _merge(state, q)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.spec = (causal, softmax_scale, group)
        return out

    @staticmethod
    def backward(ctx, dout):
        import torch.distributed as dist

        causal, scale, group = ctx.spec
        q, k, v, out, lse = ctx.saved_tensors
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        dout = dout.contiguous()
        dq = _zeros_fp32(q)
        # The shard and its dK/dV accumulators travel together; one hop after the last step
        # each rank holds its own shard's sums again.
        kv = (k.contiguous(), v.contiguous())
        dkv = (_zeros_fp32(k), _zeros_fp32(v))
        for step in range(world):
            _backward_step(dq, dkv[0], dkv[1], dout, q, kv[0], kv[1], out, lse, rank,
                           (rank - step) % world, causal, scale)
            if world > 1:
                tensors = (kv + dkv) if step + 1 < world else dkv
                received, reqs = _ring_exchange(tensors, group, rank, world)
                for req in reqs:
                    req.wait()
                if step + 1 < world:
                    kv, dkv = tuple(received[:2]), tuple(received[2:])
                else:
                    dkv = tuple(received)
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                   softmax_scale: Optional[float] = None, group=None) -> torch.Tensor:
    """Attention over a sequence zigzag-sharded across the ranks of `group` (default: the
    world): q, k, v are this rank's shards (`zigzag_shard(x, rank, world)`), (batch,
    shard_len, nheads, headdim) with shard_len even; returns this rank's shard of the output.
    The K/V shards go around the ring by torch.distributed point-to-point operations (NCCL
    on GPUs), the next one in flight while the current one is attended to. Differentiable:
    the backward takes the ring again, each shard's dK and dV travelling with it."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("ring_attention needs an initialised torch.distributed process group "
                           "(torch.distributed.init_process_group); virtual_ring_attention runs "
                           "the same arithmetic in one process")
    _check_inputs(q, k, v, causal)
    if q.shape[1] % 2:
        raise ValueError(f"the shard length {q.shape[1]} must be even (two zigzag chunks)")
    return _Ring.apply(q, k, v, causal, softmax_scale, group)
