// CPU compute kernels: GEMM/GEMV over checkpoint weights, run-time ISA
// dispatch and the worker pool they parallelise over.
//
// Layouts: every matrix is row-major with an explicit row stride in
// elements. Linear weights are [N, K] as checkpoints store them (y = x W^T).
// Activations are f32 buffers; for bf16 models they hold bf16-representable
// values (the caller rounds, see dtype.h), so the bf16 paths convert them
// exactly.
//
// Row invariance (DESIGN.md section 7): Y[m, n] is bitwise a function of
// X[m, :], W[n, :], K and the ISA only. It does not depend on M, on the
// position of the row inside a tile, on N, on which kernel entry (Gemm or
// Gemv) computed it, or on the thread count: threads split rows and output
// columns, never the K reduction, and every element reduces K in the same
// fixed order. Results differ between ISAs (different reduction order), so
// every process of one cluster must use the same ISA.
//
// Thread-safety: the functions are reentrant; one ThreadPool runs one
// ParallelFor at a time (callers serialise, e.g. one engine thread).
#ifndef DSV2_KERNELS_CPU_H_
#define DSV2_KERNELS_CPU_H_

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "kernels/dtype.h"
#include "kernels/quant.h"

namespace dsv2::kernels {

// The kernel families. Each fixes one reduction pattern over K (lane count,
// tail, horizontal-sum tree; see the kernel files), hence its own bits.
//   kScalar: portable C++, no FMA. Any x86-64.
//   kAvx2: AVX2 + FMA + F16C, 8 fp32 lanes (Haswell, AMD Zen and later).
//   kAvx512Bf16: AVX-512 F/BW/BF16 (Cooper Lake, Sapphire Rapids, AMD Zen 4
//     and later). f32 weights: 16-lane FMA. bf16 weights: VDPBF16PS, which
//     rounds x to bf16 first (exact for the bf16-representable activations
//     of bf16 models; any other x is rounded to nearest even) and treats
//     bf16 denormals as zero.
//   kAmx: kAvx512Bf16 plus AMX-BF16 tiles (Sapphire Rapids and later Intel),
//     with Linux's permission to use tile data (arch_prctl
//     ARCH_REQ_XCOMP_PERM, asked once by CpuSupports). bf16 weights with
//     bf16-exact x (the bf16 model path, prefill and decode alike) run on
//     TDPBF16PS tiles: one f32 accumulator per element over 32-wide
//     k-blocks, denormals as VDPBF16PS treats them, the rounding inside a
//     block the hardware's; everything else (f32 weights, kF32 x, QGemm)
//     runs the kAvx512Bf16 kernels, bit for bit.
enum class CpuIsa { kScalar, kAvx2, kAvx512Bf16, kAmx };

// "scalar", "avx2", "avx512bf16", "amx".
std::string_view CpuIsaName(CpuIsa isa);
// Accepts the names above and "auto" (= BestCpuIsa()).
absl::StatusOr<CpuIsa> ParseCpuIsa(std::string_view name);
bool CpuSupports(CpuIsa isa);
CpuIsa BestCpuIsa();
// The ISA to run with: `flag_value` when non-empty, else the DSV2_CPU_ISA
// environment variable when set, else BestCpuIsa(). InvalidArgument for an
// unknown name, FailedPrecondition when this CPU lacks the requested ISA.
absl::StatusOr<CpuIsa> ResolveCpuIsa(std::string_view flag_value);

// The number of CPU cores this process may run on (its affinity mask, which
// a container's cpuset or `taskset` narrows), at least 1. What `dsv2 run`
// and `dsv2 up` size their thread pools by when --threads is not given.
int AvailableCpuCores();

// A fixed set of worker threads (num_threads - 1 workers plus the calling
// thread). Joined in the destructor; never detached. Idle workers sleep on a
// condition variable (no spinning: the pool may share few cores).
//
// Thread-safety: one thread at a time calls ParallelFor (the owner, e.g. the
// engine thread); `fn` runs on the caller and on the workers concurrently
// and must not call ParallelFor on the same pool.
class ThreadPool {
 public:
  // REQUIRES: num_threads >= 1.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Calls fn(begin, end) over disjoint chunks covering [0, n) and returns
  // when all chunks are done. Chunks are at least `grain` items (except the
  // last); about four per thread so a preempted thread delays little. Runs
  // inline when n <= grain or num_threads == 1. Which thread runs which
  // chunk is unspecified.
  void ParallelFor(size_t n, size_t grain, absl::FunctionRef<void(size_t, size_t)> fn);

