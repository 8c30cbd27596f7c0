// QGemm (kernels/cpu.h): argument checks, ISA dispatch, and the split of Y
// into rectangles on the ThreadPool (the same split as Gemm's,
// gemm_internal.h): threads split rows and columns, never K.
#include <cstdio>
#include <cstdlib>
#include <optional>

#include "kernels/cpu.h"
#include "kernels/cpu/gemm_internal.h"
#include "kernels/cpu/qgemm_internal.h"
#include "kernels/quant.h"

namespace dsv2::kernels {
namespace {

[[noreturn]] void Fail(const char* what, size_t a, size_t b) {
  std::fprintf(stderr, "QGemm: %s (%zu vs %zu)\n", what, a, b);
  std::abort();
}

// Precondition violations are caller bugs (shapes come from the loader and
// the engine), hence abort with the offending values.
void CheckArgs(const float* x, size_t ldx, const QuantizedWeights& w, const float* y, size_t ldy,
               size_t M, size_t N, size_t K) {
  if (w.format != QuantFormat::kInt8 && w.format != QuantFormat::kInt4) {
    std::fprintf(stderr, "QGemm: unknown quantized format %d; expected int8 or int4\n",
                 static_cast<int>(w.format));
    std::abort();
  }
  if (M == 0 || N == 0) return;
  if (M > 1 && ldy < N) Fail("ldy < N", ldy, N);
  if (y == nullptr) Fail("y is null", M, N);
  if (K == 0) return;
  if (M > 1 && ldx < K) Fail("ldx < K", ldx, K);
  if (N > 1 && w.ldq < QuantRowBytes(w.format, K)) {
    Fail("ldq < QuantRowBytes(format, K)", w.ldq, QuantRowBytes(w.format, K));
  }
  if (N > 1 && w.lds < QuantGroupsPerRow(K)) Fail("lds < groups", w.lds, QuantGroupsPerRow(K));
  if (x == nullptr || w.q == nullptr || w.scales == nullptr) {
    Fail("x, w.q or w.scales is null", M, K);
  }
}

internal::QGemmBlockFn BlockFn(CpuIsa isa) {
  internal::CheckIsaSupported("QGemm", isa);
  switch (isa) {
    case CpuIsa::kScalar:
      return internal::QGemmBlockScalar;
    case CpuIsa::kAvx2:
      return internal::QGemmBlockAvx2;
    case CpuIsa::kAvx512Bf16:
    case CpuIsa::kAmx:  // AMX-INT8 would need int8 activations: kAmx runs the AVX-512 kernels
      return internal::QGemmBlockAvx512;
  }
  std::abort();
}

internal::QGemmBlockFn DotBlockFn(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar:
      return internal::QGemmDotBlockScalar;
    case CpuIsa::kAvx2:
      return internal::QGemmDotBlockAvx2;
    case CpuIsa::kAvx512Bf16:
    case CpuIsa::kAmx:  // AMX-INT8 tiles are not used yet: the VNNI kernels run
      return internal::QGemmDotBlockAvx512;
  }
  std::abort();
}

}  // namespace

void QGemm(const CpuContext& ctx, const float* x, size_t ldx, const QuantizedWeights& w, float* y,
           size_t ldy, size_t M, size_t N, size_t K, QuantActivations acts) {
  CheckArgs(x, ldx, w, y, ldy, M, N, K);
  internal::QGemmBlockFn block = BlockFn(ctx.isa);
  if (acts == QuantActivations::kInt8) block = DotBlockFn(ctx.isa);
  if (M == 0 || N == 0) return;
  internal::QGemmOperands op{
      x, ldx, w.format, static_cast<const uint8_t*>(w.q), w.ldq, w.scales, w.lds, y, ldy, K};
  std::optional<internal::QuantizedActivationBuffers> xq;
  if (acts == QuantActivations::kInt8 && K > 0) {
    xq.emplace(x, ldx, M, K, w.format, ctx.pool);
    op.xq = &xq->view();
  } else if (acts == QuantActivations::kInt8) {
    block = BlockFn(ctx.isa);  // K = 0: zeros, as kF32
  }
  // What one weight row costs to stream: its values and its scales.
  const size_t row_bytes = QuantRowBytes(w.format, K) + 2 * QuantGroupsPerRow(K);
  const auto rect = [&](size_t m0, size_t m1, size_t n0, size_t n1) { block(op, m0, m1, n0, n1); };
  if (M == 1) {
    internal::RunGemvSplit(ctx.pool, N, row_bytes, rect);
  } else {
    internal::RunGemmSplit(ctx.pool, M, N, K, row_bytes, rect);
  }
}

}  // namespace dsv2::kernels
