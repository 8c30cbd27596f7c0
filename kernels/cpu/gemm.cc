// Gemm / Gemv (kernels/cpu.h): argument checks, ISA dispatch, and the split
// of Y into rectangles run on the ThreadPool.
//
// Threads only ever split M and N (rectangles of Y); every rectangle runs
// the ISA's block function, whose per-element arithmetic does not depend on
// the rectangle (gemm_internal.h), so the split changes no bit.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/cpu.h"
#include "kernels/cpu/gemm_internal.h"

namespace dsv2::kernels {
namespace {

// A GEMV chunk reads at least this many weight bytes, so waking a worker
// (~10 us) is worth it.
constexpr size_t kGemvChunkBytes = size_t{256} << 10;
// GEMM column blocks are multiples of SplitTiles::gemm_cols (12 by default:
// the AVX2 tile is 3 wide, the AVX-512 tile 4; QGemm's are 2 and 4) and hold
// about this many weight bytes: the block is re-read from L2 for every row
// tile.
constexpr size_t kGemmWeightBlockBytes = size_t{192} << 10;
// GEMM row blocks hold about this many x bytes: they are re-read from L2
// for every column tile.
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
  internal::CheckIsaSupported(fn, isa);
  switch (isa) {
    case CpuIsa::kScalar:
      return internal::GemmBlockScalar;
    case CpuIsa::kAvx2:
      return internal::GemmBlockAvx2;
    case CpuIsa::kAvx512Bf16:
      return internal::GemmBlockAvx512;
    case CpuIsa::kAmx:
      return internal::GemmBlockAmx;
  }
  std::abort();
}

}  // namespace

namespace internal {

void CheckIsaSupported(const char* fn, CpuIsa isa) {
  if (CpuSupports(isa)) return;
  std::fprintf(stderr, "%s: CPU ISA %.*s is not supported by this CPU (use ResolveCpuIsa)\n", fn,
               static_cast<int>(CpuIsaName(isa).size()), CpuIsaName(isa).data());
  std::abort();
}

void RunGemvSplit(ThreadPool* pool, size_t N, size_t row_bytes, RectFn block, const SplitTiles& t) {
  row_bytes = std::max<size_t>(row_bytes, 1);
  const size_t tiles = (N + t.gemv_cols - 1) / t.gemv_cols;
  const size_t min_cols = (kGemvChunkBytes + row_bytes - 1) / row_bytes;
  const size_t grain = (min_cols + t.gemv_cols - 1) / t.gemv_cols;
  if (pool == nullptr || tiles <= grain) {
    block(0, 1, 0, N);
    return;
  }
  pool->ParallelFor(tiles, grain, [&](size_t begin, size_t end) {
    block(0, 1, begin * t.gemv_cols, std::min(N, end * t.gemv_cols));
  });
}

void RunGemmSplit(ThreadPool* pool, size_t M, size_t N, size_t K, size_t row_bytes, RectFn block,
                  const SplitTiles& t) {
  if (pool == nullptr || M * N * K < kGemmInlineMacs) {
    block(0, M, 0, N);
    return;
  }
  row_bytes = std::max<size_t>(row_bytes, 1);
  const size_t ct = t.gemm_cols;
  const size_t rt = t.gemm_rows;
  size_t nb = std::max(ct, kGemmWeightBlockBytes / row_bytes / ct * ct);
  size_t mb = std::max(rt, kGemmXBlockBytes / std::max<size_t>(K * t.x_elem_bytes, 1) / rt * rt);
  size_t n_blocks = (N + nb - 1) / nb;
  size_t m_blocks = (M + mb - 1) / mb;
  // Small K makes the cache-sized blocks few and large: narrow them (columns
  // first, then rows) until every thread gets about four tasks.
  const size_t min_tasks = 4 * static_cast<size_t>(pool->num_threads());
  while (n_blocks * m_blocks < min_tasks) {
    if (nb > ct) {
      nb = std::max(ct, nb / 2 / ct * ct);
    } else if (mb > rt) {
      mb = std::max(rt, mb / 2 / rt * rt);
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

// Whether the call runs on AMX tiles: kAmx with bf16 weights and bf16-exact
// x (its other operands go to the AVX-512 block and keep its split).
bool OnAmxTiles(const CpuContext& ctx, const internal::GemmOperands& op) {
  return ctx.isa == CpuIsa::kAmx && op.w_dtype == DType::kBF16 && op.x_bf16_exact;
}

// The AMX block works in 16 x 16 tiles.
internal::SplitTiles Tiles(const CpuContext& ctx, const internal::GemmOperands& op) {
  return OnAmxTiles(ctx, op) ? internal::kAmxSplitTiles : internal::SplitTiles{};
}

// The AMX block reads x packed (gemm_internal.h), once per call for all
// column blocks: packed on the pool in m-tiles, into the calling thread's
// buffer (one call at a time per thread). Returns op with x_packed set.
internal::GemmOperands PackForAmx(const CpuContext& ctx, internal::GemmOperands op, size_t M) {
  if (!OnAmxTiles(ctx, op) || op.K == 0) return op;
  thread_local std::vector<uint32_t> packed;
  const size_t words = internal::AmxPackedXWords(M, op.K);
  if (packed.size() < words) packed.resize(words);
  const size_t tiles = (M + 15) / 16;
  // By pointer: inside the lambda, `packed` would name the worker's own
  // thread_local buffer.
  uint32_t* const dst = packed.data();
  const auto pack = [&](size_t t0, size_t t1) {
    internal::PackXForAmx(op.x, op.ldx, M, op.K, t0, t1, dst);
  };
  // About 64 KiB of x per task.
  const size_t grain = std::max<size_t>(1, (size_t{64} << 10) / (16 * op.K * 4));
  if (ctx.pool == nullptr || tiles <= grain) {
    pack(0, tiles);
  } else {
    ctx.pool->ParallelFor(tiles, grain, pack);
  }
  op.x_packed = dst;
  return op;
}

void RunGemv(const CpuContext& ctx, internal::GemmBlockFn block, const internal::GemmOperands& op,
             size_t N) {
  internal::RunGemvSplit(
      ctx.pool, N, op.K * DTypeSize(op.w_dtype),
      [&](size_t m0, size_t m1, size_t n0, size_t n1) { block(op, m0, m1, n0, n1); },
      Tiles(ctx, op));
}

void RunGemm(const CpuContext& ctx, internal::GemmBlockFn block, const internal::GemmOperands& op,
             size_t M, size_t N) {
  internal::RunGemmSplit(
      ctx.pool, M, N, op.K, op.K * DTypeSize(op.w_dtype),
      [&](size_t m0, size_t m1, size_t n0, size_t n1) { block(op, m0, m1, n0, n1); },
      Tiles(ctx, op));
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
    RunGemv(ctx, block, PackForAmx(ctx, op, 1), N);
  } else {
    RunGemm(ctx, block, PackForAmx(ctx, op, M), M, N);
  }
}

void Gemv(const CpuContext& ctx, const float* x, const void* w, DType w_dtype, size_t ldw, float* y,
          size_t N, size_t K, XValues x_values) {
  CheckArgs("Gemv", x, K, w, w_dtype, ldw, y, N, 1, N, K);
  const internal::GemmBlockFn block = BlockFn("Gemv", ctx.isa);
  if (N == 0) return;
  RunGemv(ctx, block,
          PackForAmx(ctx,
                     internal::GemmOperands{x, K, w, w_dtype, ldw, y, N, K,
                                            x_values == XValues::kBf16Exact},
                     1),
          N);
}

}  // namespace dsv2::kernels