 private:
  void WorkerLoop();
  // Runs chunks of job `generation` until none is left; returns at once when
  // a newer job has replaced it.
  void RunChunks(uint64_t generation);

  // Constant after construction.
  const int num_threads_;
  std::vector<std::thread> workers_;

  std::mutex mu_;
  std::condition_variable work_cv_;  // a new job or stop_
  std::condition_variable done_cv_;  // chunks_done_ reached chunks_total_
  // Guarded by mu_: the current job. job_ points into the ParallelFor
  // frame that published it and is dereferenced only for chunks taken
  // before that call returns.
  const absl::FunctionRef<void(size_t, size_t)>* job_ = nullptr;
  size_t job_n_ = 0;
  size_t job_chunk_ = 0;
  size_t next_chunk_ = 0;
  size_t chunks_total_ = 0;
  size_t chunks_done_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  // Lock-free copies for the spin before blocking (thread_pool.cc): the
  // last published generation, the last finished one, and stop_.
  std::atomic<uint64_t> published_{0};
  std::atomic<uint64_t> finished_{0};
  std::atomic<bool> stopping_{false};
};

// What the X operand's values are. kF32: any f32 values, never rounded by
// any ISA. kBf16Exact: every value is bf16-representable (activations of a
// bf16 model, rounded by the caller), which lets the AVX-512 BF16 path feed
// X to VDPBF16PS. The choice belongs to the call site (a model's dtype), not
// to the batch, so it never breaks row invariance.
enum class XValues { kF32, kBf16Exact };

// What QGemm does with the activations X.
enum class QuantActivations : uint8_t {
  // X stays f32: an f32 GEMM over the dequantized weights (contract below).
  kF32,
  // X is quantized on the fly, per row and group of 32 along K, to int8 with
  // an f32 scale (like llama.cpp's Q8_0 activations, with an f32 scale), and
  // each group's dot product is an exact integer sum: VNNI VPDPBUSD on
  // AVX-512, VPMADDUBSW on AVX2. Every ISA gives the same bits. Arithmetic,
  // per row of X and group g (elements [32 g, min(32 g + 32, K))):
  //   a_g = max |x_k|; d_g = a_g / 127; r_g = 127 / a_g (0 when a_g = 0);
  //   qx_k = round_half_even(x_k * r_g), in [-127, 127];
  //   (all f32; a group with a non-finite x gets d_g = NaN, so y is NaN);
  //   i_g = sum_k qw_k * qx_k, exact (int32);
  //   c_g = scale_g * d_g (f32 product, scale_g the weights' f16 scale);
  //   eight f32 lanes L_j = 0; for g ascending over ceil(G / 8) * 8 groups
  //   (the ones past G are i = 0, c = 0): L_{g mod 8} = fma(f32(i_g), c_g,
  //   L_{g mod 8}); y = ((L0 + L4) + (L2 + L6)) + ((L1 + L5) + (L3 + L7)).
  // Error against the f32 product with the dequantized weights: each x_k is
  // moved by at most d_g / 2, so |y - sum_k w_k x_k| <= sum_g (d_g / 2)
  // sum_{k in g} |w_k| plus f32 rounding (~2^-23 relative per group).
  // About 2-4x less compute than kF32 on quantized weights (decode is
  // memory-bound only when the kernel keeps up with memory).
  kInt8,
};

// What a kernel call runs with. `pool` may be null (single-threaded).
struct CpuContext {
  CpuIsa isa = CpuIsa::kScalar;
  ThreadPool* pool = nullptr;
  // What the model's linear layers (model/weights.h Linear) pass to QGemm
  // for quantized weights.
  QuantActivations quant_activations = QuantActivations::kInt8;
};

// Y[m, n] = sum_k X[m, k] * W[n, k] for m < M, n < N, with fp32 accumulation.
//   x: f32 [M, K], row stride ldx >= K.
//   w: [N, K] in w_dtype (kF32 or kBF16), row stride ldw >= K.
//   y: f32 [M, N], row stride ldy >= N. Must not alias x or w.
// Any K (tails handled; K = 0 gives zeros), any strides, no alignment
// needed. Runs on ctx.pool when the call is large enough. Aborts, naming the
// offending values, on a broken precondition: a stride below its minimum,
// an f16 weight dtype, or a ctx.isa this CPU lacks (use ResolveCpuIsa).
void Gemm(const CpuContext& ctx, const float* x, size_t ldx, const void* w, DType w_dtype,
          size_t ldw, float* y, size_t ldy, size_t M, size_t N, size_t K,
          XValues x_values = XValues::kF32);

// Gemm with M = 1, tuned for the memory-bound case. Bitwise the same result
// as Gemm for that row.
void Gemv(const CpuContext& ctx, const float* x, const void* w, DType w_dtype, size_t ldw, float* y,
          size_t N, size_t K, XValues x_values = XValues::kF32);

// Scalar reference: sequential fp32 (k ascending) dot products, single
// thread. Every ISA's kernels are tested against it with a tolerance
// (they sum in a different order).
void GemmReference(const float* x, size_t ldx, const void* w, DType w_dtype, size_t ldw, float* y,
                   size_t ldy, size_t M, size_t N, size_t K);

// Y[m, n] = sum_k X[m, k] * W[n, k] over quantized weights (quant.h).
//   x: f32 [M, K], row stride ldx >= K (when M > 1). Any f32 values; with
//     acts = kInt8 quantized as QuantActivations says (that contract
//     replaces the numerics paragraph below; row invariance holds as well).
//   w: [N, K] quantized; w.ldq >= QuantRowBytes(w.format, K) and
//     w.lds >= QuantGroupsPerRow(K) (when N > 1).
//   y: f32 [M, N], row stride ldy >= N (when M > 1). Must not alias x or w.
// M == 1 takes the GEMV path (streams several weight rows at once); it
// gives the same bits as that row inside any larger M.
//
// Numerics: the weights' integers are widened exactly to f32; every output
// element reduces each group g of 32 elements in f32 (group partial
// p_g = sum_k q_k x_k), then accumulates scale_g * p_g over the groups in
// ascending order, in f32, reading f16 scales exactly. So the result is an
// f32 GEMM over the dequantized weights up to f32 summation error:
// |y - sum_k w_k x_k| <= ~(K + 2 G) 2^-24 sum_k |w_k x_k|. The
// grouping of the sums into lanes and the use of FMA are fixed per ISA (see
// the qgemm_*.cc files), and row invariance holds as for Gemm: a row's bits
// depend on X[m, :], W, K and the ISA only.
//
// Any K (K = 0 gives zeros), no alignment needed. Runs on ctx.pool when
// large enough. Aborts, naming the offending values, on a broken
// precondition (stride below its minimum, unknown format, null pointer, an
// ISA this CPU lacks).
void QGemm(const CpuContext& ctx, const float* x, size_t ldx, const QuantizedWeights& w, float* y,
           size_t ldy, size_t M, size_t N, size_t K,
           QuantActivations acts = QuantActivations::kF32);

// Scalar reference for QGemm, single thread: per element,
//   y = sum over groups g ascending of scale_g * (sum over k in g ascending
//       of float(q_k) * x_k),
// each sum sequential in f32, multiply then add (no FMA). Every ISA's QGemm
// is tested against it with a tolerance. With acts = kInt8: exactly the
// arithmetic of QuantActivations::kInt8 (every ISA matches it bit for bit).
void QGemmReference(const float* x, size_t ldx, const QuantizedWeights& w, float* y, size_t ldy,
                    size_t M, size_t N, size_t K, QuantActivations acts = QuantActivations::kF32);

// WeightedRowSum (kernels/ops.h) on one ISA's code path; every path gives
// the same bits (WeightedRowSum runs the best). For tests and benchmarks.
// Aborts on an ISA this CPU lacks.
void WeightedRowSumForIsa(CpuIsa isa, const float* p, size_t ldp, const void* v, DType v_dtype,
                          size_t ldv, float* acc, size_t ldacc, size_t rows, size_t n,
                          size_t width);

}  // namespace dsv2::kernels

#endif  // DSV2_KERNELS_CPU_H_
