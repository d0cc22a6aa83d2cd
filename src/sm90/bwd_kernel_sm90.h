#pragma once

#include <cute/tensor.hpp>

#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/cutlass.h>

#include "bwd_dq_order.h"
#include "bwd_params.h"
#include "sm90/kernel_traits_bwd_sm90.h"
#include "sm90/mainloop_bwd_sm90.h"

namespace fa_cute {

// The kernel's argument: the plain problem description plus the main loop's TMA
// descriptors, built on the host. __grid_constant__, so the descriptors stay in the
// parameter space that TMA instructions may address.
template <class Traits>
struct Sm90BwdKernelParams {
  BwdParams bwd;
  Sm90BwdMainloopParams<Traits> mainloop;
};

// FlashAttention backward on Hopper: TMA loads, wgmma, warp specialisation. One CTA per
// (key block, K/V head, batch), numbered as the sm80 kernel's (BwdTileCoord: key block
// fastest). Warpgroup 0 is the producer: after giving up most of its registers
// (setmaxnreg) one thread of warp 0 issues the TMA loads (Sm90BwdMainloop::load), and with
// kdQTile warp 1 adds each step's dQ tile (Sm90BwdMainloop::store_dq; deterministic, in the
// kernels of kTwoDqWarps, warps 1 and 2 take every other step); its other warps exit.
// Warpgroups 1 and 2 own 64 keys each, run the GEMMs (Sm90BwdMainloop::Consumer::mma) and store dK and dV. kExtras: the
// variant that takes a varlen batch (whose CTAs past their sequence's keys exit at once), a
// window or a softcap (Sm90BwdMainloop).
template <class Traits, bool kExtras>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    bwd_kernel_sm90(__grid_constant__ Sm90BwdKernelParams<Traits> const params) {
  using Mainloop = Sm90BwdMainloop<Traits, kExtras>;
  BwdParams const& p = params.bwd;

  extern __shared__ __align__(1024) char smem[];
  auto& storage = *reinterpret_cast<typename Traits::SharedStorage*>(smem);
  int const num_n_blocks = (p.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN;
  BwdTileCoord coord(int(blockIdx.x), num_n_blocks, p.nheads_k);
  BwdSeqlens<kExtras> const seq(p, coord.bidb);
  int const seq_n_blocks = kExtras ? (seq.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN : num_n_blocks;
  if (kExtras && coord.n_block >= seq_n_blocks) return;  // past the sequence's keys: nothing to store
  coord.n_block = dq_order_n_block(p, coord.n_block, seq_n_blocks);  // deterministic causal: descending
  Mainloop mainloop(p, params.mainloop, storage, coord, seq);
  if (threadIdx.x == 0) {
    mainloop.init_barriers();
    cutlass::arch::fence_barrier_init();
  }
  // The barriers must be initialised before any thread waits on or arrives at them; this
  // is the last CTA-wide barrier (the producer warpgroup's idle warps exit below).
  __syncthreads();

  if (cutlass::canonical_warp_group_idx() == 0) {
    // --- Producer ------------------------------------------------------------------------
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    int const warp = cutlass::canonical_warp_idx_sync();
    if (threadIdx.x == 0) {
      mainloop.prefetch_descriptors();
      mainloop.load();
    } else if (Traits::kdQTile && (warp == 1 || warp == 2)) {
      int const lane = cutlass::canonical_lane_idx();
      if constexpr (Mainloop::kTwoDqWarps) {
        if (mainloop.num_dq_warps() == 2) {
          mainloop.template store_dq<2>(lane, warp - 1);
          return;
        }
      }
      if (warp == 1) mainloop.template store_dq<1>(lane, 0);
    }
    return;
  }

  // --- Consumers -----------------------------------------------------------------------------
  cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
  int const tidx = threadIdx.x - Traits::kNumProducerThreads;
  typename Mainloop::AccdKV acc_dk;
  typename Mainloop::AccdKV acc_dv;
  cute::clear(acc_dk);
  cute::clear(acc_dv);
  typename Mainloop::Consumer consumer(mainloop, tidx);
  consumer.mma(acc_dk, acc_dv);
  mainloop.store_dkdv(acc_dk, acc_dv, tidx);
}

}  // namespace fa_cute
