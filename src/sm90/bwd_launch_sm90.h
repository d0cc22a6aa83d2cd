#pragma once

#include <stdexcept>

#include <cuda_runtime_api.h>

#include <cute/tensor.hpp>

#include "bwd_launch.h"
#include "bwd_params.h"
#include "cuda_check.h"
#include "sm90/bwd_dq_tile_sm90.h"
#include "sm90/bwd_kernel_sm90.h"
#include "sm90/fwd_launch_sm90.h"  // sm90_gmem_tensor: the TMA views and their checks
#include "static_switch.h"

namespace fa_cute {

// How the Hopper backward kernel is launched (the policy of run_bwd, bwd_launch.h): one
// CTA per (key block, K/V head, batch), a flat grid (BwdTileCoord) as the sm80 kernel's,
// the TMA descriptors of Q, dO, K and V built per call (a varlen batch's over the packed
// (total, d, heads, 1) tensors); the kExtras variant for a varlen batch, a window or a
// softcap. A tensor TMA cannot load (a base
// or stride not a multiple of 16 bytes) throws std::invalid_argument naming it, before
// the main kernel is launched. Host only.
template <class Traits_>
struct Sm90BwdLaunch {
  using Traits = Traits_;
  static constexpr char const* kName = "bwd_kernel_sm90 launch";

  static Sm90BwdKernelParams<Traits> to_underlying_arguments(BwdParams const& params) {
    using namespace cute;
    using Element = typename Traits::Element;
    if (params.dq_semaphore_ptr != nullptr && (Traits::kdQBulkReduce || Traits::kdQPerWG)) {
      // The ordered hand-over fences atomics, but bulk reduce-adds complete in the async
      // proxy (_dqbulk), and kdQPerWG's two warpgroups add into the same dQ elements within
      // one turn (_dqwg), in no fixed order.
      throw std::invalid_argument(
          "dq_semaphore: this Hopper backward config (a _dqbulk or _dqwg variant) has no deterministic mode; "
          "use the default Hopper config or an sm80 one");
    }
    int const d = params.head_dim;
    bool const varlen = params.cu_seqlens_q != nullptr;
    int const rows_q = varlen ? params.total_q : params.seqlen_q;
    int const rows_k = varlen ? params.total_k : params.seqlen_k;
    int const batch = varlen ? 1 : params.batch;
    auto mQ = sm90_gmem_tensor<Element>("q", params.q_ptr, rows_q, d, params.nheads, batch, params.q_row_stride,
                                        params.q_head_stride, params.q_batch_stride);
    auto mdO = sm90_gmem_tensor<Element>("dout", params.do_ptr, rows_q, d, params.nheads, batch,
                                         params.do_row_stride, params.do_head_stride, params.do_batch_stride);
    auto mK = sm90_gmem_tensor<Element>("k", params.k_ptr, rows_k, d, params.nheads_k, batch, params.k_row_stride,
                                        params.k_head_stride, params.k_batch_stride);
    auto mV = sm90_gmem_tensor<Element>("v", params.v_ptr, rows_k, d, params.nheads_k, batch, params.v_row_stride,
                                        params.v_head_stride, params.v_batch_stride);
    auto const smem_q = take<0, 2>(typename Traits::SmemLayoutQ{});  // one stage
    return {params,
            {make_tma_copy(SM90_TMA_LOAD{}, mQ, smem_q), make_tma_copy(SM90_TMA_LOAD{}, mdO, smem_q),
             make_tma_copy(SM90_TMA_LOAD{}, mK, typename Traits::SmemLayoutK{}),
             make_tma_copy(SM90_TMA_LOAD{}, mV, typename Traits::SmemLayoutV{})}};
  }

  // Deterministic, non-causal, dense, no window: the rotated order of query blocks
  // (bwd_dq_order.h; s + 1, 0 for none) where the query blocks are 2^s times the key blocks
  // and a (batch, K/V head)'s key blocks, one CTA each, fit half the GPU's SMs (the other
  // half a margin for SMs that other work holds), so that all of them can be resident at
  // once. Only where the dQ adds are the consumers' (atomics) or two dQ warps' (kTwoDqWarps):
  // one dQ warp walks the ascending order (Sm90BwdMainloop::store_dq). The default mode keeps
  // the ascending order too (same speed, measured: docs/perf-notes.md, Backward, session 10),
  // so its dk and dv differ from the deterministic mode's in rounding on these shapes.
  static int rotates_dq_order(BwdParams const& params, int device) {
    if (params.dq_semaphore_ptr == nullptr || params.is_causal || bwd_needs_extras(params)) return 0;
    if (Traits::kdQTile && !Sm90BwdMainloop<Traits, false>::kTwoDqWarps) return 0;
    int const n_blocks = (params.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN;
    int const m_blocks = (params.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM;
    static PerDeviceCache sm_count;
    if (n_blocks > sm_count.get(device, [&] { return device_sm_count(device); }) / 2) return 0;
    for (int shift = 0; shift <= 3; ++shift) {
      if (m_blocks == n_blocks << shift) return shift + 1;
    }
    return 0;
  }

  static void launch(BwdParams const& params_in, int device, cudaStream_t stream) {
    BwdParams params = params_in;
    params.dq_rotate = rotates_dq_order(params, device);
    FA_CUTE_BOOL_SWITCH(bwd_needs_extras(params), kExtras, [&] {
      launch_bwd_kernel<Traits, kExtras>(&bwd_kernel_sm90<Traits, kExtras>, to_underlying_arguments(params), params,
                                         device, stream);
    });
  }

  // dq from dq_accum: the tiled layout's own postprocess (kdQTile), else the row layout's.
  static void postprocess(BwdParams const& params, cudaStream_t stream) {
    if constexpr (Traits::kdQTile) {
      using Post = Sm90dQTilePostprocess<Traits>;
      bwd_postprocess_dq_tile_kernel<Traits><<<Post::grid(params), Post::kNThreads, 0, stream>>>(params);
    } else {
      launch_bwd_postprocess_rows<typename Traits::Element, Traits::kHeadDim>(params, stream);
    }
  }
};

}  // namespace fa_cute
