// fwd_bench: time one built fa_cute kernel with no Python in the process, so that Nsight
// Compute (the CMake target `profile`) and cuobjdump see our kernel and nothing else.
//
//   fwd_bench --list
//   fwd_bench [--config NAME] [--dtype bf16|fp16] [--batch B] [--seqlen N] [--seqlen-q NQ]
//             [--heads H] [--heads-k HK] [--causal 0|1] [--iters I] [--warmup W]
//             [--warmup-ms T] [--check REF] [--layout bshd|bhnd] [--splits S] [--flush-l2 MIB]
//
// --check REF also runs config REF once on the same inputs and compares O and the LSE
// element by element (a new kernel against one the pytest grid has verified), failing
// when they differ by more than the rounding of one bf16/fp16 ulp-sized step allows.
// Inputs are (B, N, H, d) contiguous bf16/fp16 tensors filled on the device with hashed
// random values in (-1, 1), never zeros (zeros hide indexing bugs and can run faster than
// real data). The output is poisoned with NaN first and checked afterwards: every element
// must have been written with a finite value. At the default B = 16384 / N, H = 16, d = 128
// each tensor is 64 MiB, beyond an H100's 50 MiB L2, so repeated runs time memory, not cache.
// Prints the median of I per-launch CUDA-event times and TFLOP/s = 4 B H N^2 d / time, then
// the time per launch of I launches issued back to back and the host time to issue one.
// By default these are burst timings (W + I launches, tens of ms): a kernel that draws the
// GPU's full power (the Hopper kernel, ~700 W on an H100) runs ~10% slower once the power
// cap lowers the clock. --warmup-ms T keeps launching (after the W warm-up launches) until
// T ms of GPU time have passed, so that the timed launches see the sustained state (300 ms
// settles an H100; docs/perf-notes.md, How the numbers are taken). --flush-l2 MIB overwrites a MIB-sized buffer
// before each timed launch, as triton.testing.do_bench does: cold L2, and a memory-bound
// kernel between launches. Compare with other libraries through
// `python -m fa_cute.bench` (sustained do_bench timing).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "flash_params.h"
#include "kernel_registry.h"

