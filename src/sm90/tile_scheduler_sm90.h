#pragma once

#include <cute/tensor.hpp>

#include <cutlass/arch/barrier.h>

#include "flash_params.h"
#include "tile_scheduler.h"

// The Hopper forward's tile scheduler: FwdTileScheduler's numbering and static order, and
// for a persistent launch given FwdParams::tile_counter (varlen batches) a dynamic order.
// Device only.

namespace fa_cute {

// Shared memory of the dynamic order's hand-off: a claimer thread (the producer
// warpgroup's second warp) claims each tile and passes it to the producer thread and the
// consumer warpgroups through a ring of two slots.
struct Sm90TileHandoffStorage {
  int tile[2];
  cutlass::arch::ClusterBarrier full[2];   // the claimer wrote slot s (1 arrival)
  cutlass::arch::ClusterBarrier empty[2];  // the producer and every consumer thread read it
};

// The static order deals tiles to CTAs by number (persistent_tile's zigzag), which is even
// only when tiles of one round cost about the same: true of dense batches (the causal L2
// section is searched for the most even deal, tile_scheduler_host.h), not of a varlen batch,
// whose tiles' cost follows each sequence's length (and whose tiles past a sequence's end
// cost nothing), unknown on the host without a sync. With a counter, a CTA's first tile is
// its static one and every later tile is the next unclaimed one (an atomicAdd), so a CTA
// that drew short tiles takes more of them; the tile numbering (longest first for causal
// launches) still decides which start first (docs/perf-notes.md, Serving: varlen prefill).
// The claimer skips tiles with no query row (past a short sequence's end), so neither the
// producer nor the consumers see them. It is a thread of its own because the producer
// thread has 24 registers (32 beside three consumer warpgroups), which the claim's state
// pushed into spills (the d=128 extras variant's 16-20 B to 360 B). The counter must
// be 0 at launch (run_fwd clears it). Only the kExtras variants (the ones varlen batches
// run) of kernels with Traits::kDynamicTileOrder compile the dynamic order; the others keep
// the static one alone.
template <class Traits, bool kExtras>
struct Sm90FwdTileScheduler : FwdTileScheduler<Traits::kBlockM, Traits::kPersistent, Traits::kSplitKV> {
  using Base = FwdTileScheduler<Traits::kBlockM, Traits::kPersistent, Traits::kSplitKV>;
  static constexpr bool kMayBeDynamic = Traits::kDynamicTileOrder && kExtras;
  // Readers of each slot, each arriving on `empty` itself: the producer thread and every
  // consumer thread. (One arrival per warp after a __syncwarp is as correct, but racecheck
  // orders a thread's accesses only by its own arrivals: benchmarks/cpp/racecheck_handoff.cu.)
  static constexpr int kNumReaders = 1 + Traits::kNumConsumerThreads;

  // The kernel's parameters, read where needed (params.tile_counter null: the static order):
  // a copy of the pointer would hold two more registers through the main loops.
  FwdParams const& params;
  Sm90TileHandoffStorage& handoff;

  CUTE_DEVICE Sm90FwdTileScheduler(FwdParams const& params_, Sm90TileHandoffStorage& storage)
      : Base(params_), params(params_), handoff(storage) {}

  CUTE_DEVICE void init_barriers() const {
    if constexpr (!kMayBeDynamic) return;
    CUTE_UNROLL
    for (int s = 0; s < 2; ++s) {
      handoff.full[s].init(1);
      handoff.empty[s].init(kNumReaders);
    }
  }

  CUTE_DEVICE bool dynamic() const { return kMayBeDynamic && params.tile_counter != nullptr; }

  // The tile a CTA runs in `round`; num_tiles or more: none. Static: computed by every
  // thread alike. Dynamic: the claimer's, for the producer thread and the consumer threads.
  CUTE_DEVICE int tile(int round) const {
    if (!dynamic()) return Base::tile(round);
    int const slot = round % 2;
    handoff.full[slot].wait((round / 2) & 1);
    compiler_fence();
    int const tile = handoff.tile[slot];
    compiler_fence();
    handoff.empty[slot].arrive();
    return tile;
  }

  // The claimer thread's loop (dynamic order only): claims tiles until they run out and
  // hands over those with a query row (has_rows(tile)), then a number past the last tile.
  template <class HasRows>
  CUTE_DEVICE void claim_tiles(HasRows const& has_rows) const {
    int handed = 0;
    for (int tile = Base::tile(0); Base::valid(tile); tile = int(gridDim.x) + atomicAdd(params.tile_counter, 1)) {
      if (has_rows(tile)) hand_over(handed++, tile);
    }
    hand_over(handed, Base::num_tiles);
  }

 private:
  CUTE_DEVICE void hand_over(int handed, int tile) const {
    int const slot = handed % 2;
    // The first use of each slot passes at once (a fresh barrier's phase 1 counts as done).
    handoff.empty[slot].wait(((handed / 2) & 1) ^ 1);
    compiler_fence();
    handoff.tile[slot] = tile;
    compiler_fence();
    handoff.full[slot].arrive();  // release: the readers' wait sees the slot's write
  }

  // CUTLASS's mbarrier wait and arrive are asm statements without a memory clobber, so the
  // compiler may move the slot's plain load or store across them (a reader taking the slot
  // before it is written, a claimer overwriting it before it is read: the producer and the
  // consumers then run different tiles and the pipeline hangs). The barriers themselves
  // order the accesses in hardware (arrive releases, try_wait acquires).
  CUTE_DEVICE static void compiler_fence() { asm volatile("" ::: "memory"); }
};

}  // namespace fa_cute
