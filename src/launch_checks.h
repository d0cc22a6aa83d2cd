#pragma once

// Host-only checks of what fa_cute._C receives from its caller (plain integers), so that a
// nonsense call raises std::invalid_argument (ValueError) instead of launching a kernel on
// it. Pure-integer checks come first and need no GPU; the device count, the stream handle
// and the pointers' allocations are checked after them, against the CUDA runtime and driver.

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "bwd_params.h"
#include "bwd_registry.h"
#include "flash_params.h"
#include "fp8_layout.h"
#include "kernel_registry.h"
#include "kv_append.h"

// Throws std::invalid_argument(message) unless cond; the message is built only then (the
// checks run on every call, whose host time is a decode step's budget).
#define FA_CUTE_REQUIRE(cond, message)                  \
  do {                                                  \
    if (!(cond)) throw std::invalid_argument(message); \
  } while (0)

namespace fa_cute {

// Bytes that one operand may address at most: no GPU's virtual address space is larger
// (49 bits on Hopper), so a larger extent is nonsense, and 128-bit products below it fit.
constexpr uint64_t kMaxExtentBytes = uint64_t(1) << 48;

// One buffer a forward call reads or writes: [ptr, ptr + bytes). ptr 0: not used.
struct OperandExtent {
  char const* name;
  uintptr_t ptr;
  uint64_t bytes;
};

// q, k, v, out, lse, o_accum, lse_accum; a varlen call's cu_seqlens_q, cu_seqlens_k,
// seqused_k (a KV-cache call's cache_seqlens, cache_batch_idx, page_table); a KV-cache call's
// new k and v (a varlen call's tile_counter in k's place); an FP8 call's q_descale,
// k_descale, v_descale.
using ForwardExtents = std::array<OperandExtent, 15>;

// seqlen_q and seqlen_k in [1, kMaxSeqlen]: what every entry point that takes lengths shares.
void check_seqlens(int seqlen_q, int seqlen_k);

// batch, nheads, nheads_k, seqlen_q, seqlen_k: what forward and num_splits share.
void check_problem_sizes(int batch, int seqlen_q, int seqlen_k, int nheads, int nheads_k);

// Everything about a forward call that integers alone decide (the problem sizes first):
// pointers non-null and aligned, strides, the config's head dim, causal_offset,
// num_splits, the int32 headroom of tiles and grids, and each operand's extent in bytes,
// which it returns for check_forward_memory.
ForwardExtents check_forward_args(FwdKernel const& kernel, FwdParams const& params, int device);

// A variable-length batch (params.cu_seqlens_q non-null): what check_forward_args checks,
// with the packed q, k, v, out and the (nheads, total_q) LSE as one batch entry of
// total_q / total_k rows; then the launch's tiles (batch x nheads x query blocks of
// max_seqlen_q, params.seqlen_q), no split, and cu_seqlens_q / cu_seqlens_k (batch + 1
// int32 each) and seqused_k (batch int32, when given) as operands. What cu_seqlens hold is
// never read on the host (fwd_varlen_check.h checks it on the GPU).
ForwardExtents check_varlen_forward_args(FwdKernel const& kernel, FwdParams const& params, int device);

// A KV-cache call (params.seqused_k with dense q; forward_with_kvcache): q and out as
// check_forward_args checks them, k and v as the cache: (batch_k, seqlen_k, nheads_k, d)
// entries (kv_batch_idx non-null: batch_k of them, else batch) or, with page_table, pages
// (num_pages, page_size, nheads_k, d), page_size a positive multiple of 16 and seqlen_k (the
// capacity per entry) page_table_stride * page_size; seqused_k (cache_seqlens, to which the
// kernels add seqused_k_add), kv_batch_idx (batch int32) and page_table (batch x
// page_table_stride int32) as operands in extents[7..9]. What they hold is never read on the
// host (fwd_varlen_check.h checks it on the GPU).
ForwardExtents check_kvcache_forward_args(FwdKernel const& kernel, FwdParams const& params, int device);

// The new tokens of a KV-cache call (k_new, v_new: (batch, seqlen_new, nheads_k, head_dim)),
// checked as check_operand checks q; their extents.
std::array<OperandExtent, 2> check_kv_append_args(KvAppendParams const& params);

// The FP8 forward's V layout pass (fp8_layout.h): v as check_operand checks an e4m3 operand,
// vt contiguous (batch, nheads_k, head_dim, fp8_vt_keys(seqlen_k)) e4m3; their extents.
std::pair<OperandExtent, OperandExtent> check_fp8_v_layout_args(Fp8VLayoutParams const& params);

// device < the number of CUDA devices (the count is asked once); a failed query throws
// std::runtime_error with the CUDA error, as the launch would have.
void check_device(int device);

// Rejects a stream handle that cannot be a CUDA stream without dereferencing it.
void check_stream_handle(uintptr_t stream);

// Each used operand's whole extent lies in one CUDA allocation of device memory on device
// (the driver's cuPointerGetAttributes, one call per operand). Needs the device current.
void check_forward_memory(ForwardExtents const& extents, int device);

// --- Backward ------------------------------------------------------------------------------
// q, k, v, out, dout, lse, dq, dk, dv, dq_accum, softmax_d, dq_semaphore (ptr 0 without),
// cu_seqlens_q, cu_seqlens_k, seqused_k (varlen; ptr 0 without).
using BackwardExtents = std::array<OperandExtent, 15>;

// Everything about a backward call that integers alone decide, as check_forward_args: the
// problem sizes, the config's head dim, causal_offset, the main kernel's CTA count, every
// pointer non-null and aligned (dq_accum 16 bytes: the preprocess kernel zeroes it in 16-byte
// stores; its rows per (batch, head) are params.dq_accum_rows), strides, and each operand's extent, which it returns for check_backward_memory;
// dq_semaphore only when set (deterministic): 4-byte aligned, batch * nheads *
// ceil(seqlen_q / block_m) int32.
BackwardExtents check_backward_args(BwdKernel const& kernel, BwdParams const& params, int device);

// A varlen backward (params.cu_seqlens_q): the packed tensors checked as one dense batch entry
// of total_q / total_k rows (check_backward_args), dq_accum_rows =
// bwd_dq_accum_varlen_rows(total_q, batch), the grid's CTAs and the counters by the real
// batch and the longest sequences (seqlen_q, seqlen_k), and the int32 cu_seqlens (batch + 1
// each) and seqused_k (batch) buffers; cu_seqlens_k and cu_seqlens_q non-null. The
// BackwardExtents of the varlen ones: cu_seqlens_q, cu_seqlens_k, seqused_k.
BackwardExtents check_varlen_backward_args(BwdKernel const& kernel, BwdParams const& params, int device);

// check_forward_memory's test for each backward operand.
void check_backward_memory(BackwardExtents const& extents, int device);

}  // namespace fa_cute
