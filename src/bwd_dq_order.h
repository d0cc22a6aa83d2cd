#pragma once

#include <cstdint>

#include <cute/config.hpp>

#include "block_info.h"  // BwdSeqlens
#include "bwd_params.h"
#include "cute_utils.h"  // floor_div

// The deterministic backward's fixed order of the dQ additions, for every backward family
// (sm80, and the Hopper kernel's consumer warpgroups): which int32 counter of BwdParams::dq_semaphore_ptr
// guards a (batch, query head, query block) row of dq_accum, whose turn it is, and the
// wait / hand-over around a CTA's addition. Without a semaphore (dq_semaphore_ptr null)
// callers keep their unordered atomics and call none of this.
//
// The order. The CTA of key block n adds its dS K_n into query block m of head h. The key
// blocks that touch m are always a prefix 0 .. n_max(m) of the key blocks:
// - non-causal: every key block touches every query block (BwdQueryRange = [0, m_max)),
//   n_max(m) = num_n_blocks - 1.
// - causal: key block n touches the query blocks [max(0, floor(f(n) / kBlockM)), m_max)
//   where f(n) = n * kBlockN - causal_offset, or none when f(n) >= seqlen_q
//   (BwdQueryRange, exact). For a query block m (m * kBlockM < seqlen_q) both conditions
//   together say f(n) <= row_last(m) = min((m + 1) * kBlockM, seqlen_q) - 1, i.e.
//   n <= floor((row_last(m) + causal_offset) / kBlockN): a prefix, and n_max(m) is that
//   bound clamped to num_n_blocks - 1 (FwdKeyRange's n_block_max - 1 of the forward).
//   That covers any causal_offset: a positive one (several key blocks whose f is
//   negative all start at m = 0), a negative one (a query block whose rows all see no key
//   has n_max(m) < 0: no key block touches it, nobody waits on its counter and its
//   dq_accum rows stay the preprocess kernel's zeros), and key blocks that no query row
//   sees (f(n) >= seqlen_q: they add nothing and wait for nothing).
// - a window (the extras variants): its right bound (window_right, non-causal) takes the
//   diagonal's place in n_max(m), and its left bound cuts the prefix from below: the
//   touching key blocks are the interval n_min(m) .. n_max(m) (dq_first_n_block; the
//   inverse of BwdQueryRange's exact rows, tests/cpp/test_bwd.cu). Without a window
//   n_min(m) = 0.
// A key block's turn at m is its rank among n_min(m) .. n_max(m) in the family's order:
// - non-causal: ascending, turn = n - n_min(m). Every CTA visits the query blocks in the same order,
//   so the CTAs of one (batch, K/V head) pipeline behind key block 0 after a skew of one
//   step per key block, paid once per wave of resident CTAs.
// - causal: descending, turn = n_max(m) - n. Key block n starts at query block
//   ~n * kBlockN / kBlockM, so a higher key block reaches any query block it shares with
//   a lower one first: descending is the order in which they arrive anyway. (Ascending
//   would make every key block wait for key block 0 to walk all the query blocks before
//   its own: about twice the time on a causal square problem.) For the deadlock argument
//   below, the CTAs then take the key blocks in descending order too (dq_order_n_block),
//   shortest first, where the default (non-deterministic) launch takes the longest first.
// - rotated (BwdParams::dq_rotate = s + 1; non-causal, no window, a dense batch whose nQ query
//   blocks are 2^s times its nK key blocks: equal lengths and kBlockM = kBlockN >> s): key
//   block n starts at query block n << s and walks them cyclically, so it reaches m at step
//   t(n, m) = (m - (n << s)) mod nQ. At a given m these steps are the nK values congruent to
//   m modulo 2^s, one per key block, so its turn there is t >> s: the order in which they
//   arrive. The ascending order makes the CTAs of one (batch, K/V head) skew by a step per
//   key block (each waits at every query block for the one before it), as many steps as
//   the work itself where there are as many key blocks as steps; rotated, every CTA arrives
//   on its turn and none waits (docs/perf-notes.md, Backward, session 10).
// So counter (b, h, m) counts 0, 1, ..., n_max(m) + 1: the key block whose turn is t
// waits for the value t, adds, and stores t + 1. The fp32 sum of each dq_accum element is
// then in one fixed order whatever the scheduling: two runs give bitwise-equal dq (dk and
// dv never depended on the order: each CTA owns its keys).
//
// No deadlock. A CTA only ever waits for the CTAs of the same (batch, K/V head) whose
// turn comes before its own: those with a lower linear blockIdx (the key block's position
// among its (batch, K/V head)'s CTAs is dq_order_n_block's inverse: ascending non-causal,
// descending causal, key block fastest in BwdTileCoord). CUDA dispatches the CTAs of a
// grid in increasing blockIdx order in practice (not a documented guarantee;
// FlashAttention-2's and -3's deterministic backwards rely on the same), so when a CTA
// spins, every CTA it can wait for has been dispatched: it is resident or done, and (by
// induction on blockIdx) finishes. A family with a persistent or reordered scheduler must
// keep that property: a CTA may wait only for tiles handed out before its own.
//
// The rotated order breaks that rule (key block 0 waits at query block m for the key blocks
// that start nearer m), so it is taken only where all of a (batch, K/V head)'s CTAs can be
// resident at once (the launch asks nK <= half the GPU's SMs, one CTA an SM): then the lowest
// (batch, K/V head) with unfinished CTAs has all of them dispatched (had it not, every SM
// would hold one of its CTAs, more than it has), and among them the CTA at the lowest step
// waits only for CTAs that reached the query block at lower steps, which have passed it: it
// runs.
//
// Memory order. The adds are fp32 atomics (red.global.add, done at L2, no stale L1 line
// can be read). Hand-over: every adder's adds, __threadfence(), the adders' barrier, then
// the leader's st.release.gpu of turn + 1; the next CTA's leader polls with ld.acquire.gpu
// until it reads its turn, then the adders' barrier before any of them adds.

