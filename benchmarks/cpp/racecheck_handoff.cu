// Does compute-sanitizer's racecheck follow the shared-memory hand-off of the Hopper forward's
// dynamic tile order (src/sm90/tile_scheduler_sm90.h)? A claimer thread writes a tile number
// into one of two slots and readers take it, in three protocols:
//   0  the kernel's: readers wait on `full` (mbarrier), every lane loads the slot, then lane 0
//      of each warp arrives on `empty` after a __syncwarp (one arrival per reader warp);
//   1  every reader thread arrives on `empty` itself (CUTLASS's PipelineTmaAsync in one CTA);
//   2  named barriers (bar.sync / bar.arrive) around a single slot, FlashAttention-3's way;
//      the count is the block's 10 warps' 320 threads though warps 0 and 1 have one thread
//      each (a barrier counts whole warps), so run it under `timeout` in case it does not.
// Each mode prints its readers' sums (both must equal the sum of the handed numbers).
// Build and run on an sm_90 GPU (docs/perf-notes.md, Serving: varlen prefill):
//   nvcc -arch=sm_90a -lineinfo -o racecheck_handoff benchmarks/cpp/racecheck_handoff.cu
//   for m in 0 1 2; do compute-sanitizer --tool racecheck --racecheck-report all ./racecheck_handoff $m; done
// Not built by CMake: a one-off probe of the tool, not of fa_cute.
#include <cstdio>
#include <cstdlib>

#include <cuda_runtime.h>

namespace {

using Barrier = unsigned long long;

__device__ unsigned smem_address(void const* p) { return unsigned(__cvta_generic_to_shared(p)); }
__device__ void barrier_init(Barrier* b, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_address(b)), "r"(count) : "memory");
}
__device__ void barrier_arrive(Barrier* b) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_address(b)) : "memory");
}
__device__ void barrier_wait(Barrier* b, int parity) {
  asm volatile(
      "{\n .reg .pred p;\n wait:\n mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n @!p bra wait;\n}" ::"r"(
          smem_address(b)),
      "r"(parity)
      : "memory");
}
__device__ void named_sync(int id, int threads) { asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory"); }
__device__ void named_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

constexpr int kReaders = 256;  // two warpgroups of readers, as the kernel's consumers
constexpr int kThreads = 64 + kReaders;  // thread 0 reads too (the producer), thread 32 claims
constexpr int kEnd = 1 << 30;

template <int kMode>
__global__ void handoff(int* sums, int num_tiles) {
  __shared__ int slot[2];
  __shared__ Barrier full[2], empty[2];
  if (threadIdx.x == 0) {
    for (int s = 0; s < 2; ++s) {
      barrier_init(&full[s], 1);
      barrier_init(&empty[s], kMode == 1 ? 1 + kReaders : 1 + kReaders / 32);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (threadIdx.x < 64 && threadIdx.x != 0 && threadIdx.x != 32) return;
  if (threadIdx.x == 32) {  // the claimer
    for (int h = 0; h <= num_tiles; ++h) {
      int const tile = h < num_tiles ? h : kEnd;
      if (kMode == 2) {
        if (h > 0) named_sync(2, kThreads);  // everyone read the slot
        slot[0] = tile;
        named_arrive(1, kThreads);
      } else {
        int const s = h % 2;
        barrier_wait(&empty[s], ((h / 2) & 1) ^ 1);
        slot[s] = tile;
        barrier_arrive(&full[s]);
      }
    }
    return;
  }
  int sum = 0;
  for (int round = 0;; ++round) {
    int tile;
    if (kMode == 2) {
      named_sync(1, kThreads);
      tile = slot[0];
      if (tile != kEnd) named_arrive(2, kThreads);
    } else {
      int const s = round % 2;
      barrier_wait(&full[s], (round / 2) & 1);
      tile = slot[s];
      if (kMode == 0 && threadIdx.x != 0) {
        __syncwarp();
        if (threadIdx.x % 32 == 0) barrier_arrive(&empty[s]);
      } else {
        barrier_arrive(&empty[s]);
      }
    }
    if (tile == kEnd) break;
    sum += tile;
  }
  sums[blockIdx.x * kThreads + threadIdx.x] = sum;
}

}  // namespace

int main(int argc, char** argv) {
  int const mode = argc > 1 ? std::atoi(argv[1]) : 0;
  int const num_tiles = 20, blocks = 4;
  int* sums = nullptr;
  cudaMalloc(&sums, blocks * kThreads * sizeof(int));
  if (mode == 0) handoff<0><<<blocks, kThreads>>>(sums, num_tiles);
  if (mode == 1) handoff<1><<<blocks, kThreads>>>(sums, num_tiles);
  if (mode == 2) handoff<2><<<blocks, kThreads>>>(sums, num_tiles);
  static int host[blocks * kThreads];
  cudaError_t const err = cudaMemcpy(host, sums, sizeof(host), cudaMemcpyDeviceToHost);
  std::printf("mode %d: %s; sums of thread 0 and 64: %d %d (want %d)\n", mode, cudaGetErrorString(err), host[0],
              host[64], num_tiles * (num_tiles - 1) / 2);
  return err == cudaSuccess && host[0] == host[64] && host[0] == num_tiles * (num_tiles - 1) / 2 ? 0 : 1;
}
