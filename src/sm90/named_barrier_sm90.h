#pragma once

#include <cstdint>

namespace fa_cute {

// Named barriers of the Hopper kernel's consumer warpgroups. CUTLASS's NamedBarrier adds
// its reserved count (8) to these ids, so they never collide with __syncthreads (hardware
// id 0) or CUTLASS's own.
enum class Sm90Barrier : uint32_t {
  kOStaged = 0,  // every consumer thread has written its rows of O to shared memory
  kWgTurn0 = 1,  // ping-pong: consumer warpgroup w may issue its GEMMs (ids 1 to kNumConsumerWG)
  kVTailZeroed = 4,  // a KV cache's last key block: its V rows past the keys are zeroed (kExtras)
};

// Named barriers of the Hopper backward kernel's consumer warpgroups and (kdQFull, kdQEmpty)
// its dQ warp (a kernel of its own: the ids may repeat the forward's).
enum class Sm90BwdBarrier : uint32_t {
  kdSStored = 0,  // both consumer warpgroups have written their keys' columns of dS (and the next step's LSE, D)
  kdSStoredWg0 = 1,  // kdQPerWG: consumer warpgroup w has written its dS (and next LSE, D) (ids 1 and 2)
  kdQTurn = 3,       // deterministic: the consumers around their turn at a query block's dQ (bwd_dq_order.h)
  kdQFull0 = 4,      // kdQTile: the consumers stored step s's dQ tile (ids 4 + s % 2; the dQ warp of step s waits)
  kdQEmpty0 = 6,     // kdQTile: the dQ warp's bulk add has read buffer b (ids 6 + b; the consumers wait)
};

}  // namespace fa_cute