namespace {

using fa_cute::check_cuda;  // throws std::runtime_error naming the call and CUDA's error

struct Options {
  std::string config;  // empty: the heuristic's pick (src/tile_size.h)
  std::string dtype = "bf16";
  int batch = 0;  // 0: 16384 / seqlen
  int seqlen = 4096;
  int seqlen_q = 0;  // 0: seqlen (--seqlen-q sets a shorter query, e.g. a packed decode step)
  int heads = 16;
  int heads_k = 0;  // 0: heads (GQA: heads % heads_k == 0)
  std::string check;  // reference config for --check
  int iters = 20;
  int warmup = 5;
  int warmup_ms = 0;  // > 0: keep warming up until this much GPU time has passed
  int splits = 0;     // > 0: split-KV parts instead of the kernel's heuristic
  int flush_mb = 0;   // > 0: overwrite this many MiB before each timed launch (do_bench's L2 flush)
  bool causal = false;
  bool list = false;
  // Memory order of Q, K, V and O: "bshd" (FlashAttention's (batch, seqlen, heads, d)) or
  // "bhnd" ((batch, heads, seqlen, d) storage, as SDPA users and python -m fa_cute.bench
  // hold them): the same bytes, visited in a different order by the tiles running at once.
  std::string layout = "bshd";
};

[[noreturn]] void usage_error(std::string const& message) {
  std::fprintf(stderr,
               "fwd_bench: %s\nusage: fwd_bench --list | [--config NAME] [--dtype bf16|fp16] "
               "[--batch B] [--seqlen N] [--seqlen-q NQ] [--heads H] [--heads-k HK] [--causal 0|1] [--iters I] "
               "[--warmup W] [--warmup-ms T] [--check REF] [--layout bshd|bhnd] [--splits S] [--flush-l2 MIB]\n",
               message.c_str());
  std::exit(2);
}

int positive_int(char const* flag, char const* text) {
  char* end = nullptr;
  long const value = std::strtol(text, &end, 10);
  if (*text == '\0' || *end != '\0' || value < 1 || value > (1L << 30)) {
    usage_error(std::string(flag) + ": expected a positive integer, got '" + text + "'");
  }
  return static_cast<int>(value);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string const flag = argv[i];
    if (flag == "--list") {
      o.list = true;
      continue;
    }
    if (i + 1 >= argc) usage_error(flag + ": missing value");
    char const* value = argv[++i];
    if (flag == "--config") o.config = value;
    else if (flag == "--dtype") o.dtype = value;
    else if (flag == "--batch") o.batch = positive_int("--batch", value);
    else if (flag == "--seqlen") o.seqlen = positive_int("--seqlen", value);
    else if (flag == "--seqlen-q") o.seqlen_q = positive_int("--seqlen-q", value);
    else if (flag == "--heads") o.heads = positive_int("--heads", value);
    else if (flag == "--heads-k") o.heads_k = positive_int("--heads-k", value);
    else if (flag == "--check") o.check = value;
    else if (flag == "--layout") o.layout = value;
    else if (flag == "--splits") o.splits = positive_int("--splits", value);
    else if (flag == "--flush-l2") o.flush_mb = positive_int("--flush-l2", value);
    else if (flag == "--iters") o.iters = positive_int("--iters", value);
    else if (flag == "--warmup") o.warmup = positive_int("--warmup", value);
    else if (flag == "--warmup-ms") o.warmup_ms = positive_int("--warmup-ms", value);
    else if (flag == "--causal" && (std::string(value) == "0" || std::string(value) == "1")) o.causal = value[0] == '1';
    else usage_error("unknown option " + flag);
  }
  if (o.dtype != "bf16" && o.dtype != "fp16") usage_error("--dtype: bf16 or fp16, got " + o.dtype);
  if (o.layout != "bshd" && o.layout != "bhnd") usage_error("--layout: bshd or bhnd, got " + o.layout);
  if (o.batch == 0) o.batch = std::max(1, 16384 / o.seqlen);
  if (o.seqlen_q == 0) o.seqlen_q = o.seqlen;
  if (o.heads_k == 0) o.heads_k = o.heads;
  if (o.heads % o.heads_k != 0) usage_error("--heads-k must divide --heads");
  return o;
}

void list_configs() {
  std::string last;
  for (fa_cute::FwdKernel const& k : fa_cute::fwd_kernels()) {  // sorted by (config, dtype)
    if (last != k.config) {
      if (!last.empty()) std::printf("\n");
      std::printf("%s: head_dim %d, block %dx%d, %d warps, ", k.config, k.head_dim, k.block_m,
                  k.block_n, k.num_warps);
      if (k.rung >= 0) std::printf("ladder rung %d, ", k.rung);
      std::printf("%s; dtypes", k.description);
      last = k.config;
    }
    std::printf(" %s", fa_cute::dtype_name(k.dtype));
  }
  std::printf("\n");
}

// A splitmix64 step: consecutive indices give unrelated 64-bit values.
__host__ __device__ uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

template <class T>
__device__ T from_float(float x);
template <>
__device__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <>
__device__ __half from_float<__half>(float x) { return __float2half(x); }
__device__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ float to_float(__half x) { return __half2float(x); }

// Uniform in (-1, 1) with 24 random bits, offset by half a step so that 0 never comes out.
template <class T>
__global__ void fill_random(T* data, int64_t n, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float const unit = (float(mix(seed ^ mix(uint64_t(i))) >> 40) + 0.5f) * (1.0f / 16777216.0f);
    data[i] = from_float<T>(2.0f * unit - 1.0f);
  }
}

// Counts output elements that are not finite: the NaN poison left where nothing wrote.
template <class T>
__global__ void count_nonfinite(T const* data, int64_t n, unsigned long long* count) {
  unsigned long long local = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    local += !isfinite(to_float(data[i]));
  }
  if (local) atomicAdd(count, local);
}

