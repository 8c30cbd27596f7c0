// Private to kernels/cpu: the per-ISA block kernels behind QGemm (cpu.h).
//
// As for Gemm (gemm_internal.h): each ISA file (qgemm_scalar.cc,
// qgemm_avx2.cc, qgemm_avx512.cc) exports one function that computes a
// rectangle of Y; qgemm.cc checks arguments, dispatches and splits Y over
// the ThreadPool. Every Y element a block function writes goes through its
// ISA's one arithmetic sequence (documented at the top of its file),
// whatever the rectangle's size or position or the tile the element lands
// in, so tiling and threading change no bit. The same per-function
// target-attribute and internal-linkage rule applies.
#ifndef DSV2_KERNELS_CPU_QGEMM_INTERNAL_H_
#define DSV2_KERNELS_CPU_QGEMM_INTERNAL_H_

#include <cstddef>
#include <cstdint>

#include "kernels/quant.h"

namespace dsv2::kernels::internal {

// The operands of one QGemm call (see cpu.h and quant.h).
struct QGemmOperands {
  const float* x;  // [M, K] f32, row stride ldx.
  size_t ldx;
  QuantFormat format;
  const uint8_t* q;  // [N] rows of QuantRowBytes(format, K) bytes, row stride ldq bytes.
  size_t ldq;
  const uint16_t* scales;  // [N, ceil(K / 32)] f16 bits, row stride lds.
  size_t lds;
  float* y;  // [M, N], row stride ldy.
  size_t ldy;
  size_t K;
};

// Computes Y[m, n] for m in [m_begin, m_end), n in [n_begin, n_end).
// Single-threaded; safe to call concurrently on disjoint rectangles.
// REQUIRES: the ISA is supported by this CPU (callers check CpuSupports).
using QGemmBlockFn = void (*)(const QGemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                              size_t n_end);

void QGemmBlockScalar(const QGemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                      size_t n_end);
void QGemmBlockAvx2(const QGemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                    size_t n_end);
void QGemmBlockAvx512(const QGemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                      size_t n_end);

}  // namespace dsv2::kernels::internal

#endif  // DSV2_KERNELS_CPU_QGEMM_INTERNAL_H_
