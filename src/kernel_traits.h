#pragma once

#include <cute/tensor.hpp>

#include <cutlass/numeric_types.h>

namespace fa_cute {

// What every forward kernel's traits start from, whatever the family: the tile (query rows
// kBlockM, key rows kBlockN, head dim kHeadDim), the element type (bf16 or fp16; e4m3 in the
// Hopper family's FP8 kernels; the accumulators and the softmax are fp32), and the two knobs
// the shared pieces read
// (the tile scheduler: kPersistent; the softmax: kLazyRescale). Sm80FwdTraits and
// Sm90FwdTraits derive from it and add what their instructions need.
template <int kHeadDim_, int kBlockM_, int kBlockN_, class Element_, bool kPersistent_, bool kLazyRescale_>
struct FwdTraitsBase {
  using Element = Element_;
  // What O leaves in: the input type, but bf16 for e4m3 inputs (the Hopper FP8 kernels).
  using ElementO = cute::conditional_t<cute::sizeof_bits_v<Element_> == 8, cute::bfloat16_t, Element_>;
  using ElementAccum = float;

  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr bool kPersistent = kPersistent_;
  static constexpr bool kLazyRescale = kLazyRescale_;
  // Whether a launch given FwdParams::tile_counter takes its tiles in a dynamic order (the
  // Hopper family's persistent kernels; run_fwd clears the counter or drops it).
  static constexpr bool kDynamicTileOrder = false;

  static_assert(cute::is_same_v<Element, cute::bfloat16_t> || cute::is_same_v<Element, cute::half_t> ||
                    cute::is_same_v<Element, cute::float_e4m3_t>,
                "Element must be bf16, fp16 or (Hopper only) e4m3");
};

}  // namespace fa_cute