namespace fa_cute {

// Index of the counter of (batch b, query head h, query block m_block) in the contiguous
// int32 buffer (batch, nheads, ceil(seqlen_q / block_m)).
CUTE_HOST_DEVICE int64_t dq_semaphore_index(int b, int h, int m_block, int nheads, int num_m_blocks) {
  return (int64_t(b) * nheads + h) * num_m_blocks + m_block;
}

// The number of counters a launch needs: batch * nheads * ceil(seqlen_q / block_m).
CUTE_HOST_DEVICE int64_t dq_semaphore_count(int batch, int nheads, int seqlen_q, int block_m) {
  return int64_t(batch) * nheads * ((seqlen_q + block_m - 1) / block_m);
}

// The key block of the tile_n-th CTA (0 first) of a (batch, K/V head), of num_n_blocks (the
// batch entry's: a varlen sequence's CTAs past its keys have exited before asking): tile_n
// itself, but descending when deterministic and causal (see above).
CUTE_HOST_DEVICE int dq_order_n_block(BwdParams const& params, int tile_n, int num_n_blocks) {
  return params.dq_semaphore_ptr != nullptr && params.is_causal ? num_n_blocks - 1 - tile_n : tile_n;
}

// The last key block that touches query block m_block of batch entry seq (-1: none): n_max(m)
// above, with the entry's lengths (a varlen sequence's own); with a window bounded on the
// right (window_right, without causal), that bound in place of the diagonal.
template <int kBlockM, int kBlockN, bool kVarlen>
CUTE_HOST_DEVICE int dq_last_n_block(BwdParams const& params, BwdSeqlens<kVarlen> const& seq, int m_block) {
  int const last = (seq.seqlen_k + kBlockN - 1) / kBlockN - 1;
  int const right = bwd_right_bound<true>(params);
  if (right < 0) return last;
  int const row_last = cute::min((m_block + 1) * kBlockM, seq.seqlen_q) - 1;
  return cute::max(-1, cute::min(last, floor_div(row_last + seq.causal_offset + right, kBlockN)));
}

// The first key block that touches query block m_block: 0, or with a window's left bound the
// block of the first key its first row sees. With a window the touching key blocks are
// n_min(m) .. n_max(m) (BwdQueryRange's exact rows, inverted: an interval, not a prefix).
template <int kBlockM, int kBlockN, bool kVarlen>
CUTE_HOST_DEVICE int dq_first_n_block(BwdParams const& params, BwdSeqlens<kVarlen> const& seq, int m_block) {
  int const left = bwd_left_bound<true>(params);
  if (left < 0) return 0;
  int const key_first = m_block * kBlockM + seq.causal_offset - left;
  // Past the last key (a ragged last block included): no block touches m, first > last.
  if (key_first >= seq.seqlen_k) return (seq.seqlen_k + kBlockN - 1) / kBlockN;
  return cute::max(0, floor_div(key_first, kBlockN));
}

// The rotated order (above), s = shift: the query block key block n visits first, and its
// turn at query block m (of num_n << shift). No division: the dQ warp that asks runs on 24
// registers.
CUTE_HOST_DEVICE int dq_rotated_first_m(int n, int shift) { return n << shift; }
CUTE_HOST_DEVICE int dq_rotated_turn(int n, int m, int num_n, int shift) {
  int const t = m - (n << shift);
  return (t < 0 ? t + (num_n << shift) : t) >> shift;
}

// Key block n_block's turn at query block m_block, which it touches: its rank among the
// touching key blocks n_min(m) .. n_max(m), ascending non-causal, descending causal, or in
// the rotated order.
template <int kBlockM, int kBlockN, bool kVarlen>
CUTE_HOST_DEVICE int dq_turn(BwdParams const& params, BwdSeqlens<kVarlen> const& seq, int n_block, int m_block) {
  if (params.dq_rotate) {
    return dq_rotated_turn(n_block, m_block, (seq.seqlen_k + kBlockN - 1) / kBlockN, params.dq_rotate - 1);
  }
  return params.is_causal ? dq_last_n_block<kBlockM, kBlockN>(params, seq, m_block) - n_block
                          : n_block - dq_first_n_block<kBlockM, kBlockN>(params, seq, m_block);
}

#if defined(__CUDA_ARCH__)
CUTE_DEVICE int dq_load_acquire(int const* ptr) {
  int value;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(value) : "l"(ptr) : "memory");
  return value;
}