constexpr int kThreads = 256;
constexpr int kBlocks = 1024;  // grid-stride loops: enough blocks to fill any GPU

template <class T>
void fill(void* data, int64_t n, uint64_t seed) {
  fill_random<<<kBlocks, kThreads>>>(static_cast<T*>(data), n, seed);
  check_cuda(cudaGetLastError(), "fill_random launch");
}

template <class T>
unsigned long long nonfinite(void const* data, int64_t n) {
  unsigned long long* count = nullptr;
  check_cuda(cudaMalloc(&count, sizeof(*count)), "cudaMalloc(count)");
  check_cuda(cudaMemset(count, 0, sizeof(*count)), "cudaMemset(count)");
  count_nonfinite<<<kBlocks, kThreads>>>(static_cast<T const*>(data), n, count);
  check_cuda(cudaGetLastError(), "count_nonfinite launch");
  unsigned long long host = 0;
  check_cuda(cudaMemcpy(&host, count, sizeof(host), cudaMemcpyDeviceToHost), "cudaMemcpy(count)");
  check_cuda(cudaFree(count), "cudaFree(count)");
  return host;
}

// --config, else what fa_cute.forward runs without a tuned entry: the heuristic's pick for
// this GPU and the head dim of the built production configs.
fa_cute::FwdKernel const& pick_kernel(Options const& o, int cc_major, int cc_minor) {
  fa_cute::DType const dtype = o.dtype == "bf16" ? fa_cute::DType::kBF16 : fa_cute::DType::kFP16;
  if (!o.config.empty()) return fa_cute::find_fwd_kernel(o.config, dtype);
  auto const& kernels = fa_cute::fwd_kernels();
  auto const production = std::find_if(kernels.begin(), kernels.end(),
                                       [](fa_cute::FwdKernel const& k) { return k.rung < 0; });
  if (production == kernels.end()) {
    throw std::invalid_argument("this build holds no production config; pass --config NAME");
  }
  return fa_cute::find_fwd_kernel(
      fa_cute::default_fwd_config(production->head_dim, o.seqlen, o.seqlen, cc_major, cc_minor),
      dtype);
}

template <class T>
__global__ void max_abs_diff(T const* a, T const* b, int64_t n, unsigned int* result) {
  float local = 0.f;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float const x = float(a[i]), y = float(b[i]);
    // -inf == -inf (an LSE row that sees no key) is a match; a NaN anywhere is not.
    float const diff = x == y ? 0.f : fabsf(x - y);
    local = fmaxf(local, diff != diff ? INFINITY : diff);
  }
  atomicMax(result, __float_as_uint(local));  // non-negative floats order like their bits
}

template <class T>
float max_diff(void const* a, void const* b, int64_t n) {
  unsigned int* result = nullptr;
  check_cuda(cudaMalloc(&result, sizeof(*result)), "cudaMalloc(result)");
  check_cuda(cudaMemset(result, 0, sizeof(*result)), "cudaMemset(result)");
  max_abs_diff<<<kBlocks, kThreads>>>(static_cast<T const*>(a), static_cast<T const*>(b), n, result);
  check_cuda(cudaGetLastError(), "max_abs_diff launch");
  unsigned int host = 0;
  check_cuda(cudaMemcpy(&host, result, sizeof(host), cudaMemcpyDeviceToHost), "cudaMemcpy(result)");
  check_cuda(cudaFree(result), "cudaFree(result)");
  float value;
  std::memcpy(&value, &host, sizeof(value));
  return value;
}

