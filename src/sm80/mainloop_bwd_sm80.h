#pragma once

#include <cmath>

#include <cute/tensor.hpp>

#include "block_info.h"
#include "bwd_dq_atomics.h"
#include "bwd_dq_order.h"
#include "bwd_params.h"
#include "cute_utils.h"
#include "epilogue_bwd.h"
#include "sm80/kernel_traits_bwd_sm80.h"
#include "softmax.h"  // apply_softcap

namespace fa_cute {

// FlashAttention-2's backward on sm80 instructions (cp.async, ldmatrix, mma.sync): one CTA
// per (key block n_block of kBlockN rows, K/V head hk, batch b). It loads K_j and V_j once,
// then for each query head h of hk's group (GQA/MQA: dK and dV of the group are summed in
// registers) and each query block m that sees key block j (BwdQueryRange), one iteration
// of a single loop over the (h, m) pairs:
//   S  = Q_m K_j^T                                  acc_s  (TiledMmaSdP)
//   P  = exp(S * scale - lse) = exp2(S * scale_log2 - lse * log2 e), masked entries 0
//   dP = dO_m V_j^T                                 acc_dp (TiledMmaSdP)
//   dS = P * (dP - D), D = rowsum(dO * O) from the preprocess kernel
//   dV += P^T dO_m,  dK += dS^T Q_m                 acc_dv, acc_dk (TiledMmadKV)
//   dQ_m += dS K_j: acc_dq (TiledMmadQ) added to the fp32 dq_accum by atomics (in key
//                   block order when deterministic: bwd_dq_order.h)
// and at the end stores dK * scale and dV in the input dtype.
//
// kExtras: the variant that takes a variable-length batch (BwdParams::cu_seqlens_q: each CTA
// takes its sequence's lengths and first rows, BwdSeqlens, and a CTA past the sequence's
// keys, the grid covering the longest, exits at once), a sliding window (the query blocks
// that see the key block, BwdQueryRange, and the window's masks) and a logits softcap
// (S -> t = tanh(S * softcap_premul) as the forward maps it, P from t, and
// dS = P (dP - D) (1 - t^2): the tanh's derivative; the softcap and premul factors cancel
// into softmax_scale, dQ's and dK's factor). The dense variant holds none of their code.
//
// Pipeline. Q_m, dO_m and the block's LSE and D rows (fp32, 4-byte cp.async into shared
// memory: no registers held across the iteration) form one cp.async group, "block m's
// loads". With Traits::kStages == 2 they are double-buffered: iteration i
//   barrier A   cp_async_wait<0> + __syncthreads: block i's loads (issued one iteration
//               earlier; the first with K and V) have landed, and every warp has finished
//               iteration i-1 (its reads of the other stage, of sP and of sdS)
//   issue block i+1's loads into the other stage (in flight during all of iteration i)
//   S, dP (ldmatrix of Q, dO, K, V), P and dS to shared memory
//   barrier B   __syncthreads: sP and sdS are complete
//   dV, dK, dQ (+ atomics)
// Two barriers per iteration. With kStages == 1 (the tiles whose second stage does not fit)
// block i+1's loads are issued after dV and dK, behind a third barrier, and overlap the dQ
// GEMM and its atomics.
//
// Ragged tiles: rows of Q/dO past seqlen_q and of K/V past seqlen_k are zero-filled in
// shared memory (copy_rows), never read from global memory. A query row past seqlen_q, or
// one whose LSE is -inf (it sees no key), takes LSE = +inf: its P is exp2(-inf) = 0, not the
// NaN of -inf - (-inf); then dS = 0 too. (Their LSE/D slots in shared memory are not loaded;
// the row test comes first.) Keys past seqlen_k and, causal, past the diagonal are masked to
// S = -inf, so P = dS = 0 there. Stores skip rows past the ends.
template <class Traits>
struct Sm80BwdMainloop {
  using Element = typename Traits::Element;
  static constexpr int kStages = Traits::kStages;

