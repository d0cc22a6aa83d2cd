#include "fp8_layout.h"

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda_check.h"

namespace fa_cute {
namespace {

constexpr int kTileKeys = 64;  // keys per CTA: two chunks
constexpr int kMaxHeadDim = kFp8VLayoutMaxHeadDim;
constexpr int kThreads = 256;
constexpr int kSlotWords = kTileKeys / 4;  // 4-byte words of a Vt row's 64 slots
constexpr int kOutStride = kSlotWords + 1;  // words per staged Vt row; odd, so rows fall on different banks

// Where Vt row d is staged: rows 4 col + i (one thread's four, col its 4-column group) at
// i * d/4 + col, so that a warp's 32 columns write 32 consecutive staged rows, whose odd
// stride puts them on 32 banks.
__device__ __forceinline__ int staged_row(int d, int words) { return d % 4 * words + d / 4; }

// Four words w0..w3, each 4 bytes of one key (4 d columns), as 4 words of the transpose: word
// t holds column t of the four keys, in the order w0..w3 (PRMT selects bytes of a pair).
__device__ __forceinline__ void transpose_4x4(uint32_t const (&w)[4], uint32_t (&out)[4]) {
  uint32_t const lo01 = __byte_perm(w[0], w[1], 0x5140), hi01 = __byte_perm(w[0], w[1], 0x7362);
  uint32_t const lo23 = __byte_perm(w[2], w[3], 0x5140), hi23 = __byte_perm(w[2], w[3], 0x7362);
  out[0] = __byte_perm(lo01, lo23, 0x5410);
  out[1] = __byte_perm(lo01, lo23, 0x7632);
  out[2] = __byte_perm(hi01, hi23, 0x5410);
  out[3] = __byte_perm(hi01, hi23, 0x7632);
}

// The 64 keys from key0 of (batch entry b, K/V head h), three steps over shared memory:
//   1. V's 64 rows (d bytes each) in 16-byte loads, zeros past seqlen_k;
//   2. per Vt slot word (4 slots 16c + 4j + a of a chunk, whose keys are rows 16c + 2j,
//      +1, +8, +9: fp8_vt_key) and 4 d columns: the 4x4 bytes transposed in registers
//      (PRMT), one word into each of the 4 staged Vt rows (staged_row); a warp reads one
//      V row's consecutive words and writes 32 staged rows' (no bank conflicts);
//   3. the staged (d, 64) block out in 16-byte stores.
// Memory-bound: V's bytes read once and Vt's written once.
__device__ void layout_tile(Fp8VLayoutParams const& p, int b, int h, int key0, uint32_t* in, uint32_t* out) {
  int const words = p.head_dim / 4, vecs = p.head_dim / 16;
  auto const* v = static_cast<uint8_t const*>(p.v_ptr) + b * p.v_batch_stride + h * p.v_head_stride;
  for (int idx = threadIdx.x; idx < kTileKeys * vecs; idx += kThreads) {
    int const row = idx / vecs, vec = idx % vecs;
    int const key = key0 + row;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (key < p.seqlen_k) val = *reinterpret_cast<uint4 const*>(v + key * p.v_row_stride + vec * 16);
    *reinterpret_cast<uint4*>(&in[row * words + vec * 4]) = val;
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kSlotWords * words; idx += kThreads) {
    int const col = idx % words;        // 4 d columns
    int const slot_word = idx / words;  // slots 4 slot_word .. +3 of the tile
    int const chunk = slot_word / 8 * kFp8VtChunk;
    int const first = chunk + fp8_vt_key(slot_word % 8 * 4);  // rows first, +1, +8, +9
    static_assert(fp8_vt_key(1) == fp8_vt_key(0) + 1 && fp8_vt_key(2) == fp8_vt_key(0) + 8 &&
                      fp8_vt_key(3) == fp8_vt_key(0) + 9,
                  "a slot word's keys are rows first, +1, +8, +9");
    uint32_t const w[4] = {in[first * words + col], in[(first + 1) * words + col], in[(first + 8) * words + col],
                           in[(first + 9) * words + col]};
    uint32_t t[4];
    transpose_4x4(w, t);
#pragma unroll
    for (int i = 0; i < 4; ++i) out[staged_row(col * 4 + i, words) * kOutStride + slot_word] = t[i];
  }
  __syncthreads();
  int64_t const vt_keys = fp8_vt_keys(p.seqlen_k);
  auto* vt = static_cast<uint8_t*>(p.vt_ptr) + (int64_t(b) * p.nheads_k + h) * p.head_dim * vt_keys + key0;
  constexpr int kVecsPerRow = kTileKeys / 16;
  for (int idx = threadIdx.x; idx < p.head_dim * kVecsPerRow; idx += kThreads) {
    int const d = idx / kVecsPerRow, vec = idx % kVecsPerRow;
    if (key0 + vec * 16 >= vt_keys) continue;
    uint32_t const* row = &out[staged_row(d, words) * kOutStride + vec * 4];
    *reinterpret_cast<uint4*>(vt + d * vt_keys + vec * 16) = make_uint4(row[0], row[1], row[2], row[3]);
  }
}

// One CTA per 64 keys; grid y strides over the batch x nheads_k pairs (grid y and z stop at
// 65535, a large decode batch's pairs do not).
__global__ void __launch_bounds__(kThreads) fp8_v_layout_kernel(Fp8VLayoutParams const p) {
  __shared__ __align__(16) uint32_t in[kTileKeys * kMaxHeadDim / 4];  // (keys, d/4) words
  __shared__ uint32_t out[kMaxHeadDim * kOutStride];                  // (d, slots/4) words
  int64_t const pairs = int64_t(p.batch) * p.nheads_k;
  for (int64_t bh = blockIdx.y; bh < pairs; bh += gridDim.y) {
    if (bh != blockIdx.y) __syncthreads();  // the previous pair's reads of `out` are done
    layout_tile(p, int(bh / p.nheads_k), int(bh % p.nheads_k), blockIdx.x * kTileKeys, in, out);
  }
}

}  // namespace

void launch_fp8_v_layout(Fp8VLayoutParams const& p, cudaStream_t stream) {
  static_assert(kTileKeys % kFp8VtChunk == 0, "a CTA's keys are whole chunks");
  if (!fp8_v_layout_takes_head_dim(p.head_dim)) {
    throw std::invalid_argument("head_dim: the FP8 V layout pass takes a multiple of 16 in [16, " +
                                std::to_string(kMaxHeadDim) + "], got " + std::to_string(p.head_dim));
  }
  if (p.batch < 1 || p.nheads_k < 1 || p.seqlen_k < 1) {
    throw std::invalid_argument("batch, nheads_k, seqlen_k: the FP8 V layout pass needs each >= 1");
  }
  long long const pairs = (long long)p.batch * p.nheads_k;
  dim3 const grid((p.seqlen_k + kTileKeys - 1) / kTileKeys, unsigned(pairs < 65535 ? pairs : 65535));
  fp8_v_layout_kernel<<<grid, kThreads, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "fp8_v_layout_kernel launch");
}

}  // namespace fa_cute
