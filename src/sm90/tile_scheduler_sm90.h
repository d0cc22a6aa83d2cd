#pragma once

#include <cute/tensor.hpp>

#include <cutlass/arch/barrier.h>

#include "flash_params.h"
#include "tile_scheduler.h"

// The Hopper forward's tile scheduler: FwdTileScheduler's numbering and static order, and
// for a persistent launch given FwdParams::tile_counter (varlen batches) a dynamic order.
// Device only.

namespace fa_cute {

// Shared memory of the dynamic order's hand-off: the producer thread claims each tile and
// passes it to the consumer warpgroups through a ring of two slots.
struct Sm90TileHandoffStorage {
  int tile[2];
  cutlass::arch::ClusterBarrier full[2];   // the producer wrote slot s (1 arrival)
  cutlass::arch::ClusterBarrier empty[2];  // every consumer warp read it (one arrival each)
};

// The static order deals tiles to CTAs by number (persistent_tile's zigzag), which is even
// only when tiles of one round cost about the same: true of dense batches (the causal L2
// section is searched for the most even deal, tile_scheduler_host.h), not of a varlen batch,
// whose tiles' cost follows each sequence's length (and whose tiles past a sequence's end
// cost nothing), unknown on the host without a sync. With a counter, a CTA's first tile is
// its static one and every later tile is the next unclaimed one (an atomicAdd), so a CTA
// that drew short tiles takes more of them; the tile numbering (longest first for causal
// launches) still decides which start first (docs/perf-notes.md, Serving: varlen prefill).
// The producer skips tiles with no query row (past a short sequence's end) without handing
// them over, so the consumers never see them. The counter must be 0 at launch (run_fwd
// clears it). Only the persistent kernels' kExtras variants (the ones varlen batches run)
// compile the dynamic order; the others keep the static one's code alone.
template <class Traits, bool kExtras>
struct Sm90FwdTileScheduler : FwdTileScheduler<Traits::kBlockM, Traits::kPersistent, Traits::kSplitKV> {
  using Base = FwdTileScheduler<Traits::kBlockM, Traits::kPersistent, Traits::kSplitKV>;
  static constexpr bool kMayBeDynamic = Traits::kPersistent && kExtras;
  static constexpr int kNumConsumerWarps = Traits::kNumConsumerThreads / 32;

  // The kernel's parameters, read where needed (params.tile_counter null: the static order):
  // a copy of the pointer would hold two more registers through the consumers' main loop.
  FwdParams const& params;
  Sm90TileHandoffStorage& handoff;

  CUTE_DEVICE Sm90FwdTileScheduler(FwdParams const& params_, Sm90TileHandoffStorage& storage)
      : Base(params_), params(params_), handoff(storage) {}

  CUTE_DEVICE void init_barriers() const {
    if constexpr (!kMayBeDynamic) return;
    CUTE_UNROLL
    for (int s = 0; s < 2; ++s) {
      handoff.full[s].init(1);
      handoff.empty[s].init(kNumConsumerWarps);
    }
  }

  CUTE_DEVICE bool dynamic() const { return kMayBeDynamic && params.tile_counter != nullptr; }

  // --- The producer thread ---------------------------------------------------------------------
  CUTE_DEVICE int first_tile() const { return Base::tile(0); }

  // The tile after the producer handed over `handed` tiles: the static order's tile of that
  // round (every tile is handed over there), or the next unclaimed one.
  CUTE_DEVICE int next_tile(int handed) const {
    return dynamic() ? int(gridDim.x) + atomicAdd(params.tile_counter, 1) : Base::tile(handed);
  }

  // Whether the producer hands `tile` over at all: the dynamic order drops tiles with no
  // query row; the static one cannot (the consumers count the same tiles on their own).
  CUTE_DEVICE bool hands_over(int first_row, int seqlen_q) const { return !dynamic() || first_row < seqlen_q; }

  // Hands tile number `handed` to the consumers (dynamic order; the static order's
  // consumers compute it). A tile of num_tiles or more tells them to stop.
  CUTE_DEVICE void hand_over(int handed, int tile) const {
    if (!dynamic()) return;
    int const slot = handed % 2;
    // The first use of each slot passes at once (a fresh barrier's phase 1 counts as done).
    handoff.empty[slot].wait(((handed / 2) & 1) ^ 1);
    handoff.tile[slot] = tile;
    handoff.full[slot].arrive();  // release: the consumers' wait sees the slot's write
  }

  // --- Consumer threads ------------------------------------------------------------------------
  CUTE_DEVICE int consumer_tile(int round) const {
    if (!dynamic()) return Base::tile(round);
    int const slot = round % 2;
    handoff.full[slot].wait((round / 2) & 1);
    int const tile = handoff.tile[slot];
    __syncwarp();  // every lane has read the slot before its warp frees it
    if (threadIdx.x % 32 == 0) handoff.empty[slot].arrive();
    return tile;
  }
};

}  // namespace fa_cute
