#pragma once

#include <cstdint>

#include <cute/tensor.hpp>

#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>

#include "block_info.h"  // BwdSeqlens
#include "bwd_params.h"
#include "bwd_prepost.h"  // bwd_grid_stride_blocks
#include "sm90/kernel_traits_bwd_sm90.h"

namespace fa_cute {

// The dQ postprocess of the Hopper kernel's tiled dq_accum (Sm90BwdTraits::kdQTile): each
// query block of kBlockM rows is one contiguous block of floats in the dQ accumulators'
// order (SmemLayoutdQTile: consumer thread t's values in 16-byte runs), not row-major.
// One CTA of kNumConsumerThreads threads per (query block, head, batch), a grid-stride loop
// over them: thread t reads thread t's values back (each warp load 512 contiguous bytes),
// places them (times softmax_scale) by the dQ GEMM's own partition of the (BLK_M,D) tile
// into a row-major shared-memory copy, then the CTA writes dq in the input dtype,
// 8 columns (16 bytes) a thread, rows below seqlen_q. A varlen batch: the blocks of each
// sequence's own rows of dq_accum (BwdSeqlens), into its packed rows of dq; a block past
// the sequence's end is skipped.
template <class Traits>
struct Sm90dQTilePostprocess {
  using Element = typename Traits::Element;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kNThreads = Traits::kNumConsumerThreads;
  // Row stride of the shared copy: 8 floats of padding put the 8 rows of a warp's 8-byte
  // stores (4 lanes a row) on distinct bank pairs of two wavefronts, the minimum for 256 bytes.
  static constexpr int kRowStride = kHeadDim + 8;
  // The shared copy holds fp32 where it fits the 48 KiB of static shared memory (d <= 128),
  // else the scaled values already converted to the input dtype (d = 192: 64 x 200 fp32
  // would be 50 KiB; the rounding to the input dtype happens once either way).
  using SmemElement = cute::conditional_t<kBlockM * kRowStride * 4 <= 48 * 1024, float, Element>;
  static constexpr int kChunks = kBlockM * kHeadDim / 8;  // 16-byte output chunks per block

  CUTE_HOST_DEVICE static int64_t num_blocks(BwdParams const& params) {
    return int64_t(params.batch) * params.nheads * ((params.seqlen_q + kBlockM - 1) / kBlockM);
  }
  static unsigned grid(BwdParams const& params) { return bwd_grid_stride_blocks(num_blocks(params)); }
};

template <class Traits>
__global__ void __launch_bounds__(Traits::kNumConsumerThreads)
    bwd_postprocess_dq_tile_kernel(__grid_constant__ BwdParams const params) {
  using namespace cute;
  using P = Sm90dQTilePostprocess<Traits>;
  using Element = typename P::Element;
  constexpr int kBlockM = P::kBlockM;
  constexpr int kHeadDim = P::kHeadDim;
  using SmemElement = typename P::SmemElement;
  __shared__ __align__(16) SmemElement smem[kBlockM * P::kRowStride];

  int const tidx = threadIdx.x;
  typename Traits::TiledMmadQ tiled_mma_dq;
  auto thr_dq = tiled_mma_dq.get_thread_slice(tidx);
  using TileQ = Shape<Int<kBlockM>, Int<kHeadDim>>;
  Tensor sdQ = make_tensor(make_smem_ptr(smem), TileQ{}, make_stride(Int<P::kRowStride>{}, _1{}));  // (BLK_M,D)
  Tensor tdQsdQ = thr_dq.partition_C(sdQ);                                                    // (MMA,MMA_M,MMA_D)
  static_assert(decltype(size(tdQsdQ))::value == Traits::kdQTileValues, "the tile's values per thread");
  typename Traits::SmemLayoutdQTile const tile_layout;  // (THR,VAL)
  cutlass::NumericArrayConverter<Element, float, 8> to_element;

  int const num_m_blocks = (params.seqlen_q + kBlockM - 1) / kBlockM;
  int64_t const blocks = P::num_blocks(params);
  for (int64_t block = blockIdx.x; block < blocks; block += gridDim.x) {
    int const m_block = int(block % num_m_blocks);
    int64_t const bh = block / num_m_blocks;
    int const h = int(bh % params.nheads);
    int const b = int(bh / params.nheads);
    int64_t accum_row = bh * params.dq_accum_rows;
    int seqlen_q = params.seqlen_q;
    int offset_q = 0;
    if (params.cu_seqlens_q != nullptr) {
      BwdSeqlens<true> const seq(params, b);
      if (m_block * kBlockM >= seq.seqlen_q) continue;  // uniform in the CTA
      accum_row = seq.dq_accum_row_base(params, b, h);
      seqlen_q = seq.seqlen_q;
      offset_q = seq.offset_q;
    }
    float const* tile = params.dq_accum_ptr + (accum_row + int64_t(m_block) * kBlockM) * kHeadDim;
    CUTE_UNROLL
    for (int i = 0; i < Traits::kdQTileValues; i += 4) {
      float4 const v = *reinterpret_cast<float4 const*>(tile + tile_layout(tidx, i));
      tdQsdQ(i) = SmemElement(v.x * params.softmax_scale);
      tdQsdQ(i + 1) = SmemElement(v.y * params.softmax_scale);
      tdQsdQ(i + 2) = SmemElement(v.z * params.softmax_scale);
      tdQsdQ(i + 3) = SmemElement(v.w * params.softmax_scale);
    }
    __syncthreads();
    int const rows = min(kBlockM, seqlen_q - m_block * kBlockM);
    for (int chunk = tidx; chunk < P::kChunks; chunk += P::kNThreads) {
      int const row = chunk / (kHeadDim / 8);
      int const col = chunk % (kHeadDim / 8) * 8;
      if (row < rows) {
        cutlass::Array<SmemElement, 8> acc;
        CUTE_UNROLL
        for (int c = 0; c < 8; ++c) acc[c] = sdQ(row, col + c);
        Element* dq = static_cast<Element*>(params.dq_ptr) + b * params.dq_batch_stride +
                      (offset_q + int64_t(m_block) * kBlockM + row) * params.dq_row_stride + h * params.dq_head_stride +
                      col;
        if constexpr (cute::is_same_v<SmemElement, float>) {
          *reinterpret_cast<cutlass::Array<Element, 8>*>(dq) = to_element(acc);
        } else {
          *reinterpret_cast<cutlass::Array<Element, 8>*>(dq) = acc;
        }
      }
    }
    __syncthreads();  // the copy is rewritten by the next block
  }
}

}  // namespace fa_cute
