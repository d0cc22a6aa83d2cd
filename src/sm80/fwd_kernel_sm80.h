#pragma once

#include <cute/tensor.hpp>

#include "block_info.h"
#include "flash_params.h"
#include "sm80/epilogue_fwd_sm80.h"
#include "sm80/kernel_traits_sm80.h"
#include "sm80/mainloop_fwd_sm80.h"
#include "softmax.h"
#include "tile_scheduler.h"

namespace fa_cute {

// The pieces of the sm80-instruction forward kernel and its shared memory: the main loop
// (sm80/mainloop_fwd_sm80.h), the epilogue (sm80/epilogue_fwd_sm80.h), the tile
// scheduler (tile_scheduler.h).
template <class Traits, FwdMaskMode kMaskMode>
struct Sm80FwdKernel {
  using Mainloop = Sm80FwdMainloop<Traits, kMaskMode>;
  using Epilogue = Sm80FwdEpilogue<Traits, Mainloop::kEven>;
  using Scheduler = FwdTileScheduler<Traits::kBlockM, Traits::kPersistent, Traits::kSplitKV>;

  struct SharedStorageOwnO {
    typename Mainloop::SharedStorage mainloop;
    typename Epilogue::SharedStorageO epilogue;
  };
  struct SharedStorageOInQ {
    typename Mainloop::SharedStorage mainloop;
  };
  using SharedStorage = cute::conditional_t<Epilogue::kOwnSmem, SharedStorageOwnO, SharedStorageOInQ>;
  static_assert(int(sizeof(SharedStorage)) == Traits::kSmemSize, "the traits' shared memory size is the kernel's");

  static CUTE_DEVICE typename Traits::Element* smem_o(SharedStorage& storage) {
    if constexpr (Epilogue::kOwnSmem) {
      return storage.epilogue.smem_o.data();
    } else {
      return storage.mainloop.smem_q.data();
    }
  }
};

// FlashAttention-2 forward on sm80 instructions: one (kBlockM x d) tile of O for one
// (batch, head) per thread block, or, with Traits::kPersistent, as many blocks as fit on
// the GPU looping over tiles, each loading its next tile's Q and first K under this tile's
// last P V and its O store (the per-tile load latency that a single resident block per SM
// otherwise exposes).
// kMaskMode (FwdMaskMode) compiles out the masking and row predication a launch does not
// need. The general kernel runs even non-causal shapes slower, though its extra code never
// executes there: ptxas gives its main loop a worse register allocation and schedule
// (docs/perf-notes.md, Ampere-style kernel: tile choices).
template <class Traits, FwdMaskMode kMaskMode>
// __launch_bounds__ asks for no more than one resident block: forcing 3 blocks per SM on
// the 64-row decode tile made decode slower (docs/perf-notes.md, Ampere-style kernel: tile choices).
__global__ void __launch_bounds__(Traits::kNThreads)
    fwd_kernel_sm80(__grid_constant__ FwdParams const params) {
  using namespace cute;
  using Kernel = Sm80FwdKernel<Traits, kMaskMode>;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kHeadDim = Traits::kHeadDim;
  int const tidx = threadIdx.x;
  // Compile-time where the mask mode decides it (kNone: never causal; kCausalEven: always).
  bool const is_causal = Sm80FwdMainloop<Traits, kMaskMode>::kEven ? kMaskMode == FwdMaskMode::kCausalEven
                                                                    : params.is_causal;

  extern __shared__ __align__(128) char smem[];
  auto& storage = *reinterpret_cast<typename Kernel::SharedStorage*>(smem);
  typename Kernel::Scheduler const scheduler(params);
  typename Kernel::Mainloop mainloop(params, is_causal, storage.mainloop, tidx);
  typename Kernel::Epilogue epilogue(params);

  auto run_tile = [&](FwdTileCoord const& coord, int next_tile) __attribute__((always_inline)) {
    Tensor acc_o = partition_fragment_C(mainloop.tiled_mma, Shape<Int<kBlockM>, Int<kHeadDim>>{});  // (MMA,MMA_M,MMA_D)
    clear(acc_o);
    constexpr int kNRows = decltype(size<1>(acc_o))::value * 2;  // 2 rows per 16x8 tile
    OnlineSoftmax<kNRows, Traits::kLazyRescale> softmax;
    typename Kernel::Mainloop::Seqlens const seq(params, coord.bidb);
    mainloop.mma(coord, seq, acc_o, softmax, [&] {
      if constexpr (Traits::kPersistent) {
        if (next_tile >= 0) mainloop.load_first(scheduler.coord(next_tile, params, is_causal));
      }
    });
    epilogue.store(softmax, acc_o, mainloop.tiled_mma, coord, seq, Kernel::smem_o(storage), tidx);
  };

  mainloop.load_first(scheduler.coord(scheduler.tile(0), params, is_causal));
  if constexpr (Traits::kPersistent) {
    for (int round = 0, tile = scheduler.tile(0); scheduler.valid(tile); tile = scheduler.tile(++round)) {
      int const next = scheduler.tile(round + 1);
      run_tile(scheduler.coord(tile, params, is_causal), scheduler.valid(next) ? next : -1);
    }
  } else {
    run_tile(scheduler.coord(scheduler.tile(0), params, is_causal), -1);
  }
}

}  // namespace fa_cute