  struct SharedStorage {
    cute::array_aligned<Element, kStages * cute::cosize_v<typename Traits::SmemLayoutQ>> smem_q;   // stage s at s * cosize
    cute::array_aligned<Element, kStages * cute::cosize_v<typename Traits::SmemLayoutQ>> smem_do;  // stage s at s * cosize
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutKV>> smem_k;
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutKV>> smem_v;
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutPdS>> smem_p;
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutPdS>> smem_ds;
    cute::array_aligned<float, kStages * Traits::kBlockM> smem_lse;   // the block's LSE rows, natural log
    cute::array_aligned<float, kStages * Traits::kBlockM> smem_dsum;  // the block's D rows
  };
  static_assert(int(sizeof(SharedStorage)) == Traits::kSmemSize, "the traits' shared memory size is the kernel's");
};

// cp.async of one 4-byte word (the LSE and D rows of a query block), cached in L1: a row's
// value is read by every CTA of the row's head.
__forceinline__ __device__ void cp_async_4(float* smem_dst, float const* gmem_src) {
  uint32_t const dst = cute::cast_smem_ptr_to_uint(smem_dst);
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(gmem_src));
}

// Which (key block, K/V head, batch) tile blockIdx.x is: key block fastest, so that
// neighbouring CTAs read the same Q and dO (L2), and under causal masking the key blocks
// with the most query blocks (the first ones) start first.
struct BwdTileCoord {
  int n_block;
  int bidh_k;
  int bidb;

  CUTE_HOST_DEVICE BwdTileCoord(int tile, int num_n_blocks, int nheads_k) {
    n_block = tile % num_n_blocks;
    int const bh = tile / num_n_blocks;
    bidh_k = bh % nheads_k;
    bidb = bh / nheads_k;
  }
};