CUTE_DEVICE void dq_store_release(int* ptr, int value) {
  asm volatile("st.release.gpu.global.b32 [%0], %1;" : : "l"(ptr), "r"(value) : "memory");
}
#endif

// The threads that add a CTA's dQ and meet around its turn: by default the whole CTA
// (thread 0 polls and hands over, __syncthreads); a warp-specialised kernel whose adders are
// some of its warps passes its own (a named barrier over them, and one of them as leader).
struct DqCtaSync {
  CUTE_DEVICE bool leader() const { return threadIdx.x == 0; }
  CUTE_DEVICE void sync() const { __syncthreads(); }
};

// Before the CTA's dQ additions into the counter's rows: the leader spins until the counter
// is `turn`, then the adders sync. Every adder must call it (a barrier).
template <class Sync = DqCtaSync>
CUTE_DEVICE void dq_wait_turn(int const* semaphore, int turn, Sync const& adders = {}) {
#if defined(__CUDA_ARCH__)
  if (adders.leader()) {
    unsigned backoff_ns = 32;
    while (dq_load_acquire(semaphore) != turn) {
      __nanosleep(backoff_ns);
      backoff_ns = backoff_ns < 256 ? backoff_ns * 2 : 256;
    }
  }
  adders.sync();
#endif
}

// After the CTA's dQ additions: make them visible device-wide, then hand the counter to
// turn + 1. Every adder must call it (a barrier).
template <class Sync = DqCtaSync>
CUTE_DEVICE void dq_pass_turn(int* semaphore, int turn, Sync const& adders = {}) {
#if defined(__CUDA_ARCH__)
  __threadfence();
  adders.sync();
  if (adders.leader()) dq_store_release(semaphore, turn + 1);
#endif
}

// A CTA's dQ addition into query block m_block of (batch b, query head h), batch entry seq:
// add() performs it (the family's fp32 atomics); with params.dq_semaphore_ptr it runs in key
// block n_block's turn (every thread of the CTA must call this: barriers), without, as is.
// The family's CTAs must take their key blocks through dq_order_n_block.
template <int kBlockM, int kBlockN, bool kVarlen, class AddFn, class Sync = DqCtaSync>
CUTE_DEVICE void add_dq_in_order(BwdParams const& params, BwdSeqlens<kVarlen> const& seq, int b, int h, int m_block,
                                 int n_block, AddFn&& add, Sync const& adders = {}) {
  if (params.dq_semaphore_ptr == nullptr) {
    add();
    return;
  }
  int* const semaphore = params.dq_semaphore_ptr + dq_semaphore_index(b, h, m_block, params.nheads,
                                                                      (params.seqlen_q + kBlockM - 1) / kBlockM);
  int const turn = dq_turn<kBlockM, kBlockN>(params, seq, n_block, m_block);
  dq_wait_turn(semaphore, turn, adders);
  add();
  dq_pass_turn(semaphore, turn, adders);
}

}  // namespace fa_cute
