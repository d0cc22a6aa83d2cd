#include "launch_checks.h"

#include <array>
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include "fp8_layout.h"
#include "tile_size.h"

namespace fa_cute {
namespace {

using u128 = unsigned __int128;

std::string str(long long value) { return std::to_string(value); }

// The size of a bf16 / fp16 element (the FP8 kernels' q, k and v: 1).
constexpr int kElementBytes = 2;

// A (batch, seqlen, heads, head_dim) operand: its pointer and strides as the kernels use
// them, and its extent in bytes. Tiles are loaded as 16-byte vectors (cp.async, ldmatrix,
// TMA), and in-tile row offsets are 32-bit (the kernels' row_tile).
OperandExtent check_operand(char const* name, uintptr_t ptr, int batch, int seqlen, int heads, int head_dim,
                            index_t batch_stride, index_t row_stride, index_t head_stride, int block_rows,
                            int element_bytes = kElementBytes) {
  int const vector = 16 / element_bytes;  // elements per 16-byte vector
  auto const n = [&] { return std::string(name); };
  FA_CUTE_REQUIRE(ptr != 0, n() + ": the data pointer is null");
  FA_CUTE_REQUIRE(ptr % 16 == 0, n() + ": data pointer must be 16-byte aligned (16-byte vector loads)");
  FA_CUTE_REQUIRE(batch_stride >= 0 && row_stride >= 0 && head_stride >= 0,
          n() + ": batch, seqlen and head strides must be >= 0, got (" + str(batch_stride) + ", " + str(row_stride) +
              ", " + str(head_stride) + ")");
  FA_CUTE_REQUIRE(batch_stride % vector == 0 && row_stride % vector == 0 && head_stride % vector == 0,
          n() + ": batch, seqlen and head strides must be multiples of " + str(vector) +
              " elements (16-byte vector loads)");
  FA_CUTE_REQUIRE(row_stride <= ((int64_t(1) << 31) - 1) / block_rows,
          n() + ": seqlen stride must be below 2^31 / " + std::to_string(block_rows) +
              " elements (in-tile offsets are 32-bit)");
  // Each stride is below 2^63 and each size below 2^31: the 128-bit sum cannot wrap.
  u128 const elements = u128(batch - 1) * uint64_t(batch_stride) + u128(seqlen - 1) * uint64_t(row_stride) +
                        u128(heads - 1) * uint64_t(head_stride) + uint64_t(head_dim);
  u128 const bytes = elements * uint64_t(element_bytes);
  FA_CUTE_REQUIRE(bytes <= kMaxExtentBytes && u128(ptr) + bytes <= UINTPTR_MAX,
          n() + ": sizes and strides address more than 2^48 bytes or past the end of the address space");
  return {name, ptr, uint64_t(bytes)};
}

// A contiguous fp32 buffer of `count` elements (lse, o_accum, lse_accum).
OperandExtent check_fp32_buffer(char const* name, uintptr_t ptr, u128 count) {
  auto const n = [&] { return std::string(name); };
  FA_CUTE_REQUIRE(ptr % 4 == 0, n() + ": data pointer must be 4-byte aligned (fp32)");
  u128 const bytes = count * 4;
  FA_CUTE_REQUIRE(bytes <= kMaxExtentBytes && u128(ptr) + bytes <= UINTPTR_MAX,
          n() + ": the buffer would address more than 2^48 bytes or past the end of the address space");
  return {name, ptr, uint64_t(bytes)};
}

// A contiguous int32 buffer of `count` elements (cu_seqlens, seqused_k, cache_batch_idx,
// page_table).
OperandExtent check_int32_buffer(char const* name, void const* ptr, long long count) {
  auto const address = reinterpret_cast<uintptr_t>(ptr);
  FA_CUTE_REQUIRE(address % 4 == 0, std::string(name) + ": data pointer must be 4-byte aligned (int32)");
  return {name, address, uint64_t(count) * 4};
}

}  // namespace

void check_seqlens(int seqlen_q, int seqlen_k) {
  FA_CUTE_REQUIRE(seqlen_q >= 1 && seqlen_q <= kMaxSeqlen,
          "seqlen_q: must be in [1, " + str(kMaxSeqlen) + "] (limits()['max_seqlen']), got " + str(seqlen_q));
  FA_CUTE_REQUIRE(seqlen_k >= 1 && seqlen_k <= kMaxSeqlen,
          "seqlen_k: must be in [1, " + str(kMaxSeqlen) + "] (limits()['max_seqlen']), got " + str(seqlen_k));
}

void check_problem_sizes(int batch, int seqlen_q, int seqlen_k, int nheads, int nheads_k) {
  FA_CUTE_REQUIRE(batch >= 1, "batch: must be >= 1, got " + str(batch));
  FA_CUTE_REQUIRE(nheads >= 1, "nheads: must be >= 1, got " + str(nheads));
  FA_CUTE_REQUIRE(nheads_k >= 1, "nheads_k: must be >= 1, got " + str(nheads_k));
  FA_CUTE_REQUIRE(nheads % nheads_k == 0, "nheads must be a multiple of nheads_k");
  check_seqlens(seqlen_q, seqlen_k);
  // The tile count of the unsplit launch; the split one is checked with num_splits.
  long long const rows = (long long)batch * nheads;
  FA_CUTE_REQUIRE(rows <= kMaxLaunchTiles, "batch * nheads must be <= " + str(kMaxLaunchTiles) + " (tiles are numbered in int)");
}

ForwardExtents check_forward_args(FwdKernel const& kernel, FwdParams const& p, int device) {
  check_problem_sizes(p.batch, p.seqlen_q, p.seqlen_k, p.nheads, p.nheads_k);
  FA_CUTE_REQUIRE(p.head_dim == kernel.head_dim, std::string("head_dim: config ") + kernel.config + " is built for head dim " +
                                             str(kernel.head_dim) + ", got " + str(p.head_dim));
  FA_CUTE_REQUIRE(p.causal_offset >= -kMaxSeqlen && p.causal_offset <= kMaxSeqlen,
          "causal_offset: must be in [-" + str(kMaxSeqlen) + ", " + str(kMaxSeqlen) + "], got " + str(p.causal_offset));
  // The window's block bounds (FwdKeyRange) add a row, the offset and the bound: each below
  // kMaxSeqlen keeps them within int.
  FA_CUTE_REQUIRE(p.window_left >= -1 && p.window_left <= kMaxSeqlen,
          "window_left: must be -1 (unbounded) or in [0, " + str(kMaxSeqlen) + "], got " + str(p.window_left));
  FA_CUTE_REQUIRE(p.window_right >= -1 && p.window_right <= kMaxSeqlen,
          "window_right: must be -1 (unbounded) or in [0, " + str(kMaxSeqlen) + "], got " + str(p.window_right));
  int const key_blocks = (p.seqlen_k + kernel.block_n - 1) / kernel.block_n;  // seqlen_k <= kMaxSeqlen: no wrap
  int const max_splits = key_blocks < kMaxSplits ? key_blocks : kMaxSplits;
  FA_CUTE_REQUIRE(p.num_splits >= 1 && p.num_splits <= max_splits,
          "num_splits: must be in [1, " + str(max_splits) + "] (at most " + str(kMaxSplits) + " and at most the " +
              str(key_blocks) + " key blocks of " + str(kernel.block_n) + "), got " + str(p.num_splits));
  long long const query_tiles = (long long)((p.seqlen_q + kernel.block_m - 1) / kernel.block_m) * p.nheads * p.batch;
  FA_CUTE_REQUIRE(query_tiles * p.num_splits <= kMaxLaunchTiles,
          "batch * nheads * ceil(seqlen_q / " + str(kernel.block_m) + ") * num_splits must be <= " +
              str(kMaxLaunchTiles) + " (tiles are numbered in int)");
  u128 const rows = u128(p.batch) * p.nheads * p.seqlen_q;
  // The combine kernel takes a few rows per block in one grid dimension.
  FA_CUTE_REQUIRE(p.num_splits == 1 || rows <= u128(kMaxLaunchTiles),
          "batch * nheads * seqlen_q must be <= " + str(kMaxLaunchTiles) + " with num_splits > 1");
  FA_CUTE_REQUIRE(p.num_splits == 1 || (p.o_accum_ptr != nullptr && p.lse_accum_ptr != nullptr),
          "num_splits > 1 needs non-null fp32 o_accum and lse_accum buffers");
  FA_CUTE_REQUIRE(device >= 0, "device: must be a CUDA device index >= 0, got " + str(device));

  auto const ptr = [](void const* x) { return reinterpret_cast<uintptr_t>(x); };
  // FP8: q and k of 1-byte elements, v the layout pass's Vt (fp8_layout.h: rows of d, keys
  // contiguous), three optional fp32 (batch, nheads_k) descale arrays; out stays bf16.
  bool const fp8 = kernel.dtype == DType::kE4M3;
  FA_CUTE_REQUIRE(fp8 || (p.q_descale_ptr == nullptr && p.k_descale_ptr == nullptr && p.v_descale_ptr == nullptr),
                  "q_descale, k_descale, v_descale: only the FP8 (e4m3) kernels take descale factors");
  FA_CUTE_REQUIRE(!fp8 || p.num_splits == 1, "num_splits: the FP8 kernels do not split keys; pass 1");
  int const in_bytes = fp8 ? 1 : kElementBytes;
  ForwardExtents extents{
      check_operand("q", ptr(p.q_ptr), p.batch, p.seqlen_q, p.nheads, p.head_dim, p.q_batch_stride, p.q_row_stride,
                    p.q_head_stride, kernel.block_m, in_bytes),
      check_operand("k", ptr(p.k_ptr), p.batch, p.seqlen_k, p.nheads_k, p.head_dim, p.k_batch_stride, p.k_row_stride,
                    p.k_head_stride, kernel.block_n, in_bytes),
      fp8 ? check_operand("vt", ptr(p.v_ptr), p.batch, p.head_dim, p.nheads_k, int(fp8_vt_keys(p.seqlen_k)),
                          p.v_batch_stride, p.v_row_stride, p.v_head_stride, /*block_rows=*/1, 1)
          : check_operand("v", ptr(p.v_ptr), p.batch, p.seqlen_k, p.nheads_k, p.head_dim, p.v_batch_stride,
                          p.v_row_stride, p.v_head_stride, kernel.block_n),
      check_operand("out", ptr(p.o_ptr), p.batch, p.seqlen_q, p.nheads, p.head_dim, p.o_batch_stride, p.o_row_stride,
                    p.o_head_stride, kernel.block_m),
      check_fp32_buffer("lse", ptr(p.softmax_lse_ptr), rows),
      OperandExtent{"o_accum", 0, 0},
      OperandExtent{"lse_accum", 0, 0},
      OperandExtent{"cu_seqlens_q", 0, 0},
      OperandExtent{"cu_seqlens_k", 0, 0},
      OperandExtent{"seqused_k", 0, 0},
      OperandExtent{"k", 0, 0},
      OperandExtent{"v", 0, 0},
      OperandExtent{"q_descale", 0, 0},
      OperandExtent{"k_descale", 0, 0},
      OperandExtent{"v_descale", 0, 0},
  };
  if (p.num_splits > 1) {
    extents[5] = check_fp32_buffer("o_accum", ptr(p.o_accum_ptr), rows * p.num_splits * p.head_dim);
    extents[6] = check_fp32_buffer("lse_accum", ptr(p.lse_accum_ptr), rows * p.num_splits);
  }
  if (fp8) {
    u128 const factors = u128(p.batch) * p.nheads_k;
    extents[12] = check_fp32_buffer("q_descale", ptr(p.q_descale_ptr), factors);
    extents[13] = check_fp32_buffer("k_descale", ptr(p.k_descale_ptr), factors);
    extents[14] = check_fp32_buffer("v_descale", ptr(p.v_descale_ptr), factors);
  }
  return extents;
}

namespace {

// A varlen call (FwdParams or BwdParams, the same field names): both offset buffers given
// and the packed row counts within the kernels' bound; returns the packed tensors as one
// dense batch entry of total_q / total_k rows, for the dense call's operand rules and
// extents.
template <class Params>
Params packed_as_one_entry(Params const& p) {
  FA_CUTE_REQUIRE(p.cu_seqlens_q != nullptr && p.cu_seqlens_k != nullptr,
                  "cu_seqlens_q, cu_seqlens_k: a varlen call needs both (non-null int32 device pointers)");
  FA_CUTE_REQUIRE(p.total_q >= 1 && p.total_q <= kMaxSeqlen,
                  "total_q: the packed rows of q must be in [1, " + str(kMaxSeqlen) + "], got " + str(p.total_q));
  FA_CUTE_REQUIRE(p.total_k >= 1 && p.total_k <= kMaxSeqlen,
                  "total_k: the packed rows of k must be in [1, " + str(kMaxSeqlen) + "], got " + str(p.total_k));
  Params packed = p;
  packed.batch = 1;
  packed.seqlen_q = p.total_q;
  packed.seqlen_k = p.total_k;
  packed.causal_offset = 0;
  packed.cu_seqlens_q = packed.cu_seqlens_k = packed.seqused_k = nullptr;
  return packed;
}

// The extents of a varlen call's int32 buffers: cu_seqlens_q and cu_seqlens_k (batch + 1
// each) and seqused_k (batch; none where null).
template <class Params>
std::array<OperandExtent, 3> packed_offset_extents(Params const& p) {
  return {check_int32_buffer("cu_seqlens_q", p.cu_seqlens_q, p.batch + 1ll),
          check_int32_buffer("cu_seqlens_k", p.cu_seqlens_k, p.batch + 1ll),
          p.seqused_k != nullptr ? check_int32_buffer("seqused_k", p.seqused_k, p.batch)
                                 : OperandExtent{"seqused_k", 0, 0}};
}

}  // namespace

ForwardExtents check_varlen_forward_args(FwdKernel const& kernel, FwdParams const& p, int device) {
  FwdParams const packed = packed_as_one_entry(p);
  FA_CUTE_REQUIRE(p.batch >= 1, "batch: must be >= 1 (len(cu_seqlens_q) - 1), got " + str(p.batch));
  FA_CUTE_REQUIRE(p.seqlen_q >= 1 && p.seqlen_q <= kMaxSeqlen,
                  "max_seqlen_q: must be in [1, " + str(kMaxSeqlen) + "], got " + str(p.seqlen_q));
  FA_CUTE_REQUIRE(p.seqlen_k >= 1 && p.seqlen_k <= kMaxSeqlen,
                  "max_seqlen_k: must be in [1, " + str(kMaxSeqlen) + "], got " + str(p.seqlen_k));
  FA_CUTE_REQUIRE(p.num_splits == 1, "num_splits: a varlen call does not split keys; pass 1");
  FA_CUTE_REQUIRE(p.seqused_k_add == 0, "seqused_k_add: a KV cache's, 0 in a varlen call");
  long long const query_tiles = (long long)((p.seqlen_q + kernel.block_m - 1) / kernel.block_m) * p.nheads * p.batch;
  FA_CUTE_REQUIRE(query_tiles <= kMaxLaunchTiles, "batch * nheads * ceil(max_seqlen_q / " + str(kernel.block_m) +
                                                      ") must be <= " + str(kMaxLaunchTiles) +
                                                      " (tiles are numbered in int)");
  ForwardExtents extents = check_forward_args(kernel, packed, device);
  std::array<OperandExtent, 3> const offsets = packed_offset_extents(p);
  for (size_t i = 0; i < offsets.size(); ++i) extents[7 + i] = offsets[i];
  extents[10] = p.tile_counter != nullptr ? check_int32_buffer("tile_counter", p.tile_counter, 1)
                                          : OperandExtent{"tile_counter", 0, 0};
  return extents;
}

ForwardExtents check_kvcache_forward_args(FwdKernel const& kernel, FwdParams const& p, int device) {
  FA_CUTE_REQUIRE(p.seqused_k != nullptr && p.cu_seqlens_q == nullptr && p.cu_seqlens_k == nullptr,
                  "cache_seqlens: a KV-cache call needs it (as seqused_k), without cu_seqlens");
  FA_CUTE_REQUIRE(p.seqused_k_add >= 0 && p.seqused_k_add <= kMaxSeqlen,
                  "seqlen_new: the keys appended must be in [0, " + str(kMaxSeqlen) + "], got " + str(p.seqused_k_add));
  bool const paged = p.page_table != nullptr;
  if (paged) {
    FA_CUTE_REQUIRE(p.page_size >= 16 && p.page_size % 16 == 0,
                    "page_size: must be a positive multiple of 16, got " + str(p.page_size));
    FA_CUTE_REQUIRE(p.num_pages >= 1, "num_pages: the page pool must hold >= 1 page, got " + str(p.num_pages));
    FA_CUTE_REQUIRE(p.page_table_stride >= 1, "page_table: must have >= 1 column, got " + str(p.page_table_stride));
    FA_CUTE_REQUIRE((long long)p.page_table_stride * p.page_size == p.seqlen_k,
                    "seqlen_k: a paged cache's capacity is page_table_stride * page_size = " +
                        str((long long)p.page_table_stride * p.page_size) + ", got " + str(p.seqlen_k));
    FA_CUTE_REQUIRE(p.kv_batch_idx == nullptr, "cache_batch_idx: not with a page_table (the table maps the pages)");
  }
  if (p.kv_batch_idx != nullptr) FA_CUTE_REQUIRE(p.batch_k >= 1, "batch_k: must be >= 1, got " + str(p.batch_k));
  // q, out, lse (and the split buffers) as a dense call; k and v checked below as the cache.
  FwdParams dense = p;
  dense.seqused_k = nullptr;
  dense.kv_batch_idx = nullptr;
  dense.page_table = nullptr;
  dense.causal_offset = 0;
  ForwardExtents extents = check_forward_args(kernel, dense, device);
  auto const ptr = [](void const* x) { return reinterpret_cast<uintptr_t>(x); };
  int const entries = paged ? p.num_pages : (p.kv_batch_idx != nullptr ? p.batch_k : p.batch);
  int const rows = paged ? p.page_size : p.seqlen_k;
  extents[1] = check_operand("k_cache", ptr(p.k_ptr), entries, rows, p.nheads_k, p.head_dim, p.k_batch_stride,
                             p.k_row_stride, p.k_head_stride, kernel.block_n);
  extents[2] = check_operand("v_cache", ptr(p.v_ptr), entries, rows, p.nheads_k, p.head_dim, p.v_batch_stride,
                             p.v_row_stride, p.v_head_stride, kernel.block_n);
  extents[7] = check_int32_buffer("cache_seqlens", p.seqused_k, p.batch);
  if (p.kv_batch_idx != nullptr) extents[8] = check_int32_buffer("cache_batch_idx", p.kv_batch_idx, p.batch);
  if (paged) extents[9] = check_int32_buffer("page_table", p.page_table, (long long)p.batch * p.page_table_stride);
  return extents;
}

std::array<OperandExtent, 2> check_kv_append_args(KvAppendParams const& a) {
  FA_CUTE_REQUIRE(a.seqlen_new >= 1 && a.seqlen_new <= kMaxSeqlen,
                  "k, v: the new tokens per sequence must be in [1, " + str(kMaxSeqlen) + "], got " + str(a.seqlen_new));
  auto const ptr = [](void const* x) { return reinterpret_cast<uintptr_t>(x); };
  return {check_operand("k", ptr(a.k_new_ptr), a.batch, a.seqlen_new, a.nheads_k, a.head_dim, a.k_new_batch_stride,
                        a.k_new_row_stride, a.k_new_head_stride, 1),
          check_operand("v", ptr(a.v_new_ptr), a.batch, a.seqlen_new, a.nheads_k, a.head_dim, a.v_new_batch_stride,
                        a.v_new_row_stride, a.v_new_head_stride, 1)};
}

std::pair<OperandExtent, OperandExtent> check_fp8_v_layout_args(Fp8VLayoutParams const& a) {
  auto const ptr = [](void const* x) { return reinterpret_cast<uintptr_t>(x); };
  FA_CUTE_REQUIRE(a.batch >= 1 && a.seqlen_k >= 1 && a.nheads_k >= 1 && a.seqlen_k <= kMaxSeqlen &&
                      a.nheads_k <= kMaxSeqlen && a.batch <= kMaxSeqlen,
                  "batch, seqlen_k, nheads_k: each must be in [1, " + str(kMaxSeqlen) + "]");
  FA_CUTE_REQUIRE(fp8_v_layout_takes_head_dim(a.head_dim),
                  "head_dim: must be a multiple of 16 in [16, " + str(kFp8VLayoutMaxHeadDim) + "], got " +
                      str(a.head_dim));
  int64_t const vt_keys = fp8_vt_keys(a.seqlen_k);
  index_t const vt_head_stride = index_t(a.head_dim) * vt_keys;  // <= 2^37
  FA_CUTE_REQUIRE(u128(vt_head_stride) * a.nheads_k * a.batch <= kMaxExtentBytes,
                  "vt: batch * nheads_k * head_dim * keys must address at most 2^48 bytes");
  return {check_operand("v", ptr(a.v_ptr), a.batch, a.seqlen_k, a.nheads_k, a.head_dim, a.v_batch_stride,
                        a.v_row_stride, a.v_head_stride, 1, 1),
          check_operand("vt", ptr(a.vt_ptr), a.batch, a.head_dim, a.nheads_k, int(vt_keys),
                        vt_head_stride * a.nheads_k, vt_keys, vt_head_stride, 1, 1)};
}

void check_device(int device) {
  // The runtime fixes the device count at its initialisation (CUDA_VISIBLE_DEVICES).
  static std::atomic<int> known_count{-1};
  int count = known_count.load(std::memory_order_relaxed);
  if (count < 0) {
    check_cuda(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
    known_count.store(count, std::memory_order_relaxed);
  }
  FA_CUTE_REQUIRE(device >= 0 && device < count,
          "device: must be in [0, " + str(count) + ") (the CUDA devices visible), got " + str(device));
}

void check_stream_handle(uintptr_t stream) {
  // 0, 1 and 2 are the legacy default, cudaStreamLegacy and cudaStreamPerThread. Any other
  // handle is the address of the driver's stream object, which the driver allocates with
  // at least 8-byte alignment in user space (below 2^57 even with 5-level paging). No
  // check can do more without dereferencing the handle (cudaStreamQuery, cuStreamGetCtx
  // do), which a garbage value would turn into a crash: a well-aligned garbage handle still
  // reaches the launch.
  FA_CUTE_REQUIRE(stream <= 2 || (stream % 8 == 0 && stream < (uintptr_t(1) << 57)),
          "stream: " + std::to_string(stream) +
              " is not a CUDA stream handle (0, 1, 2 or an 8-byte aligned user-space address)");
}

namespace {
// cuPointerGetAttributes from the driver that the runtime loaded: the module links no
// libcuda, so that it imports on machines without a driver (CI).
PFN_cuPointerGetAttributes_v7000 pointer_get_attributes() {
  static PFN_cuPointerGetAttributes_v7000 const fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult status = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    cudaError_t const err = cudaGetDriverEntryPointByVersion("cuPointerGetAttributes", &f, 7000, cudaEnableDefault, &status);
#else
    cudaError_t const err = cudaGetDriverEntryPoint("cuPointerGetAttributes", &f, cudaEnableDefault, &status);
#endif
    check_cuda(err, "cudaGetDriverEntryPoint(cuPointerGetAttributes)");
    if (status != cudaDriverEntryPointSuccess || f == nullptr) {
      throw std::runtime_error("fa_cute: the CUDA driver has no cuPointerGetAttributes");
    }
    return reinterpret_cast<PFN_cuPointerGetAttributes_v7000>(f);
  }();
  return fn;
}
}  // namespace

void check_forward_memory(ForwardExtents const& extents, int device) {
  auto const get = pointer_get_attributes();
  for (OperandExtent const& e : extents) {
    if (e.ptr == 0) continue;  // lse, o_accum, lse_accum not used; q, k, v, out were checked non-null
    auto const n = [&] { return std::string(e.name); };
    unsigned int memory_type = 0;
    int ordinal = -1;
    CUdeviceptr start = 0;
    size_t size = 0;
    CUpointer_attribute attributes[] = {CU_POINTER_ATTRIBUTE_MEMORY_TYPE, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                                        CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, CU_POINTER_ATTRIBUTE_RANGE_SIZE};
    void* data[] = {&memory_type, &ordinal, &start, &size};
    // A pointer that no CUDA allocation holds gets null attributes and CUDA_SUCCESS.
    CUresult const result = get(4, attributes, data, CUdeviceptr(e.ptr));
    FA_CUTE_REQUIRE(result == CUDA_SUCCESS,
            n() + ": cuPointerGetAttributes failed with CUresult " + std::to_string(int(result)) + " on this pointer");
    FA_CUTE_REQUIRE(size > 0 && (memory_type == CU_MEMORYTYPE_DEVICE || memory_type == CU_MEMORYTYPE_UNIFIED),
            n() + ": the data pointer is not in a CUDA device allocation");
    FA_CUTE_REQUIRE(memory_type != CU_MEMORYTYPE_DEVICE || ordinal == device,
            n() + ": the data pointer is memory of device " + std::to_string(ordinal) + ", not of device " +
                std::to_string(device));
    // For virtual-memory mappings (cuMemMap; PyTorch's expandable segments) the range is
    // the reserved address range, which may hold several mapped chunks.
    FA_CUTE_REQUIRE(e.ptr >= start && e.ptr - start + e.bytes <= size,
                    n() + ": its sizes and strides address " + std::to_string(e.bytes) +
                        " bytes from the data pointer, past the end of its allocation (" +
                        std::to_string(start + size - e.ptr) + " bytes from it)");
  }
}

BackwardExtents check_backward_args(BwdKernel const& kernel, BwdParams const& p, int device) {
  check_problem_sizes(p.batch, p.seqlen_q, p.seqlen_k, p.nheads, p.nheads_k);
  FA_CUTE_REQUIRE(p.dq_accum_rows >= p.seqlen_q && p.dq_accum_rows % kDqAccumRowAlign == 0,
                  "dq_accum_rows: must be seqlen_q rounded up to a multiple of " + str(kDqAccumRowAlign) + ", got " +
                      str(p.dq_accum_rows));
  FA_CUTE_REQUIRE(p.head_dim == kernel.head_dim, std::string("head_dim: backward config ") + kernel.config +
                                                     " is built for head dim " + str(kernel.head_dim) + ", got " +
                                                     str(p.head_dim));
  FA_CUTE_REQUIRE(p.causal_offset >= -kMaxSeqlen && p.causal_offset <= kMaxSeqlen,
          "causal_offset: must be in [-" + str(kMaxSeqlen) + ", " + str(kMaxSeqlen) + "], got " + str(p.causal_offset));
  // The window's row and block bounds (BwdQueryRange, dq_first_n_block) add a block, the
  // offset and the bound: each below kMaxSeqlen keeps them within int.
  FA_CUTE_REQUIRE(p.window_left >= -1 && p.window_left <= kMaxSeqlen,
          "window_left: must be -1 (unbounded) or in [0, " + str(kMaxSeqlen) + "], got " + str(p.window_left));
  FA_CUTE_REQUIRE(p.window_right >= -1 && p.window_right <= kMaxSeqlen,
          "window_right: must be -1 (unbounded) or in [0, " + str(kMaxSeqlen) + "], got " + str(p.window_right));
  long long const key_tiles = (long long)((p.seqlen_k + kernel.block_n - 1) / kernel.block_n) * p.nheads_k * p.batch;
  FA_CUTE_REQUIRE(key_tiles <= kMaxLaunchTiles, "batch * nheads_k * ceil(seqlen_k / " + str(kernel.block_n) +
                                                    ") must be <= " + str(kMaxLaunchTiles) +
                                                    " (tiles are numbered in int)");
  FA_CUTE_REQUIRE(device >= 0, "device: must be a CUDA device index >= 0, got " + str(device));
  auto const ptr = [](void const* x) { return reinterpret_cast<uintptr_t>(x); };
  u128 const rows = u128(p.batch) * p.nheads * p.seqlen_q;
  auto const fp32 = [&](char const* name, void const* x, u128 count, unsigned align) {
    FA_CUTE_REQUIRE(x != nullptr, std::string(name) + ": the data pointer is null");
    FA_CUTE_REQUIRE(ptr(x) % align == 0, std::string(name) + ": data pointer must be " + str(align) + "-byte aligned");
    return check_fp32_buffer(name, ptr(x), count);
  };
  // A (batch, seqlen, heads, d) operand of the queries' or the keys' sizes. block_rows: the
  // rows of the tiles the main kernel loads or stores (32-bit in-tile offsets); out and dq
  // are read and written row by row with 64-bit offsets (1).
  auto const operand = [&](char const* name, void const* x, bool keys, index_t batch_stride, index_t row_stride,
                           index_t head_stride, int block_rows) {
    return check_operand(name, ptr(x), p.batch, keys ? p.seqlen_k : p.seqlen_q, keys ? p.nheads_k : p.nheads,
                         p.head_dim, batch_stride, row_stride, head_stride, block_rows);
  };
  int const bm = kernel.block_m, bn = kernel.block_n;
  return BackwardExtents{
      operand("q", p.q_ptr, false, p.q_batch_stride, p.q_row_stride, p.q_head_stride, bm),
      operand("k", p.k_ptr, true, p.k_batch_stride, p.k_row_stride, p.k_head_stride, bn),
      operand("v", p.v_ptr, true, p.v_batch_stride, p.v_row_stride, p.v_head_stride, bn),
      operand("out", p.o_ptr, false, p.o_batch_stride, p.o_row_stride, p.o_head_stride, 1),
      operand("dout", p.do_ptr, false, p.do_batch_stride, p.do_row_stride, p.do_head_stride, bm),
      fp32("lse", p.lse_ptr, rows, 4),
      operand("dq", p.dq_ptr, false, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride, 1),
      operand("dk", p.dk_ptr, true, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride, bn),
      operand("dv", p.dv_ptr, true, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride, bn),
      fp32("dq_accum", p.dq_accum_ptr, u128(p.batch) * p.nheads * p.dq_accum_rows * p.head_dim, 16),
      fp32("softmax_d", p.softmax_d_ptr, rows, 4),
      // Optional (deterministic): int32 counters, 4-byte elements as the fp32 buffers.
      p.dq_semaphore_ptr == nullptr
          ? OperandExtent{"dq_semaphore", 0, 0}
          : check_fp32_buffer("dq_semaphore", ptr(p.dq_semaphore_ptr),
                              u128(p.batch) * p.nheads * ((p.seqlen_q + bm - 1) / bm)),
      OperandExtent{"cu_seqlens_q", 0, 0},
      OperandExtent{"cu_seqlens_k", 0, 0},
      OperandExtent{"seqused_k", 0, 0},
  };
}

BackwardExtents check_varlen_backward_args(BwdKernel const& kernel, BwdParams const& p, int device) {
  BwdParams packed = packed_as_one_entry(p);
  packed.dq_semaphore_ptr = nullptr;  // its counters are numbered per sequence: checked below
  check_problem_sizes(p.batch, p.seqlen_q, p.seqlen_k, p.nheads, p.nheads_k);  // seqlen_q/k: the maxima
  FA_CUTE_REQUIRE(p.dq_accum_rows == bwd_dq_accum_varlen_rows(p.total_q, p.batch),
                  "dq_accum_rows: a varlen batch's are total_q + batch * " + str(kDqAccumRowAlign) +
                      " rounded up to a multiple of " + str(kDqAccumRowAlign) + ", got " + str(p.dq_accum_rows));
  long long const key_tiles = (long long)((p.seqlen_k + kernel.block_n - 1) / kernel.block_n) * p.nheads_k * p.batch;
  FA_CUTE_REQUIRE(key_tiles <= kMaxLaunchTiles, "batch * nheads_k * ceil(max_seqlen_k / " + str(kernel.block_n) +
                                                    ") must be <= " + str(kMaxLaunchTiles) +
                                                    " (tiles are numbered in int)");
  BackwardExtents extents = check_backward_args(kernel, packed, device);
  int const bm = kernel.block_m;
  if (p.dq_semaphore_ptr != nullptr) {
    extents[11] = check_fp32_buffer("dq_semaphore", reinterpret_cast<uintptr_t>(p.dq_semaphore_ptr),
                                    u128(p.batch) * p.nheads * ((p.seqlen_q + bm - 1) / bm));
  }
  std::array<OperandExtent, 3> const offsets = packed_offset_extents(p);
  for (size_t i = 0; i < offsets.size(); ++i) extents[12 + i] = offsets[i];
  return extents;
}

void check_backward_memory(BackwardExtents const& extents, int device) {
  // In pieces of check_forward_memory's size; unused slots (ptr 0) are skipped there.
  for (size_t first = 0; first < extents.size(); first += ForwardExtents().size()) {
    ForwardExtents piece{};
    for (size_t i = 0; i < piece.size(); ++i) {
      piece[i] = first + i < extents.size() ? extents[first + i] : OperandExtent{"", 0, 0};
    }
    check_forward_memory(piece, device);
  }
}

}  // namespace fa_cute
