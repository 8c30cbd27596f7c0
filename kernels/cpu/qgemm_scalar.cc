// QGemmReference and the portable scalar quantized kernel (CpuIsa::kScalar).
//
// Scalar reduction pattern, per Y element: eight lane accumulators a_j.
// For each group g ascending (a short last group zero-padded to 32 with
// q = 0, x = 0): eight group partials p_j = q[j] x[j], then
// p_j = p_j + q[8 i + j] x[8 i + j] for i = 1, 2, 3 (multiply, then add: no
// FMA), then a_j = a_j + scale_g * p_j; finally the fixed tree
// ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)). This is the AVX2
// pattern (qgemm_avx2.cc) without FMA. Every element goes through the one
// out-of-line Dot() below, so no call-site inlining decision can make two
// elements' arithmetic differ.
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "kernels/cpu.h"
#include "kernels/cpu/qgemm_internal.h"
#include "kernels/dtype.h"
#include "kernels/quant.h"

namespace dsv2::kernels {
namespace {

// The 32 integers of group g (elements past K as 0) and the matching x
// (zeros past K).
void LoadGroup(QuantFormat format, const uint8_t* q_row, const float* x, size_t g, size_t K,
               float qv[kQuantGroupSize], float xv[kQuantGroupSize]) {
  const size_t begin = g * kQuantGroupSize;
  for (size_t i = 0; i < kQuantGroupSize; ++i) {
    const bool in = begin + i < K;
    qv[i] = in ? static_cast<float>(QuantValueAt(format, q_row, begin + i)) : 0.0f;
    xv[i] = in ? x[begin + i] : 0.0f;
  }
}

[[gnu::noinline]] float Dot(QuantFormat format, const float* x, const uint8_t* q_row,
                            const uint16_t* scale_row, size_t K) {
  float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const size_t groups = QuantGroupsPerRow(K);
  for (size_t g = 0; g < groups; ++g) {
    float qv[kQuantGroupSize], xv[kQuantGroupSize];
    LoadGroup(format, q_row, x, g, K, qv, xv);
    float p[8];
    for (int j = 0; j < 8; ++j) p[j] = qv[j] * xv[j];
    for (int i = 1; i < 4; ++i) {
      for (int j = 0; j < 8; ++j) p[j] += qv[8 * i + j] * xv[8 * i + j];
    }
    const float d = F16ToF32(scale_row[g]);
    for (int j = 0; j < 8; ++j) a[j] += d * p[j];
  }
  return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

}  // namespace

namespace internal {

void QGemmBlockScalar(const QGemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                      size_t n_end) {
  for (size_t m = m_begin; m < m_end; ++m) {
    const float* x = op.x + m * op.ldx;
    float* y = op.y + m * op.ldy;
    for (size_t n = n_begin; n < n_end; ++n) {
      y[n] = Dot(op.format, x, op.q + n * op.ldq, op.scales + n * op.lds, op.K);
    }
  }
}

}  // namespace internal

void QGemmReference(const float* x, size_t ldx, const QuantizedWeights& w, float* y, size_t ldy,
                    size_t M, size_t N, size_t K, QuantActivations acts) {
  if (w.format != QuantFormat::kInt8 && w.format != QuantFormat::kInt4) {
    std::fprintf(stderr, "QGemmReference: unknown quantized format %d\n",
                 static_cast<int>(w.format));
    std::abort();
  }
  if (acts == QuantActivations::kInt8 && K > 0 && M > 0 && N > 0) {
    const internal::QuantizedActivationBuffers xq(x, ldx, M, K, w.format, nullptr);
    internal::QGemmOperands op{x,     ldx,      w.format,  static_cast<const uint8_t*>(w.q),
                               w.ldq, w.scales, w.lds,     y,
                               ldy,   K,        &xq.view()};
    internal::QGemmDotBlockScalar(op, 0, M, 0, N);
    return;
  }
  const size_t groups = QuantGroupsPerRow(K);
  for (size_t m = 0; m < M; ++m) {
    const float* xr = x + m * ldx;
    for (size_t n = 0; n < N; ++n) {
      const void* q_row = static_cast<const uint8_t*>(w.q) + n * w.ldq;
      float acc = 0.0f;
      for (size_t g = 0; g < groups; ++g) {
        float s = 0.0f;
        const size_t end = K < (g + 1) * kQuantGroupSize ? K : (g + 1) * kQuantGroupSize;
        for (size_t k = g * kQuantGroupSize; k < end; ++k) {
          s += static_cast<float>(QuantValueAt(w.format, q_row, k)) * xr[k];
        }
        acc += F16ToF32(w.scales[n * w.lds + g]) * s;
      }
      y[m * ldy + n] = acc;
    }
  }
}

}  // namespace dsv2::kernels