// Runs config ref_name on params' inputs into fresh O and LSE buffers and compares them
// with what `kernel` wrote. Both kernels round P to bf16/fp16 before P V, at different
// points of their online softmax, so O may differ by a few ulps of its dtype (|O| < 1:
// inputs in (-1, 1)); the LSE is fp32 on both sides.
int compare_with(std::string const& ref_name, fa_cute::FwdKernel const& kernel, fa_cute::FwdParams params,
                 int64_t n_q, int64_t n_rows) {
  fa_cute::FwdKernel const& ref = fa_cute::find_fwd_kernel(ref_name, kernel.dtype);
  void* o_ref = nullptr;
  float* lse_ref = nullptr;
  check_cuda(cudaMalloc(&o_ref, size_t(n_q) * 2), "cudaMalloc(o_ref)");
  check_cuda(cudaMalloc(&lse_ref, size_t(n_rows) * sizeof(float)), "cudaMalloc(lse_ref)");
  void* const o = params.o_ptr;
  float* const lse = params.softmax_lse_ptr;
  params.o_ptr = o_ref;
  params.softmax_lse_ptr = lse_ref;
  params.num_splits = 1;  // compare the plain kernels
  ref.launch(params, nullptr);
  check_cuda(cudaDeviceSynchronize(), "reference launch");
  bool const bf16 = kernel.dtype == fa_cute::DType::kBF16;
  float const o_diff = bf16 ? max_diff<__nv_bfloat16>(o, o_ref, n_q) : max_diff<__half>(o, o_ref, n_q);
  float const lse_diff = max_diff<float>(lse, lse_ref, n_rows);
  check_cuda(cudaFree(o_ref), "cudaFree(o_ref)");
  check_cuda(cudaFree(lse_ref), "cudaFree(lse_ref)");
  float const o_tol = bf16 ? 1.6e-2f : 2e-3f, lse_tol = 1e-3f;
  bool const ok = o_diff <= o_tol && lse_diff <= lse_tol;
  std::printf("check %s against %s: max |dO| %.3g (tol %.3g), max |dLSE| %.3g (tol %.3g): %s\n", kernel.config,
              ref.config, o_diff, o_tol, lse_diff, lse_tol, ok ? "ok" : "MISMATCH");
  return ok ? 0 : 1;
}

// Launches the kernel in batches of 10 until ms milliseconds of GPU time have passed.
void warm_up_for(int ms, fa_cute::FwdKernel const& kernel, fa_cute::FwdParams const& params, cudaStream_t stream) {
  cudaEvent_t start = nullptr, stop = nullptr;
  check_cuda(cudaEventCreate(&start), "cudaEventCreate");
  check_cuda(cudaEventCreate(&stop), "cudaEventCreate");
  check_cuda(cudaEventRecord(start, stream), "cudaEventRecord");
  for (float elapsed = 0.f; elapsed < float(ms);) {
    for (int i = 0; i < 10; ++i) kernel.launch(params, stream);
    check_cuda(cudaEventRecord(stop, stream), "cudaEventRecord");
    check_cuda(cudaEventSynchronize(stop), "warm-up launches");
    check_cuda(cudaEventElapsedTime(&elapsed, start, stop), "cudaEventElapsedTime");
  }
  check_cuda(cudaEventDestroy(start), "cudaEventDestroy");
  check_cuda(cudaEventDestroy(stop), "cudaEventDestroy");
}