template <class Traits, bool kExtras>
__global__ void __launch_bounds__(Traits::kNThreads, 1) bwd_kernel_sm80(__grid_constant__ BwdParams const params) {
  using namespace cute;
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kStages = Traits::kStages;
  constexpr int kQElems = int(cosize_v<typename Traits::SmemLayoutQ>);  // one stage of Q or dO
  using TileQ = Shape<Int<kBlockM>, Int<kHeadDim>>;   // Q, dO, dQ
  using TileKV = Shape<Int<kBlockN>, Int<kHeadDim>>;  // K, V, dK, dV
  using TileS = Shape<Int<kBlockM>, Int<kBlockN>>;    // S, P, dP, dS
  int const tidx = threadIdx.x;

  int const num_n_blocks = (params.seqlen_k + kBlockN - 1) / kBlockN;
  BwdTileCoord const coord(int(blockIdx.x), num_n_blocks, params.nheads_k);
  BwdSeqlens<kExtras> const seq(params, coord.bidb);
  int const seq_n_blocks = kExtras ? (seq.seqlen_k + kBlockN - 1) / kBlockN : num_n_blocks;
  if (kExtras && coord.n_block >= seq_n_blocks) return;  // past the sequence's keys: nothing to store
  int const n_block = dq_order_n_block(params, coord.n_block, seq_n_blocks);  // deterministic causal: descending
  int const group = params.nheads / params.nheads_k;
  int const right = bwd_right_bound<kExtras>(params);
  int const left = bwd_left_bound<kExtras>(params);
  BwdQueryRange const queries =
      BwdQueryRange::of<kBlockM, kBlockN>(n_block, seq.seqlen_q, seq.seqlen_k, right, left, seq.causal_offset);
  bool const softcap = kExtras && params.softcap_premul != 0.f;

  extern __shared__ __align__(128) char smem[];
  auto& storage = *reinterpret_cast<typename Sm80BwdMainloop<Traits>::SharedStorage*>(smem);
  Tensor sK = make_tensor(make_smem_ptr(storage.smem_k.data()), typename Traits::SmemLayoutKV{});     // (BLK_N,D)
  Tensor sV = make_tensor(make_smem_ptr(storage.smem_v.data()), typename Traits::SmemLayoutKV{});     // (BLK_N,D)
  Tensor sP = make_tensor(make_smem_ptr(storage.smem_p.data()), typename Traits::SmemLayoutPdS{});    // (BLK_M,BLK_N)
  Tensor sdS = make_tensor(make_smem_ptr(storage.smem_ds.data()), typename Traits::SmemLayoutPdS{});  // (BLK_M,BLK_N)
  // Transposed views of the same memory, with and without the swizzle (the register
  // fragments take the unswizzled shape, the ldmatrix.trans copies the swizzled layout).
  Tensor sKt = make_tensor(sK.data(), typename Traits::SmemLayoutKt{});                // (D,BLK_N)
  Tensor sPt = make_tensor(sP.data(), typename Traits::SmemLayoutPdSt{});              // (BLK_N,BLK_M)
  Tensor sdSt = make_tensor(sdS.data(), typename Traits::SmemLayoutPdSt{});            // (BLK_N,BLK_M)
  Tensor sKtNoSwizzle = make_tensor(sK.data(), typename Traits::SmemLayoutKtNoSwizzle{});
  Tensor sPtNoSwizzle = make_tensor(sP.data(), typename Traits::SmemLayoutPdStNoSwizzle{});

  // --- Loads: cp.async, 16 bytes; rows past the length zero-filled, never read ------------
  typename Traits::GmemTiledCopyQKV gmem_tiled_copy;
  auto gmem_thr_copy = gmem_tiled_copy.get_thread_slice(tidx);
  auto load_tile = [&](auto const& gX, auto& sX, auto tile_shape, int num_rows) {
    copy_rows</*kZeroFillRest=*/true>(gmem_tiled_copy, gmem_thr_copy.partition_S(gX), gmem_thr_copy.partition_D(sX),
                                      gmem_thr_copy.partition_S(make_identity_tensor(tile_shape)), num_rows);
  };
  int const key_rows = seq.seqlen_k - n_block * kBlockN;  // keys of this block below seqlen_k (may exceed kBlockN)
  load_tile(gmem_row_tile(static_cast<Element const*>(params.k_ptr),
                          coord.bidb * params.k_batch_stride + coord.bidh_k * params.k_head_stride,
                          seq.offset_k + n_block * kBlockN, params.k_row_stride, TileKV{}),
            sK, TileKV{}, key_rows);
  load_tile(gmem_row_tile(static_cast<Element const*>(params.v_ptr),
                          coord.bidb * params.v_batch_stride + coord.bidh_k * params.v_head_stride,
                          seq.offset_k + n_block * kBlockN, params.v_row_stride, TileKV{}),
            sV, TileKV{}, key_rows);
  // Block m of head h_in_group into stage `stage`: Q_m, dO_m, and the LSE and D of its rows
  // below seqlen_q (threads 0..kBlockM-1 the LSE, the next kBlockM the D), then one fence.
  auto load_query_block = [&](int h_in_group, int m_block, int stage) {
    int const bidh = coord.bidh_k * group + h_in_group;
    int const query_rows = seq.seqlen_q - m_block * kBlockM;
    Tensor sQ_s = make_tensor(make_smem_ptr(storage.smem_q.data() + stage * kQElems), typename Traits::SmemLayoutQ{});
    Tensor sdO_s = make_tensor(make_smem_ptr(storage.smem_do.data() + stage * kQElems), typename Traits::SmemLayoutQ{});
    load_tile(gmem_row_tile(static_cast<Element const*>(params.q_ptr),
                            coord.bidb * params.q_batch_stride + bidh * params.q_head_stride,
                            seq.offset_q + m_block * kBlockM, params.q_row_stride, TileQ{}),
              sQ_s, TileQ{}, query_rows);
    load_tile(gmem_row_tile(static_cast<Element const*>(params.do_ptr),
                            coord.bidb * params.do_batch_stride + bidh * params.do_head_stride,
                            seq.offset_q + m_block * kBlockM, params.do_row_stride, TileQ{}),
              sdO_s, TileQ{}, query_rows);
    if (tidx < 2 * kBlockM) {
      int const row = tidx % kBlockM;
      if (row < query_rows) {
        int64_t const r = seq.stats_row_base(params, coord.bidb, bidh) + m_block * kBlockM + row;
        bool const is_lse = tidx < kBlockM;
        cp_async_4((is_lse ? storage.smem_lse.data() : storage.smem_dsum.data()) + stage * kBlockM + row,
                   (is_lse ? params.lse_ptr : static_cast<float const*>(params.softmax_d_ptr)) + r);
      }
    }
    cp_async_fence();
  };

  // --- MMAs, their operand fragments and ldmatrix copies ------------------------------------
  typename Traits::TiledMmaSdP mma_sdp;
  typename Traits::TiledMmadKV mma_dkv;
  typename Traits::TiledMmadQ mma_dq;
  auto thr_sdp = mma_sdp.get_thread_slice(tidx);
  auto thr_dkv = mma_dkv.get_thread_slice(tidx);
  auto thr_dq = mma_dq.get_thread_slice(tidx);
  using AtomN = typename Traits::SmemCopyAtom;            // ldmatrix: operand stored K-contiguous
  using AtomT = typename Traits::SmemCopyAtomTransposed;  // ldmatrix.trans: operand stored M/N-contiguous
  // S and dP: A = Q / dO (BLK_M,D), B = K / V (BLK_N,D), both K-contiguous.
  auto copy_sdp_a = make_tiled_copy_A(AtomN{}, mma_sdp);
  auto copy_sdp_b = make_tiled_copy_B(AtomN{}, mma_sdp);
  auto thr_copy_sdp_a = copy_sdp_a.get_thread_slice(tidx);
  auto thr_copy_sdp_b = copy_sdp_b.get_thread_slice(tidx);
  // dV and dK: A = P^T / dS^T (BLK_N,BLK_M), B = dO^T / Q^T (D,BLK_M): views of row-major
  // tiles, so both transposed.
  auto copy_dkv_a = make_tiled_copy_A(AtomT{}, mma_dkv);
  auto copy_dkv_b = make_tiled_copy_B(AtomT{}, mma_dkv);
  auto thr_copy_dkv_a = copy_dkv_a.get_thread_slice(tidx);
  auto thr_copy_dkv_b = copy_dkv_b.get_thread_slice(tidx);
  // dQ: A = dS (BLK_M,BLK_N) K-contiguous, B = K^T (D,BLK_N) transposed.
  auto copy_dq_a = make_tiled_copy_A(AtomN{}, mma_dq);
  auto copy_dq_b = make_tiled_copy_B(AtomT{}, mma_dq);
  auto thr_copy_dq_a = copy_dq_a.get_thread_slice(tidx);
  auto thr_copy_dq_b = copy_dq_b.get_thread_slice(tidx);

  Tensor acc_dk = partition_fragment_C(mma_dkv, TileKV{});  // (MMA,MMA_N,MMA_D): sum over heads and query blocks
  Tensor acc_dv = partition_fragment_C(mma_dkv, TileKV{});  // (MMA,MMA_N,MMA_D)
  clear(acc_dk);
  clear(acc_dv);

  // (row, column) in the (BLK_M,BLK_N) tile of each of this thread's S / dP values, viewed
  // as rows x columns (acc_layout_rowcol).
  Tensor coords_s = score_coords<kBlockM, kBlockN>(thr_sdp);
  float const lse_log2e = float(M_LOG2E);

  // One iteration per (query head of the group, query block): h_in_group outer, m_block
  // inner, as the two nested loops of the simple version; block i+1's loads are issued
  // while block i computes.
  int const num_m_blocks = queries.num_blocks();
  int const num_iters = num_m_blocks > 0 ? group * num_m_blocks : 0;
  if (num_iters > 0) load_query_block(0, queries.m_block_min, 0);
  int cur_h = 0;
  int cur_m = queries.m_block_min;
  // The block after (h, m), as (h, m) = (head, block) is advanced at the end of an
  // iteration; computed where needed rather than held through the iteration (registers).
  auto load_next_query_block = [&](int h, int m, int stage) {
    bool const wrap = m + 1 == queries.m_block_max;
    load_query_block(wrap ? h + 1 : h, wrap ? queries.m_block_min : m + 1, stage);
  };
  for (int it = 0; it < num_iters; ++it) {
    int const stage = kStages == 2 ? (it & 1) : 0;
    bool const has_next = it + 1 < num_iters;  // uniform in the CTA
    {
      int const m_block = cur_m;
      int const query_rows = seq.seqlen_q - m_block * kBlockM;
      Tensor sQ = make_tensor(make_smem_ptr(storage.smem_q.data() + stage * kQElems),
                              typename Traits::SmemLayoutQ{});  // (BLK_M,D)
      Tensor sdO = make_tensor(make_smem_ptr(storage.smem_do.data() + stage * kQElems),
                               typename Traits::SmemLayoutQ{});  // (BLK_M,D)
      Tensor sQt = make_tensor(sQ.data(), typename Traits::SmemLayoutQt{});    // (D,BLK_M)
      Tensor sdOt = make_tensor(sdO.data(), typename Traits::SmemLayoutQt{});  // (D,BLK_M)
      Tensor sQtNoSwizzle = make_tensor(sQ.data(), typename Traits::SmemLayoutQtNoSwizzle{});

      // Barrier A: this block's loads (and, the first time, K_j and V_j) have landed, and
      // every warp has finished the previous iteration (its reads of the other stage, sP, sdS).
      cp_async_wait<0>();
      __syncthreads();
      if constexpr (kStages == 2) {
        if (has_next) load_next_query_block(cur_h, cur_m, stage ^ 1);
      }

      // S = Q K^T and dP = dO V^T.
      Tensor acc_s = partition_fragment_C(mma_sdp, TileS{});  // (MMA,MMA_M,MMA_N)
      clear(acc_s);
      {
        Tensor tSrQ = thr_sdp.partition_fragment_A(sQ);  // (MMA,MMA_M,MMA_D)
        Tensor tSrK = thr_sdp.partition_fragment_B(sK);  // (MMA,MMA_N,MMA_D)
        gemm_ss<Traits::kPrefetchSdP>(acc_s, tSrQ, tSrK, thr_copy_sdp_a.partition_S(sQ), thr_copy_sdp_b.partition_S(sK), mma_sdp,
                      copy_sdp_a, copy_sdp_b, thr_copy_sdp_a, thr_copy_sdp_b);
      }
      Tensor acc_dp = partition_fragment_C(mma_sdp, TileS{});  // (MMA,MMA_M,MMA_N)
      clear(acc_dp);
      {
        Tensor tdPrdO = thr_sdp.partition_fragment_A(sdO);  // (MMA,MMA_M,MMA_D)
        Tensor tdPrV = thr_sdp.partition_fragment_B(sV);    // (MMA,MMA_N,MMA_D)
        gemm_ss<Traits::kPrefetchSdP>(acc_dp, tdPrdO, tdPrV, thr_copy_sdp_a.partition_S(sdO), thr_copy_sdp_b.partition_S(sV), mma_sdp,
                      copy_sdp_a, copy_sdp_b, thr_copy_sdp_a, thr_copy_sdp_b);
      }

      // P and dS, row by row (rows x columns views of the accumulators).
      Tensor scores = make_tensor(acc_s.data(), acc_layout_rowcol(acc_s.layout()));  // (ROWS,COLS): S, then P
      Tensor dp = make_tensor(acc_dp.data(), acc_layout_rowcol(acc_dp.layout()));    // (ROWS,COLS): dP, then dS
      // The softcap before the mask, as in the forward: the mask's -inf must stay -inf.
      if (softcap) apply_softcap(acc_s, params.softcap_premul);
      if (BwdQueryRange::needs_mask<kBlockM, kBlockN>(m_block, n_block, seq.seqlen_k, right, left,
                                                        seq.causal_offset)) {
        apply_mask(scores, coords_s, seq.seqlen_k - n_block * kBlockN,
                   m_block * kBlockM + seq.causal_offset - n_block * kBlockN, right, left);
      }
      CUTE_UNROLL
      for (int mi = 0; mi < size<0>(scores); ++mi) {
        int const row = get<0>(coords_s(mi, 0));  // in the tile
        // +inf for rows past seqlen_q and rows that see no key (LSE -inf): P = 0 there.
        float lse_scaled = INFINITY;
        float d = 0.f;
        if (row < query_rows) {
          float const lse = storage.smem_lse[stage * kBlockM + row];
          lse_scaled = lse == -INFINITY ? INFINITY : lse * lse_log2e;
          d = storage.smem_dsum[stage * kBlockM + row];
        }
        CUTE_UNROLL
        for (int ni = 0; ni < size<1>(scores); ++ni) {
          float const t = scores(mi, ni);  // S, or with the softcap tanh(S * premul)
          float const p = exp2_approx(t * params.softmax_scale_log2 - lse_scaled);
          scores(mi, ni) = p;
          dp(mi, ni) = p * (dp(mi, ni) - d);
          // The tanh's derivative; 0 where masked (t = -inf, P = 0), not P * -inf.
          if (softcap) dp(mi, ni) *= fmaxf(1.f - t * t, 0.f);
        }
      }

      // P and dS to shared memory, in the input dtype: the dK/dV GEMMs read them transposed,
      // the dQ GEMM reads dS as it is.
      {
        Tensor rP = convert_type<Element>(acc_s);
        Tensor rdS = convert_type<Element>(acc_dp);
        auto copy_pds = make_tiled_copy_C(typename Traits::SmemCopyAtomPdS{}, mma_sdp);
        auto thr_copy_pds = copy_pds.get_thread_slice(tidx);
        copy(copy_pds, thr_copy_pds.retile_S(rP), thr_copy_pds.partition_D(sP));
        copy(copy_pds, thr_copy_pds.retile_S(rdS), thr_copy_pds.partition_D(sdS));
      }
      // Barrier B: sP and sdS are complete.
      __syncthreads();

      // dV += P^T dO and dK += dS^T Q.
      {
        Tensor tdVrPt = thr_dkv.partition_fragment_A(sPtNoSwizzle);   // (MMA,MMA_N,MMA_M)
        Tensor tdVrdOt = thr_dkv.partition_fragment_B(sQtNoSwizzle);  // (MMA,MMA_D,MMA_M)
        gemm_ss<Traits::kPrefetchdKV>(acc_dv, tdVrPt, tdVrdOt, thr_copy_dkv_a.partition_S(sPt),
                                      thr_copy_dkv_b.partition_S(sdOt), mma_dkv, copy_dkv_a, copy_dkv_b,
                                      thr_copy_dkv_a, thr_copy_dkv_b);
      }
      {
        Tensor tdKrdSt = thr_dkv.partition_fragment_A(sPtNoSwizzle);  // (MMA,MMA_N,MMA_M)
        Tensor tdKrQt = thr_dkv.partition_fragment_B(sQtNoSwizzle);   // (MMA,MMA_D,MMA_M)
        gemm_ss<Traits::kPrefetchdKV>(acc_dk, tdKrdSt, tdKrQt, thr_copy_dkv_a.partition_S(sdSt),
                                      thr_copy_dkv_b.partition_S(sQt), mma_dkv, copy_dkv_a, copy_dkv_b,
                                      thr_copy_dkv_a, thr_copy_dkv_b);
      }
      if constexpr (kStages == 1) {
        // One stage: every warp is done with sQ and sdO; the next block's loads overlap dQ.
        if (has_next) {
          __syncthreads();
          load_next_query_block(cur_h, cur_m, 0);
        }
      }
      int const bidh = coord.bidh_k * group + cur_h;
      int64_t const row_base = seq.dq_accum_row_base(params, coord.bidb, bidh);  // of dq_accum

      // dQ_m += dS K, into the fp32 dq_accum (BwdSeqlens::dq_accum_row_base) by atomics: 8 bytes
      // each on sm_90 (add_dq_atomics), not 16, whose exchange spilled the d=128 tile at 255
      // registers; the whole tile, rows past seqlen_q into the block's own padding.
      {
        Tensor acc_dq = partition_fragment_C(mma_dq, TileQ{});  // (MMA,MMA_M,MMA_D)
        clear(acc_dq);
        Tensor tdQrdS = thr_dq.partition_fragment_A(sdS);          // (MMA,MMA_M,MMA_N)
        Tensor tdQrKt = thr_dq.partition_fragment_B(sKtNoSwizzle);  // (MMA,MMA_D,MMA_N)
        gemm_ss<Traits::kPrefetchdQ>(acc_dq, tdQrdS, tdQrKt, thr_copy_dq_a.partition_S(sdS), thr_copy_dq_b.partition_S(sKt), mma_dq,
                      copy_dq_a, copy_dq_b, thr_copy_dq_a, thr_copy_dq_b);
        Tensor gdQaccum = make_tensor(make_gmem_ptr(params.dq_accum_ptr + (row_base + m_block * kBlockM) * kHeadDim),
                                      TileQ{}, make_stride(Int<kHeadDim>{}, _1{}));  // (BLK_M,D)
        Tensor tdQgdQ = thr_dq.partition_C(gdQaccum);
        Tensor tdQcdQ = thr_dq.partition_C(make_identity_tensor(TileQ{}));
        // deterministic (params.dq_semaphore_ptr): in key block order (bwd_dq_order.h).
        add_dq_in_order<kBlockM, kBlockN>(params, seq, coord.bidb, bidh, m_block, n_block,
                                          [&] { add_dq_atomics</*kBytes=*/8, /*kCheckRows=*/false>(acc_dq, tdQgdQ, tdQcdQ, query_rows); });
      }
    }
    if (++cur_m == queries.m_block_max) {
      cur_m = queries.m_block_min;
      ++cur_h;
    }
  }
  cp_async_wait<0>();  // a tile that no query sees loaded K and V for nothing

  // --- Epilogue: dK * scale and dV in the input dtype, rows below seqlen_k ----------------
  store_dkdv<Element, kBlockN, kHeadDim>(params, thr_dkv, acc_dk, acc_dv, coord.bidb, coord.bidh_k, n_block,
                                         seq.seqlen_k, seq.offset_k);
}

}  // namespace fa_cute
