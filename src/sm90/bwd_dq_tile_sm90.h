#pragma once

#include <cstdint>

#include <cute/tensor.hpp>

#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>

#include "bwd_params.h"
#include "bwd_prepost.h"  // bwd_grid_stride_blocks
#include "sm90/kernel_traits_bwd_sm90.h"

namespace fa_cute {

// The dQ postprocess of the Hopper kernel's tiled dq_accum (Sm90BwdTraits::kdQTile): each
// query block of kBlockM rows is one contiguous block of floats in the dQ accumulators'
// order (SmemLayoutdQTile: consumer thread t's values in 16-byte runs), not row-major.
// One CTA of kNumConsumerThreads threads per (query block, head, batch), a grid-stride loop
// over them: thread t reads thread t's values back (each warp load 512 contiguous bytes),
// places them by the dQ GEMM's own partition of the (BLK_M,D) tile into a row-major
// shared-memory copy, then the CTA writes dq = tile * softmax_scale in the input dtype,
// 8 columns (16 bytes) a thread, rows below seqlen_q.
template <class Traits>
struct Sm90dQTilePostprocess {
  using Element = typename Traits::Element;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kNThreads = Traits::kNumConsumerThreads;
  // Row stride of the shared copy: 8 floats of padding put the 8 rows of a warp's 8-byte
  // stores (4 lanes a row) on distinct bank pairs of two wavefronts, the minimum for 256 bytes.
  static constexpr int kRowStride = kHeadDim + 8;
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
  __shared__ __align__(16) float smem[kBlockM * P::kRowStride];

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
    float const* tile = params.dq_accum_ptr + (bh * params.dq_accum_rows + int64_t(m_block) * kBlockM) * kHeadDim;
    CUTE_UNROLL
    for (int i = 0; i < Traits::kdQTileValues; i += 4) {
      float4 const v = *reinterpret_cast<float4 const*>(tile + tile_layout(tidx, i));
      tdQsdQ(i) = v.x * params.softmax_scale;
      tdQsdQ(i + 1) = v.y * params.softmax_scale;
      tdQsdQ(i + 2) = v.z * params.softmax_scale;
      tdQsdQ(i + 3) = v.w * params.softmax_scale;
    }
    __syncthreads();
    int const rows = min(kBlockM, params.seqlen_q - m_block * kBlockM);
    for (int chunk = tidx; chunk < P::kChunks; chunk += P::kNThreads) {
      int const row = chunk / (kHeadDim / 8);
      int const col = chunk % (kHeadDim / 8) * 8;
      if (row < rows) {
        cutlass::Array<float, 8> acc;
        CUTE_UNROLL
        for (int c = 0; c < 8; ++c) acc[c] = sdQ(row, col + c);
        Element* dq = static_cast<Element*>(params.dq_ptr) + b * params.dq_batch_stride +
                      (int64_t(m_block) * kBlockM + row) * params.dq_row_stride + h * params.dq_head_stride + col;
        *reinterpret_cast<cutlass::Array<Element, 8>*>(dq) = to_element(acc);
      }
    }
    __syncthreads();  // the copy is rewritten by the next block
  }
}

}  // namespace fa_cute