int run(Options const& o) {
  int device = 0;
  cudaDeviceProp props{};
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaGetDeviceProperties(&props, device), "cudaGetDeviceProperties");
  fa_cute::FwdKernel const& kernel = pick_kernel(o, props.major, props.minor);
  int const d = kernel.head_dim;

  int64_t const n = int64_t(o.batch) * o.seqlen * o.heads_k * d;  // elements of K (and V)
  int64_t const n_q = int64_t(o.batch) * o.seqlen_q * o.heads * d;  // elements of Q (and O)
  void* buffers[4] = {};                                            // q, k, v, o
  int64_t const elements[4] = {n_q, n, n, n_q};
  for (int i = 0; i < 4; ++i) check_cuda(cudaMalloc(&buffers[i], size_t(elements[i]) * 2), "cudaMalloc(q/k/v/o)");
  bool const bf16 = kernel.dtype == fa_cute::DType::kBF16;
  for (int i = 0; i < 3; ++i) {
    if (bf16) fill<__nv_bfloat16>(buffers[i], elements[i], i + 1);
    else fill<__half>(buffers[i], elements[i], i + 1);
  }
  check_cuda(cudaMemset(buffers[3], 0xff, size_t(n_q) * 2), "cudaMemset(o, NaN)");  // 0xffff: NaN
  int64_t const n_rows = int64_t(o.batch) * o.heads * o.seqlen_q;
  float* lse = nullptr;
  check_cuda(cudaMalloc(&lse, size_t(n_rows) * sizeof(float)), "cudaMalloc(lse)");

  fa_cute::FwdParams params{};
  params.q_ptr = buffers[0];
  params.k_ptr = buffers[1];
  params.v_ptr = buffers[2];
  params.o_ptr = buffers[3];
  params.softmax_lse_ptr = lse;
  fa_cute::index_t const row = int64_t(o.heads) * d, row_k = int64_t(o.heads_k) * d;
  params.k_batch_stride = params.v_batch_stride = row_k * o.seqlen;
  params.q_batch_stride = params.o_batch_stride = row * o.seqlen_q;
  if (o.layout == "bshd") {
    params.q_row_stride = params.o_row_stride = row;
    params.k_row_stride = params.v_row_stride = row_k;
    params.q_head_stride = params.k_head_stride = params.v_head_stride = params.o_head_stride = d;
  } else {
    params.q_row_stride = params.o_row_stride = params.k_row_stride = params.v_row_stride = d;
    params.q_head_stride = params.o_head_stride = int64_t(o.seqlen_q) * d;
    params.k_head_stride = params.v_head_stride = int64_t(o.seqlen) * d;
  }
  params.batch = o.batch;
  params.seqlen_q = o.seqlen_q;
  params.seqlen_k = o.seqlen;
  params.nheads = o.heads;
  params.nheads_k = o.heads_k;
  params.head_dim = d;
  params.num_splits = 1;
  params.is_causal = o.causal;
  params.causal_offset = o.seqlen - o.seqlen_q;  // bottom-right, as fa_cute.forward
  // Split-KV as the Python layer does it: the kernel's heuristic (or --splits), fp32 buffers.
  params.num_splits = o.splits > 0 ? o.splits : kernel.num_splits(params, device);
  float* accum[2] = {};
  if (params.num_splits > 1) {
    size_t const rows = size_t(params.num_splits) * o.batch * o.heads * o.seqlen_q;
    check_cuda(cudaMalloc(&accum[0], rows * d * sizeof(float)), "cudaMalloc(o_accum)");
    check_cuda(cudaMalloc(&accum[1], rows * sizeof(float)), "cudaMalloc(lse_accum)");
  }
  params.o_accum_ptr = accum[0];
  params.lse_accum_ptr = accum[1];
  params.softmax_scale = 1.0f / std::sqrt(float(d));
  params.softmax_scale_log2 = params.softmax_scale * 1.4426950408889634f;  // log2(e)

  cudaStream_t const stream = nullptr;
  for (int i = 0; i < o.warmup; ++i) kernel.launch(params, stream);  // checks its launch
  if (o.warmup_ms > 0) warm_up_for(o.warmup_ms, kernel, params, stream);
  check_cuda(cudaStreamSynchronize(stream), "warm-up launches");
  unsigned long long const unwritten =
      bf16 ? nonfinite<__nv_bfloat16>(buffers[3], n_q) : nonfinite<__half>(buffers[3], n_q);
  if (unwritten != 0) {
    std::fprintf(stderr, "fwd_bench: %s wrote no finite value to %llu of %lld output elements\n",
                 kernel.config, unwritten, static_cast<long long>(n_q));
    return 1;
  }
  if (!o.check.empty()) {
    int const rc = compare_with(o.check, kernel, params, n_q, n_rows);
    if (rc != 0) return rc;
  }

  std::vector<cudaEvent_t> events(2 * o.iters);
  for (cudaEvent_t& e : events) check_cuda(cudaEventCreate(&e), "cudaEventCreate");
  // --flush-l2: each timed launch starts with a cold L2 and after a memory-bound kernel,
  // as under triton.testing.do_bench (python -m fa_cute.bench).
  void* flush = nullptr;
  size_t const flush_bytes = size_t(o.flush_mb) << 20;
  if (flush_bytes > 0) check_cuda(cudaMalloc(&flush, flush_bytes), "cudaMalloc(flush)");
  for (int i = 0; i < o.iters; ++i) {
    if (flush != nullptr) check_cuda(cudaMemsetAsync(flush, 0, flush_bytes, stream), "cudaMemsetAsync(flush)");
    check_cuda(cudaEventRecord(events[2 * i], stream), "cudaEventRecord");
    kernel.launch(params, stream);
    check_cuda(cudaEventRecord(events[2 * i + 1], stream), "cudaEventRecord");
  }
  check_cuda(cudaEventSynchronize(events.back()), "timed launches");
  std::vector<float> ms(o.iters);
  for (int i = 0; i < o.iters; ++i) {
    check_cuda(cudaEventElapsedTime(&ms[i], events[2 * i], events[2 * i + 1]),
               "cudaEventElapsedTime");
  }
  // The same launches back to back between two events, as do_bench and a model's step issue
  // them: where a launch's host work (argument checks, TMA descriptors) outlasts its kernel,
  // the GPU waits on the host, and the per-launch time above counts host plus GPU time.
  auto const host_start = std::chrono::steady_clock::now();
  check_cuda(cudaEventRecord(events[0], stream), "cudaEventRecord");
  for (int i = 0; i < o.iters; ++i) kernel.launch(params, stream);
  check_cuda(cudaEventRecord(events[1], stream), "cudaEventRecord");
  double const host_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - host_start).count() / o.iters;
  check_cuda(cudaEventSynchronize(events[1]), "back-to-back launches");
  float back_to_back_ms = 0.f;
  check_cuda(cudaEventElapsedTime(&back_to_back_ms, events[0], events[1]), "cudaEventElapsedTime");
  for (cudaEvent_t e : events) check_cuda(cudaEventDestroy(e), "cudaEventDestroy");
  if (flush != nullptr) check_cuda(cudaFree(flush), "cudaFree(flush)");
  for (void* b : buffers) check_cuda(cudaFree(b), "cudaFree");
  for (float* b : accum) check_cuda(cudaFree(b), "cudaFree");
  check_cuda(cudaFree(lse), "cudaFree(lse)");

  std::nth_element(ms.begin(), ms.begin() + o.iters / 2, ms.end());
  double const median = ms[o.iters / 2];
  // As fa_cute.bench and the docs' tables count: causal counts half the FLOPs of the full product.
  double const flops = (o.causal ? 2.0 : 4.0) * o.batch * o.heads * double(o.seqlen_q) * o.seqlen * d;
  double const moved = 2.0 * (2.0 * n + 2.0 * n_q);  // bytes: K, V read; Q read, O written
  std::printf("%s (%s) on %s: %s %s B=%d Nq=%d Nk=%d H=%d Hk=%d d=%d%s splits=%d: %.4f ms (median of %d), "
              "%.1f TFLOP/s, %.0f GB/s\n",
              kernel.config, kernel.description, props.name, o.dtype.c_str(), o.layout.c_str(), o.batch,
              o.seqlen_q, o.seqlen, o.heads, o.heads_k, d, o.causal ? " causal" : "", params.num_splits, median, o.iters,
              flops / (median * 1e9), moved / (median * 1e6));
  std::printf("back to back: %.2f us per launch; the host takes %.2f us to issue one\n",
              1e3 * back_to_back_ms / o.iters, host_us);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options const o = parse(argc, argv);
  try {
    if (o.list) {
      list_configs();
      return 0;
    }
    return run(o);
  } catch (std::invalid_argument const& e) {  // an unknown config or dtype for it
    std::fprintf(stderr, "fwd_bench: %s\n", e.what());
    return 2;
  } catch (std::exception const& e) {  // a failed CUDA call
    std::fprintf(stderr, "fwd_bench: %s\n", e.what());
    return 1;
  }
}
