#pragma once

#include <cstdint>

#include <cutlass/arch/barrier.h>

namespace fa_cute {

// Where a pipeline's user stands: the stage it touches next and that stage's mbarrier
// phase parity, which flips each time the stage index wraps. Producer and consumers keep
// their own states and advance them in the same order.
template <int kStages>
struct Sm90PipelineState {
  int index = 0;
  uint32_t phase = 0;

  __forceinline__ __device__ void advance() {
    if (++index == kStages) {
      index = 0;
      phase ^= 1;
    }
  }
};

// A kStages-deep shared-memory ring filled by TMA and drained by wgmma, on mbarriers:
//   full[s]:  the producer arrives once, announcing the stage's bytes; TMA completes them.
//   empty[s]: one arrival per consumer warpgroup once its wgmmas have read the stage.
// One arrival per warpgroup, not per thread (CUTLASS's PipelineTmaAsync, cluster size 1,
// has all 128 threads arrive): a warpgroup's wgmma retired by warpgroup_wait has finished
// its shared-memory reads for the whole warpgroup, and FlashAttention-3 measured the
// per-thread arrivals as a slowdown (hopper/sm90_pipeline_no_cluster.hpp).
template <int kStages, int kNumConsumerWG>
struct Sm90TmaPipeline {
  using State = Sm90PipelineState<kStages>;

  struct SharedStorage {
    cutlass::arch::ClusterTransactionBarrier full[kStages];
    cutlass::arch::ClusterBarrier empty[kStages];
  };

  SharedStorage& storage;

  // One thread initialises; the caller then fences (fence_barrier_init) and syncs the CTA
  // before any thread uses the barriers.
  __forceinline__ __device__ static void init(SharedStorage& s) {
    for (int i = 0; i < kStages; ++i) {
      s.full[i].init(1);
      s.empty[i].init(kNumConsumerWG);
    }
  }

  // The producer starts one phase ahead: waiting for parity 1 on a fresh barrier returns
  // at once, so the first kStages acquisitions do not wait for consumers.
  __forceinline__ __device__ static State producer_start_state() { return State{0, 1}; }

  // Producer (the one issuing thread): wait until the consumers have freed the stage, then
  // announce the bytes its TMA copies will deliver. Returns the mbarrier those copies signal.
  __forceinline__ __device__ uint64_t& producer_acquire(State const& st, uint32_t bytes) {
    storage.empty[st.index].wait(st.phase);
    storage.full[st.index].arrive_and_expect_tx(bytes);
    return *reinterpret_cast<uint64_t*>(&storage.full[st.index]);
  }

  __forceinline__ __device__ void consumer_wait(State const& st) { storage.full[st.index].wait(st.phase); }

  // Every thread of a consumer warpgroup calls this after warpgroup_wait retired the
  // wgmmas that read the stage; its first thread arrives for the warpgroup.
  __forceinline__ __device__ void consumer_release(State const& st) {
    if (threadIdx.x % 128 == 0) storage.empty[st.index].arrive();
  }

  // One thread frees the stage on behalf of every consumer warpgroup: a stage whose bytes
  // the consumers handed on to another reader (the backward's dQ tile in its Q/dO stage,
  // added by the dQ warp) goes back to the producer only when that reader is done.
  __forceinline__ __device__ void release_for_consumers(State const& st) {
    for (int w = 0; w < kNumConsumerWG; ++w) storage.empty[st.index].arrive();
  }
};

}  // namespace fa_cute
