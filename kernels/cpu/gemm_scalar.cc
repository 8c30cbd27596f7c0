// GemmReference and the portable scalar kernel (CpuIsa::kScalar).
//
// Scalar reduction pattern, per Y element: eight partial sums, partial j
// taking k = j, j + 8, j + 16, ... in ascending k (multiply, then add: no
// FMA), then the fixed tree ((p0 + p4) + (p2 + p6)) + ((p1 + p5) + (p3 + p7)).
// Every element goes through the one out-of-line Dot() below, so no
// call-site inlining decision (e.g. FMA contraction under -march=native) can
// make two elements' arithmetic differ.
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "kernels/cpu.h"
#include "kernels/cpu/gemm_internal.h"

namespace dsv2::kernels {
namespace {

inline float WeightToF32(float w) { return w; }
inline float WeightToF32(uint16_t w) { return Bf16ToF32(w); }

template <typename W>
[[gnu::noinline]] float Dot(const float* x, const W* w, size_t K) {
  float p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t k = 0;
  for (; k + 8 <= K; k += 8) {
    for (int j = 0; j < 8; ++j) p[j] += x[k + j] * WeightToF32(w[k + j]);
  }
  for (int j = 0; k + j < K; ++j) p[j] += x[k + j] * WeightToF32(w[k + j]);
  return ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7]));
}

template <typename W>
void Block(const internal::GemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
           size_t n_end) {
  const W* w = static_cast<const W*>(op.w);
  for (size_t m = m_begin; m < m_end; ++m) {
    const float* x = op.x + m * op.ldx;
    float* y = op.y + m * op.ldy;
    for (size_t n = n_begin; n < n_end; ++n) y[n] = Dot(x, w + n * op.ldw, op.K);
  }
}

}  // namespace

namespace internal {

void GemmBlockScalar(const GemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                     size_t n_end) {
  if (op.w_dtype == DType::kBF16) {
    Block<uint16_t>(op, m_begin, m_end, n_begin, n_end);
  } else {
    Block<float>(op, m_begin, m_end, n_begin, n_end);
  }
}

}  // namespace internal

void GemmReference(const float* x, size_t ldx, const void* w, DType w_dtype, size_t ldw, float* y,
                   size_t ldy, size_t M, size_t N, size_t K) {
  if (w_dtype != DType::kF32 && w_dtype != DType::kBF16) {
    std::fprintf(stderr, "GemmReference: weight dtype %d unsupported; expected f32 or bf16\n",
                 static_cast<int>(w_dtype));
    std::abort();
  }
  for (size_t m = 0; m < M; ++m) {
    for (size_t n = 0; n < N; ++n) {
      float acc = 0.0f;
      if (w_dtype == DType::kBF16) {
        const uint16_t* wr = static_cast<const uint16_t*>(w) + n * ldw;
        for (size_t k = 0; k < K; ++k) acc += x[m * ldx + k] * Bf16ToF32(wr[k]);
      } else {
        const float* wr = static_cast<const float*>(w) + n * ldw;
        for (size_t k = 0; k < K; ++k) acc += x[m * ldx + k] * wr[k];
      }
      y[m * ldy + n] = acc;
    }
  }
}

}  // namespace dsv2::kernels
