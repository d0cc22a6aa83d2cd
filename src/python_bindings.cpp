// fa_cute._C: the kernels behind plain integers (pointers, sizes, strides, a stream
// handle). No libtorch: python/fa_cute fills these from torch tensors, so one build
// serves any PyTorch version. Every entry point checks on its own what the kernels rely on
// (src/launch_checks.h), as a second line of defence behind python/fa_cute's validation
// and the only one for a direct caller; std::invalid_argument becomes ValueError in
// Python, std::runtime_error RuntimeError.

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>

#include <cuda_runtime_api.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bwd_params.h"
#include "bwd_registry.h"
#include "cuda_check.h"
#include "flash_params.h"
#include "fp8_layout.h"
#include "fwd_heuristic.h"
#include "kernel_registry.h"
#include "kv_append.h"
#include "launch_checks.h"
#include "tile_size.h"

namespace py = pybind11;

namespace fa_cute {
namespace {

using Strides = std::tuple<int64_t, int64_t, int64_t>;  // (batch, seq, head), in elements

DType parse_dtype(std::string const& dtype) {
  if (dtype == "bf16") return DType::kBF16;
  if (dtype == "fp16") return DType::kFP16;
  throw std::invalid_argument("dtype: '" + dtype + "' is not supported; allowed: bf16, fp16");
}

// The problem's sizes in FwdParams or BwdParams (the same field names), checked as the
// kernels rely on them: what forward, num_splits and backward share.
template <class Params>
Params problem_params(int batch, int seqlen_q, int seqlen_k, int nheads, int nheads_k, bool is_causal) {
  check_problem_sizes(batch, seqlen_q, seqlen_k, nheads, nheads_k);
  Params params{};
  params.batch = batch;
  params.seqlen_q = seqlen_q;
  params.seqlen_k = seqlen_k;
  params.nheads = nheads;
  params.nheads_k = nheads_k;
  params.is_causal = is_causal;
  return params;
}

// q, k, v and out: their pointers and (batch, row, head) strides, and the softmax scale, in
// FwdParams or BwdParams.
template <class Params>
void set_attention_operands(Params& params, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t o,
                            Strides q_strides, Strides k_strides, Strides v_strides, Strides o_strides,
                            double softmax_scale) {
  FA_CUTE_REQUIRE(softmax_scale > 0.0 && softmax_scale < 1e30, "softmax_scale: must be a finite positive number");
  params.q_ptr = reinterpret_cast<void const*>(q);
  params.k_ptr = reinterpret_cast<void const*>(k);
  params.v_ptr = reinterpret_cast<void const*>(v);
  params.o_ptr = reinterpret_cast<decltype(params.o_ptr)>(o);
  std::tie(params.q_batch_stride, params.q_row_stride, params.q_head_stride) = q_strides;
  std::tie(params.k_batch_stride, params.k_row_stride, params.k_head_stride) = k_strides;
  std::tie(params.v_batch_stride, params.v_row_stride, params.v_head_stride) = v_strides;
  std::tie(params.o_batch_stride, params.o_row_stride, params.o_head_stride) = o_strides;
  params.softmax_scale = float(softmax_scale);
  params.softmax_scale_log2 = float(softmax_scale * 1.4426950408889634);  // log2(e)
}

// softcap > 0: the kernel maps Q K^T to tanh(Q K^T * softmax_scale / softcap), and its
// softmax (and LSE) scales those by softcap (FwdParams::softmax_scale).
void set_softcap(FwdParams& params, double softcap) {
  FA_CUTE_REQUIRE(softcap >= 0.0 && softcap < 1e30, "softcap: must be 0 (none) or a finite positive number");
  params.softcap_premul = 0.f;
  if (softcap == 0.0) return;
  params.softcap_premul = float(params.softmax_scale / softcap);
  params.softmax_scale = float(softcap);
  params.softmax_scale_log2 = float(softcap * 1.4426950408889634);  // log2(e)
}

// What every forward entry point (forward, varlen_forward, kvcache_forward) sets besides its sizes and
// operands: the LSE buffer (0: none), the head dim, the softcap and the window bounds.
void set_forward_options(FwdParams& params, uintptr_t lse, int head_dim, double softcap, int window_left,
                         int window_right) {
  set_softcap(params, softcap);
  params.softmax_lse_ptr = reinterpret_cast<float*>(lse);
  params.head_dim = head_dim;
  params.window_left = window_left;
  params.window_right = window_right;
}

// After the integer checks (CI, with no GPU, reaches every one of them): the runtime and the
// driver, i.e. the stream handle, the device (selected in this module's own static CUDA
// runtime) and the pointers' allocations.
template <class Extents, class CheckMemory>
void check_runtime(Extents const& extents, int device, uintptr_t stream_handle, CheckMemory&& check_memory) {
  check_stream_handle(stream_handle);
  check_device(device);
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  check_memory(extents, device);
}

double forward(std::string const& config, std::string const& dtype, uintptr_t q, uintptr_t k,
               uintptr_t v, uintptr_t o, uintptr_t lse, int batch, int seqlen_q, int seqlen_k,
               int nheads, int nheads_k, int head_dim, Strides q_strides, Strides k_strides,
               Strides v_strides, Strides o_strides, double softmax_scale, bool is_causal,
               int causal_offset, double softcap, int window_left, int window_right, int device,
               uintptr_t stream_handle, bool timed, int num_splits, uintptr_t o_accum, uintptr_t lse_accum) {
  FwdKernel const& kernel = find_fwd_kernel(config, parse_dtype(dtype));
  FwdParams params = problem_params<FwdParams>(batch, seqlen_q, seqlen_k, nheads, nheads_k, is_causal);
  set_attention_operands(params, q, k, v, o, q_strides, k_strides, v_strides, o_strides, softmax_scale);
  set_forward_options(params, lse, head_dim, softcap, window_left, window_right);
  params.causal_offset = causal_offset;
  params.num_splits = num_splits;
  params.o_accum_ptr = reinterpret_cast<float*>(o_accum);
  params.lse_accum_ptr = reinterpret_cast<float*>(lse_accum);

  ForwardExtents const extents = check_forward_args(kernel, params, device);
  check_runtime(extents, device, stream_handle, check_forward_memory);
  auto const stream = reinterpret_cast<cudaStream_t>(stream_handle);

  py::gil_scoped_release release;
  if (!timed) {
    kernel.launch(params, stream);
    return 0.0;
  }
  cudaEvent_t start = nullptr, stop = nullptr;
  check_cuda(cudaEventCreate(&start), "cudaEventCreate");
  check_cuda(cudaEventCreate(&stop), "cudaEventCreate");
  float ms = 0.f;
  cudaError_t err = cudaEventRecord(start, stream);
  if (err == cudaSuccess) {
    try {
      kernel.launch(params, stream);
    } catch (...) {
      cudaEventDestroy(start);
      cudaEventDestroy(stop);
      throw;
    }
    err = cudaEventRecord(stop, stream);
  }
  if (err == cudaSuccess) err = cudaEventSynchronize(stop);
  if (err == cudaSuccess) err = cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  check_cuda(err, "timing events");
  return double(ms);
}

// The FP8 forward (docs/design.md, FP8 forward): q (batch, seqlen_q, nheads, d) and k
// (batch, seqlen_k, nheads_k, d) in e4m3, vt the layout pass's (fp8_v_layout) V, out bf16;
// q_descale, k_descale, v_descale fp32 (batch, nheads_k) contiguous arrays (0: 1). The
// scores are q k^T * q_descale * k_descale * softmax_scale, O is P V * v_descale.
void fp8_forward(std::string const& config, uintptr_t q, uintptr_t k, uintptr_t vt, uintptr_t o, uintptr_t lse,
                 uintptr_t q_descale, uintptr_t k_descale, uintptr_t v_descale, int batch, int seqlen_q,
                 int seqlen_k, int nheads, int nheads_k, int head_dim, Strides q_strides, Strides k_strides,
                 Strides vt_strides, Strides o_strides, double softmax_scale, bool is_causal, int causal_offset,
                 int device, uintptr_t stream_handle) {
  FwdKernel const& kernel = find_fwd_kernel(config, DType::kE4M3);
  FwdParams params = problem_params<FwdParams>(batch, seqlen_q, seqlen_k, nheads, nheads_k, is_causal);
  set_attention_operands(params, q, k, vt, o, q_strides, k_strides, vt_strides, o_strides, softmax_scale);
  set_forward_options(params, lse, head_dim, /*softcap=*/0.0, /*window_left=*/-1, /*window_right=*/-1);
  params.causal_offset = causal_offset;
  params.num_splits = 1;
  params.q_descale_ptr = reinterpret_cast<float const*>(q_descale);
  params.k_descale_ptr = reinterpret_cast<float const*>(k_descale);
  params.v_descale_ptr = reinterpret_cast<float const*>(v_descale);

  ForwardExtents const extents = check_forward_args(kernel, params, device);
  check_runtime(extents, device, stream_handle, check_forward_memory);
  py::gil_scoped_release release;
  kernel.launch(params, reinterpret_cast<cudaStream_t>(stream_handle));
}

// The FP8 forward's V layout pass (fp8_layout.h): v (batch, seqlen_k, nheads_k, d) e4m3 with
// (batch, row, head) strides into vt, contiguous (batch, nheads_k, d, fp8_vt_keys(seqlen_k)).
void fp8_v_layout(uintptr_t v, uintptr_t vt, int batch, int seqlen_k, int nheads_k, int head_dim, Strides v_strides,
                  int device, uintptr_t stream_handle) {
  Fp8VLayoutParams p{};
  p.v_ptr = reinterpret_cast<void const*>(v);
  std::tie(p.v_batch_stride, p.v_row_stride, p.v_head_stride) = v_strides;
  p.vt_ptr = reinterpret_cast<void*>(vt);
  p.batch = batch;
  p.seqlen_k = seqlen_k;
  p.nheads_k = nheads_k;
  p.head_dim = head_dim;
  ForwardExtents extents{};  // v and vt; the rest unused (null)
  std::tie(extents[0], extents[1]) = check_fp8_v_layout_args(p);
  check_runtime(extents, device, stream_handle, check_forward_memory);
  py::gil_scoped_release release;
  launch_fp8_v_layout(p, reinterpret_cast<cudaStream_t>(stream_handle));
}

// Attention over a variable-length batch: q, k, v, out packed (total rows, heads, head_dim)
// with (row, head) strides, sequence b's rows [cu_seqlens_q[b], cu_seqlens_q[b + 1]) (k, v:
// cu_seqlens_k, of which seqused_k[b] keys when seqused_k is non-zero), all int32 device
// buffers that the host never reads (FwdParams). max_seqlen_q bounds every sequence's
// queries (the launch covers that many); a batch that breaks a rule of
// fwd_varlen_check.h comes back as NaN. lse (0: none) is (nheads, total_q) fp32.
// tile_counter (0: none): one int32 of device memory, which a persistent Hopper kernel
// claims its tiles from (cleared on the stream first; FwdParams::tile_counter).
void varlen_forward(std::string const& config, std::string const& dtype, uintptr_t q, uintptr_t k, uintptr_t v,
                    uintptr_t o, uintptr_t lse, uintptr_t cu_seqlens_q, uintptr_t cu_seqlens_k, uintptr_t seqused_k,
                    int batch, int total_q, int total_k, int max_seqlen_q, int max_seqlen_k, int nheads, int nheads_k,
                    int head_dim, Strides q_strides, Strides k_strides, Strides v_strides, Strides o_strides,
                    double softmax_scale, bool is_causal, double softcap, int window_left, int window_right,
                    int device, uintptr_t stream_handle, uintptr_t tile_counter) {
  FwdKernel const& kernel = find_fwd_kernel(config, parse_dtype(dtype));
  // The launch's lengths are the maxima (FwdParams).
  FwdParams params = problem_params<FwdParams>(batch, max_seqlen_q, max_seqlen_k, nheads, nheads_k, is_causal);
  params.total_q = total_q;
  params.total_k = total_k;
  params.cu_seqlens_q = reinterpret_cast<int const*>(cu_seqlens_q);
  params.cu_seqlens_k = reinterpret_cast<int const*>(cu_seqlens_k);
  params.seqused_k = reinterpret_cast<int const*>(seqused_k);
  params.tile_counter = reinterpret_cast<int*>(tile_counter);
  set_attention_operands(params, q, k, v, o, q_strides, k_strides, v_strides, o_strides, softmax_scale);
  set_forward_options(params, lse, head_dim, softcap, window_left, window_right);
  params.num_splits = 1;

  ForwardExtents const extents = check_varlen_forward_args(kernel, params, device);
  check_runtime(extents, device, stream_handle, check_forward_memory);
  py::gil_scoped_release release;
  kernel.launch(params, reinterpret_cast<cudaStream_t>(stream_handle));
}

// Attention of q (batch, seqlen_q, nheads, d) over a KV cache: k_cache/v_cache entries
// (batch_k, capacity, nheads_k, d) read through kv_batch_idx (0: entry b for sequence b), or
// pages (num_pages, page_size, nheads_k, d) read through page_table (batch,
// page_table_stride); sequence b sees its first cache_seqlens[b] keys, plus seqlen_new with
// k_new (non-zero): the new tokens (batch, seqlen_new, nheads_k, d), first written into the
// cache at cache_seqlens[b] (kv_append.h), on the same stream. All int32 buffers
// stay on the GPU (no host read); a bad one poisons the output (fwd_varlen_check.h).
void kvcache_forward(std::string const& config, std::string const& dtype, uintptr_t q, uintptr_t k_cache,
                     uintptr_t v_cache, uintptr_t o, uintptr_t lse, uintptr_t k_new, uintptr_t v_new,
                     uintptr_t cache_seqlens, uintptr_t kv_batch_idx, uintptr_t page_table,
                     int batch, int seqlen_q, int seqlen_new, int capacity, int nheads, int nheads_k, int head_dim,
                     int batch_k, int page_table_stride, int page_size, int num_pages, Strides q_strides,
                     Strides k_cache_strides, Strides v_cache_strides, Strides o_strides, Strides k_new_strides,
                     Strides v_new_strides, double softmax_scale, bool is_causal, double softcap, int window_left,
                     int window_right, int device, uintptr_t stream_handle, int num_splits, uintptr_t o_accum,
                     uintptr_t lse_accum) {
  FwdKernel const& kernel = find_fwd_kernel(config, parse_dtype(dtype));
  // The launch's key length is the cache's capacity; each sequence's is cache_seqlens[b] plus
  // the new tokens, added in the kernels (FwdParams::seqused_k_add: no kernel of its own).
  FwdParams params = problem_params<FwdParams>(batch, seqlen_q, capacity, nheads, nheads_k, is_causal);
  set_attention_operands(params, q, k_cache, v_cache, o, q_strides, k_cache_strides, v_cache_strides, o_strides,
                         softmax_scale);
  set_forward_options(params, lse, head_dim, softcap, window_left, window_right);
  params.num_splits = num_splits;
  params.o_accum_ptr = reinterpret_cast<float*>(o_accum);
  params.lse_accum_ptr = reinterpret_cast<float*>(lse_accum);
  params.seqused_k = reinterpret_cast<int const*>(cache_seqlens);
  params.seqused_k_add = k_new != 0 ? seqlen_new : 0;
  params.kv_batch_idx = reinterpret_cast<int const*>(kv_batch_idx);
  params.batch_k = batch_k;
  params.page_table = reinterpret_cast<int const*>(page_table);
  params.page_table_stride = page_table_stride;
  params.page_size = page_size;
  params.num_pages = num_pages;

  ForwardExtents extents = check_kvcache_forward_args(kernel, params, device);
  KvAppendParams append{};
  if (k_new != 0) {
    append.k_new_ptr = reinterpret_cast<void const*>(k_new);
    append.v_new_ptr = reinterpret_cast<void const*>(v_new);
    std::tie(append.k_new_batch_stride, append.k_new_row_stride, append.k_new_head_stride) = k_new_strides;
    std::tie(append.v_new_batch_stride, append.v_new_row_stride, append.v_new_head_stride) = v_new_strides;
    append.k_cache_ptr = reinterpret_cast<void*>(k_cache);
    append.v_cache_ptr = reinterpret_cast<void*>(v_cache);
    std::tie(append.k_cache_batch_stride, append.k_cache_row_stride, append.k_cache_head_stride) = k_cache_strides;
    std::tie(append.v_cache_batch_stride, append.v_cache_row_stride, append.v_cache_head_stride) = v_cache_strides;
    append.cache_seqlens = reinterpret_cast<int const*>(cache_seqlens);
    append.kv_batch_idx = params.kv_batch_idx;
    append.page_table = params.page_table;
    append.page_table_stride = page_table_stride;
    append.page_size = page_size;
    append.num_pages = num_pages;
    append.batch = batch;
    append.batch_k = kv_batch_idx != 0 ? batch_k : batch;
    append.seqlen_new = seqlen_new;
    append.nheads_k = nheads_k;
    append.head_dim = head_dim;
    append.capacity = capacity;
    std::array<OperandExtent, 2> const new_kv = check_kv_append_args(append);
    extents[10] = new_kv[0];
    extents[11] = new_kv[1];
  }
  check_runtime(extents, device, stream_handle, check_forward_memory);
  auto const stream = reinterpret_cast<cudaStream_t>(stream_handle);
  py::gil_scoped_release release;
  if (k_new != 0) launch_kv_append(append, stream);
  kernel.launch(params, stream);
}

// The split-KV heuristic's choice for a problem (1: no split), so that the caller can size
// the fp32 o_accum / lse_accum buffers that forward(num_splits > 1) needs.
int num_splits(std::string const& config, std::string const& dtype, int batch, int seqlen_q,
               int seqlen_k, int nheads, int nheads_k, bool is_causal, int device) {
  FwdKernel const& kernel = find_fwd_kernel(config, parse_dtype(dtype));
  FwdParams const params = problem_params<FwdParams>(batch, seqlen_q, seqlen_k, nheads, nheads_k, is_causal);
  FA_CUTE_REQUIRE(device >= 0, "device: must be a CUDA device index >= 0, got " + std::to_string(device));
  check_device(device);
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  return kernel.num_splits(params, device);
}

// The backward of attention: dq, dk, dv from dout, the forward's q, k, v, out and lse, through
// the caller's fp32 work buffers dq_accum (batch, nheads, seqlen_q rounded up to
// limits()["dq_accum_row_align"], head_dim) and softmax_d
// (batch, nheads, seqlen_q), both contiguous (src/bwd_launch.h: preprocess, main kernel,
// postprocess). dq_semaphore (0: none): deterministic dQ, the caller's int32 buffer
// (batch, nheads, ceil(seqlen_q / block_m)) (src/bwd_dq_order.h). Checked as forward is.
// The forward's softcap and window, as the backward takes them: softcap > 0 sets the
// exponent's scale to softcap * log2(e) and softcap_premul (the forward's mapping of S),
// while softmax_scale stays the caller's (dQ's and dK's factor, the chain rule's
// softcap / softcap cancelling); the window bounds as given (check_backward_args bounds them).
void set_backward_options(BwdParams& params, double softcap, int window_left, int window_right) {
  FA_CUTE_REQUIRE(softcap >= 0.0 && softcap < 1e30, "softcap: must be 0 (none) or a finite positive number");
  params.softcap_premul = 0.f;
  if (softcap > 0.0) {
    params.softcap_premul = float(params.softmax_scale / softcap);
    params.softmax_scale_log2 = float(softcap * 1.4426950408889634);  // log2(e)
  }
  params.window_left = window_left;
  params.window_right = window_right;
}

// What backward and varlen_backward set besides the forward's operands and the sizes: dout,
// lse, the gradients, the work buffers, the deterministic counters (dq_semaphore 0: none)
// and the softcap and window (set_backward_options; after the operands' softmax_scale).
void set_backward_operands(BwdParams& params, BwdKernel const& kernel, uintptr_t dout, uintptr_t lse, uintptr_t dq,
                           uintptr_t dk, uintptr_t dv, uintptr_t dq_accum, uintptr_t softmax_d, Strides do_strides,
                           Strides dq_strides, Strides dk_strides, Strides dv_strides, int head_dim,
                           uintptr_t dq_semaphore, double softcap, int window_left, int window_right) {
  params.do_ptr = reinterpret_cast<void const*>(dout);
  params.lse_ptr = reinterpret_cast<float const*>(lse);
  params.dq_ptr = reinterpret_cast<void*>(dq);
  params.dk_ptr = reinterpret_cast<void*>(dk);
  params.dv_ptr = reinterpret_cast<void*>(dv);
  params.dq_accum_ptr = reinterpret_cast<float*>(dq_accum);
  params.softmax_d_ptr = reinterpret_cast<float*>(softmax_d);
  params.dq_semaphore_ptr = reinterpret_cast<int*>(dq_semaphore);  // 0: not deterministic
  params.dq_semaphore_block_m = kernel.block_m;
  std::tie(params.do_batch_stride, params.do_row_stride, params.do_head_stride) = do_strides;
  std::tie(params.dq_batch_stride, params.dq_row_stride, params.dq_head_stride) = dq_strides;
  std::tie(params.dk_batch_stride, params.dk_row_stride, params.dk_head_stride) = dk_strides;
  std::tie(params.dv_batch_stride, params.dv_row_stride, params.dv_head_stride) = dv_strides;
  params.head_dim = head_dim;
  set_backward_options(params, softcap, window_left, window_right);
}

void backward(std::string const& config, std::string const& dtype, uintptr_t dout, uintptr_t q, uintptr_t k,
              uintptr_t v, uintptr_t out, uintptr_t lse, uintptr_t dq, uintptr_t dk, uintptr_t dv,
              uintptr_t dq_accum, uintptr_t softmax_d, int batch, int seqlen_q, int seqlen_k, int nheads,
              int nheads_k, int head_dim, Strides q_strides, Strides k_strides, Strides v_strides,
              Strides o_strides, Strides do_strides, Strides dq_strides, Strides dk_strides,
              Strides dv_strides, double softmax_scale, bool is_causal, int causal_offset, int device,
              uintptr_t stream_handle, uintptr_t dq_semaphore, double softcap, int window_left,
              int window_right) {
  BwdKernel const& kernel = find_bwd_kernel(config, parse_dtype(dtype));
  BwdParams params = problem_params<BwdParams>(batch, seqlen_q, seqlen_k, nheads, nheads_k, is_causal);
  set_attention_operands(params, q, k, v, out, q_strides, k_strides, v_strides, o_strides, softmax_scale);
  set_backward_operands(params, kernel, dout, lse, dq, dk, dv, dq_accum, softmax_d, do_strides, dq_strides, dk_strides,
                        dv_strides, head_dim, dq_semaphore, softcap, window_left, window_right);
  // 64-bit until check_backward_args has bounded seqlen_q (a length past kMaxSeqlen is refused there).
  params.dq_accum_rows = int(std::min<int64_t>(
      (int64_t(seqlen_q) + kDqAccumRowAlign - 1) / kDqAccumRowAlign * kDqAccumRowAlign, INT32_MAX));
  params.causal_offset = causal_offset;

  BackwardExtents const extents = check_backward_args(kernel, params, device);
  check_runtime(extents, device, stream_handle, check_backward_memory);
  py::gil_scoped_release release;
  kernel.launch(params, reinterpret_cast<cudaStream_t>(stream_handle));
}

// The backward of varlen_forward: as backward, over packed (total, heads, d) tensors (strides
// (0, row, head)) whose sequences cu_seqlens_q / cu_seqlens_k (int32 device buffers of
// batch + 1; seqused_k, of batch, or 0) delimit; causal bottom-right per sequence. lse and
// softmax_d are (nheads, total_q); dq_accum (nheads, bwd_dq_accum_varlen_rows(total_q,
// batch), head_dim); dq_semaphore (batch, nheads, ceil(max_seqlen_q / block_m)). Nothing
// is read from the int32 buffers on the host: a bad batch's gradients come back NaN
// (bwd_varlen_check.h).
void varlen_backward(std::string const& config, std::string const& dtype, uintptr_t dout, uintptr_t q, uintptr_t k,
                     uintptr_t v, uintptr_t out, uintptr_t lse, uintptr_t dq, uintptr_t dk, uintptr_t dv,
                     uintptr_t dq_accum, uintptr_t softmax_d, uintptr_t cu_seqlens_q, uintptr_t cu_seqlens_k,
                     uintptr_t seqused_k, int batch, int total_q, int total_k, int max_seqlen_q, int max_seqlen_k,
                     int nheads, int nheads_k, int head_dim, Strides q_strides, Strides k_strides,
                     Strides v_strides, Strides o_strides, Strides do_strides, Strides dq_strides,
                     Strides dk_strides, Strides dv_strides, double softmax_scale, bool is_causal, int device,
                     uintptr_t stream_handle, uintptr_t dq_semaphore, double softcap, int window_left,
                     int window_right) {
  BwdKernel const& kernel = find_bwd_kernel(config, parse_dtype(dtype));
  BwdParams params = problem_params<BwdParams>(batch, max_seqlen_q, max_seqlen_k, nheads, nheads_k, is_causal);
  set_attention_operands(params, q, k, v, out, q_strides, k_strides, v_strides, o_strides, softmax_scale);
  set_backward_operands(params, kernel, dout, lse, dq, dk, dv, dq_accum, softmax_d, do_strides, dq_strides, dk_strides,
                        dv_strides, head_dim, dq_semaphore, softcap, window_left, window_right);
  params.cu_seqlens_q = reinterpret_cast<int const*>(cu_seqlens_q);
  params.cu_seqlens_k = reinterpret_cast<int const*>(cu_seqlens_k);
  params.seqused_k = reinterpret_cast<int const*>(seqused_k);
  params.total_q = total_q;
  params.total_k = total_k;
  params.dq_accum_rows = int(std::min<int64_t>(bwd_dq_accum_varlen_rows(total_q, batch), INT32_MAX));

  BackwardExtents const extents = check_varlen_backward_args(kernel, params, device);
  check_runtime(extents, device, stream_handle, check_backward_memory);
  py::gil_scoped_release release;
  kernel.launch(params, reinterpret_cast<cudaStream_t>(stream_handle));
}

// One dict per built config, in the registry's order (sorted by (config, dtype)): its tile,
// extra(entry, kernel)'s fields, its description and the dtypes built. What configs() and
// backward_configs() share.
template <class Kernel, class Extra>
py::list config_dicts(std::vector<Kernel> const& kernels, Extra&& extra) {
  py::list out;
  py::dict current;
  std::string current_name;
  for (Kernel const& k : kernels) {
    if (current_name != k.config) {
      current = py::dict();
      current_name = k.config;
      current["name"] = k.config;
      current["family"] = k.family;
      current["head_dim"] = k.head_dim;
      current["block_m"] = k.block_m;
      current["block_n"] = k.block_n;
      current["num_warps"] = k.num_warps;
      current["smem_bytes"] = k.smem_bytes;
      extra(current, k);
      current["description"] = k.description;
      current["dtypes"] = py::list();
      out.append(current);
    }
    current["dtypes"].cast<py::list>().append(dtype_name(k.dtype));
  }
  return out;
}

// The built backward configs, one dict each (as configs() for forward ones, without a rung).
py::list backward_configs() {
  return config_dicts(bwd_kernels(), [](py::dict&, BwdKernel const&) {});
}

py::list configs() {
  return config_dicts(fwd_kernels(), [](py::dict& entry, FwdKernel const& k) {
    entry["rung"] = k.rung < 0 ? py::object(py::none()) : py::object(py::int_(k.rung));
    entry["varlen"] = k.varlen;
  });
}

// The bounds _C.forward enforces, for the Python layer to check against (one source of
// truth: src/flash_params.h, src/tile_size.h, src/launch_checks.h).
py::dict limits() {
  py::dict out;
  out["max_seqlen"] = kMaxSeqlen;
  out["max_causal_offset"] = kMaxSeqlen;
  out["max_splits"] = kMaxSplits;
  out["max_tiles"] = kMaxLaunchTiles;
  out["max_extent_bytes"] = kMaxExtentBytes;
  out["dq_accum_row_align"] = kDqAccumRowAlign;
  return out;
}

py::dict build_info() {
  py::dict info;
  info["version"] = FA_CUTE_VERSION;
  info["archs"] = FA_CUTE_ARCHS_STR;
  info["cutlass_version"] = FA_CUTE_CUTLASS_VERSION;
  info["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
  return info;
}

}  // namespace
}  // namespace fa_cute

PYBIND11_MODULE(_C, m) {
  m.doc() = "fa_cute kernels (CuTe FlashAttention); use the fa_cute package, not this module";
  m.def("forward", &fa_cute::forward, py::arg("config"), py::arg("dtype"), py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("o"), py::arg("lse"), py::arg("batch"),
        py::arg("seqlen_q"), py::arg("seqlen_k"), py::arg("nheads"), py::arg("nheads_k"),
        py::arg("head_dim"), py::arg("q_strides"), py::arg("k_strides"), py::arg("v_strides"),
        py::arg("o_strides"), py::arg("softmax_scale"), py::arg("is_causal"),
        py::arg("causal_offset"), py::arg("softcap"), py::arg("window_left"), py::arg("window_right"),
        py::arg("device"), py::arg("stream"), py::arg("timed"),
        py::arg("num_splits") = 1, py::arg("o_accum") = 0, py::arg("lse_accum") = 0);
  m.def("fp8_forward", &fa_cute::fp8_forward, py::arg("config"), py::arg("q"), py::arg("k"), py::arg("vt"),
        py::arg("o"), py::arg("lse"), py::arg("q_descale"), py::arg("k_descale"), py::arg("v_descale"),
        py::arg("batch"), py::arg("seqlen_q"), py::arg("seqlen_k"), py::arg("nheads"), py::arg("nheads_k"),
        py::arg("head_dim"), py::arg("q_strides"), py::arg("k_strides"), py::arg("vt_strides"),
        py::arg("o_strides"), py::arg("softmax_scale"), py::arg("is_causal"), py::arg("causal_offset"),
        py::arg("device"), py::arg("stream"));
  m.def("fp8_v_layout", &fa_cute::fp8_v_layout, py::arg("v"), py::arg("vt"), py::arg("batch"), py::arg("seqlen_k"),
        py::arg("nheads_k"), py::arg("head_dim"), py::arg("v_strides"), py::arg("device"), py::arg("stream"));
  m.def("fp8_vt_keys", [](int64_t seqlen_k) { return fa_cute::fp8_vt_keys(seqlen_k); }, py::arg("seqlen_k"));
  m.def("varlen_forward", &fa_cute::varlen_forward, py::arg("config"), py::arg("dtype"), py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("cu_seqlens_q"), py::arg("cu_seqlens_k"),
        py::arg("seqused_k"), py::arg("batch"), py::arg("total_q"), py::arg("total_k"), py::arg("max_seqlen_q"),
        py::arg("max_seqlen_k"), py::arg("nheads"), py::arg("nheads_k"), py::arg("head_dim"), py::arg("q_strides"),
        py::arg("k_strides"), py::arg("v_strides"), py::arg("out_strides"), py::arg("softmax_scale"),
        py::arg("is_causal"), py::arg("softcap"), py::arg("window_left"), py::arg("window_right"), py::arg("device"),
        py::arg("stream"), py::arg("tile_counter") = 0);
  m.def("kvcache_forward", &fa_cute::kvcache_forward, py::arg("config"), py::arg("dtype"), py::arg("q"),
        py::arg("k_cache"), py::arg("v_cache"), py::arg("out"), py::arg("lse"), py::arg("k_new"), py::arg("v_new"),
        py::arg("cache_seqlens"), py::arg("kv_batch_idx"), py::arg("page_table"),
        py::arg("batch"), py::arg("seqlen_q"), py::arg("seqlen_new"), py::arg("capacity"), py::arg("nheads"),
        py::arg("nheads_k"), py::arg("head_dim"), py::arg("batch_k"), py::arg("page_table_stride"),
        py::arg("page_size"), py::arg("num_pages"), py::arg("q_strides"), py::arg("k_cache_strides"),
        py::arg("v_cache_strides"), py::arg("out_strides"), py::arg("k_new_strides"), py::arg("v_new_strides"),
        py::arg("softmax_scale"), py::arg("is_causal"), py::arg("softcap"), py::arg("window_left"),
        py::arg("window_right"), py::arg("device"), py::arg("stream"), py::arg("num_splits") = 1,
        py::arg("o_accum") = 0, py::arg("lse_accum") = 0);
  m.def("num_splits", &fa_cute::num_splits, py::arg("config"), py::arg("dtype"), py::arg("batch"),
        py::arg("seqlen_q"), py::arg("seqlen_k"), py::arg("nheads"), py::arg("nheads_k"),
        py::arg("is_causal"), py::arg("device"));
  m.def("configs", &fa_cute::configs);
  m.def("default_config", &fa_cute::default_fwd_config, py::arg("head_dim"), py::arg("seqlen_q"),
        py::arg("seqlen_k"), py::arg("cc_major"), py::arg("cc_minor"), py::arg("causal") = false);
  m.def("default_fp8_config", &fa_cute::default_fp8_fwd_config, py::arg("head_dim"), py::arg("seqlen_q"),
        py::arg("seqlen_k"), py::arg("cc_major"), py::arg("cc_minor"), py::arg("causal") = false);
  m.def("default_varlen_config", &fa_cute::default_varlen_fwd_config, py::arg("head_dim"), py::arg("max_seqlen_q"),
        py::arg("max_seqlen_k"), py::arg("cc_major"), py::arg("cc_minor"), py::arg("causal") = false);
  m.def("backward", &fa_cute::backward, py::arg("config"), py::arg("dtype"), py::arg("dout"), py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("dq"), py::arg("dk"), py::arg("dv"),
        py::arg("dq_accum"), py::arg("softmax_d"), py::arg("batch"), py::arg("seqlen_q"), py::arg("seqlen_k"),
        py::arg("nheads"), py::arg("nheads_k"), py::arg("head_dim"), py::arg("q_strides"), py::arg("k_strides"),
        py::arg("v_strides"), py::arg("o_strides"), py::arg("do_strides"), py::arg("dq_strides"),
        py::arg("dk_strides"), py::arg("dv_strides"), py::arg("softmax_scale"), py::arg("is_causal"),
        py::arg("causal_offset"), py::arg("device"), py::arg("stream"), py::arg("dq_semaphore") = 0,
        py::arg("softcap") = 0.0, py::arg("window_left") = -1, py::arg("window_right") = -1);
  m.def("varlen_backward", &fa_cute::varlen_backward, py::arg("config"), py::arg("dtype"), py::arg("dout"),
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("dq"), py::arg("dk"),
        py::arg("dv"), py::arg("dq_accum"), py::arg("softmax_d"), py::arg("cu_seqlens_q"), py::arg("cu_seqlens_k"),
        py::arg("seqused_k"), py::arg("batch"), py::arg("total_q"), py::arg("total_k"), py::arg("max_seqlen_q"),
        py::arg("max_seqlen_k"), py::arg("nheads"), py::arg("nheads_k"), py::arg("head_dim"), py::arg("q_strides"),
        py::arg("k_strides"), py::arg("v_strides"), py::arg("o_strides"), py::arg("do_strides"),
        py::arg("dq_strides"), py::arg("dk_strides"), py::arg("dv_strides"), py::arg("softmax_scale"),
        py::arg("is_causal"), py::arg("device"), py::arg("stream"), py::arg("dq_semaphore") = 0,
        py::arg("softcap") = 0.0, py::arg("window_left") = -1, py::arg("window_right") = -1);
  m.def("backward_configs", &fa_cute::backward_configs);
  m.def("default_backward_config", &fa_cute::default_bwd_config, py::arg("head_dim"), py::arg("cc_major"),
        py::arg("cc_minor"));
  m.def("build_info", &fa_cute::build_info);
  m.def("limits", &fa_cute::limits);
}
