#pragma once

#include <cute/tensor.hpp>

#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/cutlass.h>

#include "block_info.h"
#include "flash_params.h"
#include "sm90/epilogue_fwd_sm90.h"
#include "sm90/kernel_traits_sm90.h"
#include "sm90/mainloop_fwd_sm90.h"
#include "sm90/tile_scheduler_sm90.h"

namespace fa_cute {

// The kernel's argument: the plain problem description plus what the host built from it
// for the main loop and the epilogue (their TMA descriptors). __grid_constant__, so the
// descriptors stay in the parameter space that TMA instructions may address.
template <class Traits, bool kCausal, bool kExtras>
struct Sm90FwdKernelParams {
  FwdParams fwd;
  typename Sm90FwdMainloop<Traits, kCausal, kExtras>::Params mainloop;
  typename Sm90FwdEpilogue<Traits>::Params epilogue;
};

// FlashAttention forward on Hopper: TMA loads, wgmma, warp specialisation. A CTA computes
// (kBlockM x d) tiles of O for one (batch, head) each: one tile, or with
// Traits::kPersistent one CTA per SM loops over tiles in the scheduler's order (static, or
// claimed from a counter for varlen batches: Sm90FwdTileScheduler), its producer running
// ahead into the next tile's loads while the consumers finish this one.
// Warpgroup 0 is the producer: after giving up most of its registers (setmaxnreg) one
// thread issues the loads (Sm90FwdMainloop::load), and in the dynamic order a thread of its
// second warp claims the tiles. The consumer warpgroups own 64 query
// rows each and run the main loop's GEMMs and softmax (Sm90FwdMainloop::Consumer::mma),
// then the epilogue (Sm90FwdEpilogue). Traits::kSplitKV with params.num_splits > 1 (short
// queries): a CTA visits one split's share of the tile's key blocks and writes its O in
// fp32 with its LSE; fwd_combine_kernel merges the splits. kCausal: bottom-right causal
// masking (docs/design.md, Causal alignment; FwdParams::causal_offset). kExtras: the
// variant with a softcap, windows and variable-length batches (FwdParams::cu_seqlens_q),
// each tile's lengths and first rows then read from cu_seqlens (FwdSeqlens).
template <class Traits, bool kCausal, bool kExtras>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    fwd_kernel_sm90(__grid_constant__ Sm90FwdKernelParams<Traits, kCausal, kExtras> const params) {
  using Mainloop = Sm90FwdMainloop<Traits, kCausal, kExtras>;
  using Epilogue = Sm90FwdEpilogue<Traits>;
  using Scheduler = Sm90FwdTileScheduler<Traits, kExtras>;
  FwdParams const& p = params.fwd;

  extern __shared__ __align__(1024) char smem[];
  auto& storage = *reinterpret_cast<typename Traits::SharedStorage*>(smem);
  Scheduler const scheduler(p, storage.tile_handoff);
  Mainloop mainloop(p, params.mainloop, storage);
  if (threadIdx.x == 0) {
    mainloop.init_barriers();
    scheduler.init_barriers();
    cutlass::arch::fence_barrier_init();
  }
  // The barriers must be initialised before any thread waits on or arrives at them; this
  // is the last CTA-wide barrier (the producer warpgroup's idle warps exit below).
  __syncthreads();

  if (cutlass::canonical_warp_group_idx() == 0) {
    // --- Producer ------------------------------------------------------------------------
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (threadIdx.x == 0) {
      mainloop.prefetch_descriptors();
      typename Mainloop::PipelineState st = Mainloop::Pipeline::producer_start_state();
      int q_iter = 0;  // tiles whose Q this CTA has loaded: the Q barriers' phase
      for (int round = 0, tile = scheduler.tile(0); scheduler.valid(tile); tile = scheduler.tile(++round)) {
        FwdTileCoord const coord = scheduler.coord(tile, p, kCausal);
        typename Mainloop::Seqlens const seq(p, coord.bidb);
        FwdKeyRange const keys = mainloop.key_range(coord, seq);
        if (keys.num_blocks() <= 0) continue;  // a tile that sees no key loads nothing
        mainloop.load(coord, seq, keys, st, q_iter);
        ++q_iter;
      }
    } else if (threadIdx.x == 32 && scheduler.dynamic()) {
      scheduler.claim_tiles([&](int tile) {
        FwdTileCoord const coord = scheduler.coord(tile, p, kCausal);
        return coord.m_block * Traits::kBlockM < typename Mainloop::Seqlens(p, coord.bidb).seqlen_q;
      });
    }
    return;
  }

  // --- Consumers -----------------------------------------------------------------------------
  cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
  int const tidx = threadIdx.x - Traits::kNumProducerThreads;
  typename Mainloop::Consumer consumer(mainloop, tidx);
  Epilogue epilogue(p, params.epilogue, storage, tidx);
  int q_iter = 0;
  for (int round = 0, tile = scheduler.tile(0); scheduler.valid(tile); tile = scheduler.tile(++round)) {
    FwdTileCoord const coord = scheduler.coord(tile, p, kCausal);
    typename Mainloop::Seqlens const seq(p, coord.bidb);
    FwdKeyRange const keys = mainloop.key_range(coord, seq);
    typename Mainloop::AccO acc_o;
    cute::clear(acc_o);
    typename Mainloop::Softmax softmax;
    if (keys.num_blocks() > 0) {
      consumer.mma(coord, seq, keys, acc_o, softmax, q_iter);
    } else {
      softmax.reset();  // no row sees a key: O = 0, LSE = -inf
    }
    if (epilogue.store(softmax, acc_o, consumer.tiled_mma_pv, coord, seq, keys.num_blocks())) ++q_iter;
  }
  epilogue.finish();
}

}  // namespace fa_cute
