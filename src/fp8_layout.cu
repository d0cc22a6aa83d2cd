#include "fp8_layout.h"

#include <cstdint>

#include "cuda_check.h"

namespace fa_cute {
namespace {

constexpr int kTileKeys = 64;         // keys per CTA: two chunks
constexpr int kMaxHeadDim = 256;
constexpr int kRowPad = 16;           // bytes after each shared row: rows start on different banks
constexpr int kThreads = 256;

// One CTA per (64 keys, K/V head, batch entry): V's rows of those keys into shared memory in
// 16-byte loads (zeros past seqlen_k), then Vt's d rows of 64 reordered keys out in 16-byte
// stores. A memory-bound pass of V's bytes once each way.
__global__ void __launch_bounds__(kThreads) fp8_v_layout_kernel(Fp8VLayoutParams const p) {
  __shared__ __align__(16) uint8_t tile[kTileKeys][kMaxHeadDim + kRowPad];
  int const key0 = blockIdx.x * kTileKeys;
  int const h = blockIdx.y, b = blockIdx.z;
  int const vecs = p.head_dim / 16;
  auto const* v = static_cast<uint8_t const*>(p.v_ptr) + b * p.v_batch_stride + h * p.v_head_stride;
  for (int idx = threadIdx.x; idx < kTileKeys * vecs; idx += kThreads) {
    int const row = idx / vecs, col = idx % vecs * 16;
    int const key = key0 + row;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (key < p.seqlen_k) val = *reinterpret_cast<uint4 const*>(v + key * p.v_row_stride + col);
    *reinterpret_cast<uint4*>(&tile[row][col]) = val;
  }
  __syncthreads();
  int64_t const vt_keys = fp8_vt_keys(p.seqlen_k);
  auto* vt = static_cast<uint8_t*>(p.vt_ptr) + (int64_t(b) * p.nheads_k + h) * p.head_dim * vt_keys;
  constexpr int kVecsPerRow = kTileKeys / 16;
  for (int idx = threadIdx.x; idx < p.head_dim * kVecsPerRow; idx += kThreads) {
    int const d = idx / kVecsPerRow, slot0 = idx % kVecsPerRow * 16;
    if (key0 + slot0 >= vt_keys) continue;
    int const chunk = slot0 / kFp8VtChunk * kFp8VtChunk;
    alignas(16) uint8_t out[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) out[i] = tile[chunk + fp8_vt_key(slot0 % kFp8VtChunk + i)][d];
    *reinterpret_cast<uint4*>(vt + d * vt_keys + key0 + slot0) = *reinterpret_cast<uint4 const*>(out);
  }
}

}  // namespace

void launch_fp8_v_layout(Fp8VLayoutParams const& p, cudaStream_t stream) {
  static_assert(kTileKeys % kFp8VtChunk == 0, "a CTA's keys are whole chunks");
  dim3 const grid((p.seqlen_k + kTileKeys - 1) / kTileKeys, p.nheads_k, p.batch);
  fp8_v_layout_kernel<<<grid, kThreads, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "fp8_v_layout_kernel launch");
}

}  // namespace fa_cute
