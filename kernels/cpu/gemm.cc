// Gemm / Gemv (kernels/cpu.h): argument checks, ISA dispatch, and the split
// of Y into rectangles run on the ThreadPool.
//
// Threads only ever split M and N (rectangles of Y); every rectangle runs
// the ISA's block function, whose per-element arithmetic does not depend on
// the rectangle (gemm_internal.h), so the split changes no bit.
#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "kernels/cpu.h"
#include "kernels/cpu/gemm_internal.h"

namespace dsv2::kernels {
namespace {

// Columns per GEMV tile (every ISA streams 8 weight rows at once).
constexpr size_t kGemvTileCols = 8;
// A GEMV chunk reads at least this many weight bytes, so waking a worker
// (~10 us) is worth it.
constexpr size_t kGemvChunkBytes = size_t{256} << 10;
// GEMM column blocks are multiples of 12 (the AVX2 tile is 3 wide, the
// AVX-512 tile 4; QGemm's are 2 and 4) and hold about this many weight bytes: the block is
// re-read from L2 for every row tile.
constexpr size_t kGemmColTile = 12;
constexpr size_t kGemmWeightBlockBytes = size_t{192} << 10;
// GEMM row blocks hold about this many x bytes (f32): they are re-read from
// L2 for every column tile.
constexpr size_t kGemmXBlockBytes = size_t{256} << 10;
// Below this many multiply-adds a GEMM runs on the calling thread.
constexpr size_t kGemmInlineMacs = size_t{1} << 18;

[[noreturn]] void Fail(const char* fn, const char* what, size_t a, size_t b) {
  std::fprintf(stderr, "%s: %s (%zu vs %zu)\n", fn, what, a, b);
  std::abort();
}

// Precondition violations are caller bugs (shapes come from the checkpoint
// loader and the engine), hence abort with the offending values.
void CheckArgs(const char* fn, const float* x, size_t ldx, const void* w, DType w_dtype, size_t ldw,
               const float* y, size_t ldy, size_t M, size_t N, size_t K) {
  if (w_dtype != DType::kF32 && w_dtype != DType::kBF16) {
    std::fprintf(stderr, "%s: weight dtype %s unsupported; expected f32 or bf16\n", fn,
                 DTypeName(w_dtype));
    std::abort();
  }
  if (M == 0 || N == 0) return;
  if (M > 1 && ldy < N) Fail(fn, "ldy < N", ldy, N);
  if (y == nullptr) Fail(fn, "y is null", M, N);
  if (K == 0) return;
  if (M > 1 && ldx < K) Fail(fn, "ldx < K", ldx, K);
  if (N > 1 && ldw < K) Fail(fn, "ldw < K", ldw, K);
  if (x == nullptr || w == nullptr) Fail(fn, "x or w is null", M, K);
}

internal::GemmBlockFn BlockFn(const char* fn, CpuIsa isa) {
  if (!CpuSupports(isa)) {
    std::fprintf(stderr, "%s: CPU ISA %.*s is not supported by this CPU (use ResolveCpuIsa)\n", fn,
                 static_cast<int>(CpuIsaName(isa).size()), CpuIsaName(isa).data());
    std::abort();
  }
  switch (isa) {
    case CpuIsa::kScalar:
      return internal::GemmBlockScalar;
    case CpuIsa::kAvx2:
      return internal::GemmBlockAvx2;
    case CpuIsa::kAvx512Bf16:
      return internal::GemmBlockAvx512;
  }
  std::abort();
}

}  // namespace

namespace internal {

void RunGemvSplit(ThreadPool* pool, size_t N, size_t row_bytes, RectFn block) {
  row_bytes = std::max<size_t>(row_bytes, 1);
  const size_t tiles = (N + kGemvTileCols - 1) / kGemvTileCols;
  const size_t min_cols = (kGemvChunkBytes + row_bytes - 1) / row_bytes;
  const size_t grain = (min_cols + kGemvTileCols - 1) / kGemvTileCols;
  if (pool == nullptr || tiles <= grain) {
    block(0, 1, 0, N);
    return;
  }
  pool->ParallelFor(tiles, grain, [&](size_t begin, size_t end) {
    block(0, 1, begin * kGemvTileCols, std::min(N, end * kGemvTileCols));
  });
}

void RunGemmSplit(ThreadPool* pool, size_t M, size_t N, size_t K, size_t row_bytes, RectFn block) {
  if (pool == nullptr || M * N * K < kGemmInlineMacs) {
    block(0, M, 0, N);
    return;
  }
  row_bytes = std::max<size_t>(row_bytes, 1);
  size_t nb =
      std::max(kGemmColTile, kGemmWeightBlockBytes / row_bytes / kGemmColTile * kGemmColTile);
  size_t mb = std::max<size_t>(4, kGemmXBlockBytes / std::max<size_t>(K * 4, 1) / 4 * 4);
  size_t n_blocks = (N + nb - 1) / nb;
  size_t m_blocks = (M + mb - 1) / mb;
  // Small K makes the cache-sized blocks few and large: narrow them (columns
  // first, then rows) until every thread gets about four tasks.
  const size_t min_tasks = 4 * static_cast<size_t>(pool->num_threads());
  while (n_blocks * m_blocks < min_tasks) {
    if (nb > kGemmColTile) {
      nb = std::max(kGemmColTile, nb / 2 / kGemmColTile * kGemmColTile);
    } else if (mb > 4) {
      mb = std::max<size_t>(4, mb / 2 / 4 * 4);
    } else {
      break;
    }
    n_blocks = (N + nb - 1) / nb;
    m_blocks = (M + mb - 1) / mb;
  }
  // Consecutive tasks share a column block, so its weights are still in
  // cache for the next row block.
  pool->ParallelFor(n_blocks * m_blocks, 1, [&](size_t begin, size_t end) {
    for (size_t t = begin; t < end; ++t) {
      const size_t n0 = t / m_blocks * nb;
      const size_t m0 = t % m_blocks * mb;
      block(m0, std::min(M, m0 + mb), n0, std::min(N, n0 + nb));
    }
  });
}

}  // namespace internal

namespace {

void RunGemv(const CpuContext& ctx, internal::GemmBlockFn block, const internal::GemmOperands& op,
             size_t N) {
  internal::RunGemvSplit(
      ctx.pool, N, op.K * DTypeSize(op.w_dtype),
      [&](size_t m0, size_t m1, size_t n0, size_t n1) { block(op, m0, m1, n0, n1); });
}

void RunGemm(const CpuContext& ctx, internal::GemmBlockFn block, const internal::GemmOperands& op,
             size_t M, size_t N) {
  internal::RunGemmSplit(
      ctx.pool, M, N, op.K, op.K * DTypeSize(op.w_dtype),
      [&](size_t m0, size_t m1, size_t n0, size_t n1) { block(op, m0, m1, n0, n1); });
}

}  // namespace

void Gemm(const CpuContext& ctx, const float* x, size_t ldx, const void* w, DType w_dtype,
          size_t ldw, float* y, size_t ldy, size_t M, size_t N, size_t K, XValues x_values) {
  CheckArgs("Gemm", x, ldx, w, w_dtype, ldw, y, ldy, M, N, K);
  const internal::GemmBlockFn block = BlockFn("Gemm", ctx.isa);
  if (M == 0 || N == 0) return;
  const internal::GemmOperands op{x, ldx, w, w_dtype, ldw, y, ldy, K,
                                  x_values == XValues::kBf16Exact};
  if (M == 1) {
    RunGemv(ctx, block, op, N);
  } else {
    RunGemm(ctx, block, op, M, N);
  }
}

void Gemv(const CpuContext& ctx, const float* x, const void* w, DType w_dtype, size_t ldw, float* y,
          size_t N, size_t K, XValues x_values) {
  CheckArgs("Gemv", x, K, w, w_dtype, ldw, y, N, 1, N, K);
  const internal::GemmBlockFn block = BlockFn("Gemv", ctx.isa);
  if (N == 0) return;
  RunGemv(ctx, block,
          internal::GemmOperands{x, K, w, w_dtype, ldw, y, N, K, x_values == XValues::kBf16Exact},
          N);
}

}  // namespace dsv2::kernels
