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
#include <vector>

#include "kernels/cpu.h"
#include "kernels/quant.h"

namespace dsv2::kernels::internal {

// X quantized for the integer dot product (QuantActivations::kInt8, cpu.h),
// made once per QGemm call by QuantizedActivationBuffers; G8 = ceil(K / 32)
// rounded up to a multiple of 8, every array zero past the row's groups.
//   q: row m at q + m * ldq (ldq = 32 G8 bytes). For int8 weights, byte k is
//      element k's integer (natural order). For int4 weights, blocks of 4
//      groups of 128 bytes: in block b, bytes [16 j, 16 j + 16) hold
//      elements 0-15 of group 4 b + j and bytes [64 + 16 j, 64 + 16 j + 16)
//      its elements 16-31, matching the weights' low and high nibbles.
//   d: row m at d + m * ldd (ldd = G8): each group's scale (f32).
//   sum8: row m at sum8 + m * ldd: 8 times the sum of the group's integers
//      (int4 weights are read as nibble = q + 8; this removes the 8. The
//      AVX-512 kernels read int8 weights as q + 128: 16 sum8 removes that.)
struct QuantizedActivations {
  const int8_t* q;
  size_t ldq;
  const float* d;
  const int32_t* sum8;
  size_t ldd;
};

// G8 of the layout above.
constexpr size_t GroupsPadded8(size_t K) { return (QuantGroupsPerRow(K) + 7) / 8 * 8; }

// GEMV weight prefetch, shared by the integer-dot kernels of every ISA: for
// the block of `block_bytes` at byte0 of a tile's first weight row qrow,
// asks for the same row `ahead_bytes` further on, or (ahead_bytes = 0) the
// next tile's rows (tile_cols rows of stride ldq further) at the same
// place. Past a row's end it reads the next row or nothing: a prefetch
// never faults.
inline void PrefetchGemvBlock(const uint8_t* qrow, size_t byte0, size_t block_bytes,
                              size_t ahead_bytes, size_t tile_cols, size_t ldq) {
  const uint8_t* ahead =
      ahead_bytes > 0 ? qrow + byte0 + ahead_bytes : qrow + tile_cols * ldq + byte0;
#pragma GCC unroll 4
  for (size_t b = 0; b < block_bytes; b += 64) __builtin_prefetch(ahead + b, 0, 3);
}

// X ([M, K], row stride ldx, K > 0) quantized into the layout above for
// weights of `format` (cpu.h gives the arithmetic), owning its arrays. One
// implementation (qgemm_dot_scalar.cc) for every ISA and for QGemmReference,
// so the integers and scales are the same bits everywhere. Rows are
// quantized independently: with a pool and at least 16 rows (a prefill)
// they go over it.
class QuantizedActivationBuffers {
 public:
  QuantizedActivationBuffers(const float* x, size_t ldx, size_t M, size_t K, QuantFormat format,
                             ThreadPool* pool);
  const QuantizedActivations& view() const { return view_; }

 private:
  std::vector<int8_t> q_;
  std::vector<float> d_;
  std::vector<int32_t> sum8_;
  QuantizedActivations view_;
};

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
  // QuantActivations::kInt8 only (else null): x quantized; the Dot block
  // functions below read it instead of x.
  const QuantizedActivations* xq = nullptr;
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

// The integer dot product (QuantActivations::kInt8): every ISA computes the
// same bits (cpu.h), the integer sums being exact; the ISA files differ in
// how they form them (qgemm_dot_*.cc).
void QGemmDotBlockScalar(const QGemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                         size_t n_end);
void QGemmDotBlockAvx2(const QGemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                       size_t n_end);
void QGemmDotBlockAvx512(const QGemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                         size_t n_end);

}  // namespace dsv2::kernels::internal

#endif  // DSV2_KERNELS_CPU_QGEMM_INTERNAL_H_
