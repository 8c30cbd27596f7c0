// AVX2 integer dot product (QuantActivations::kInt8, CpuIsa::kAvx2), int8
// and int4 weights. Bits: those of qgemm_dot_scalar.cc (cpu.h's contract);
// only the exact integer sums are formed differently.
//
// VPMADDUBSW multiplies unsigned by signed bytes into saturating 16-bit pair
// sums; the operands are kept where no pair can saturate:
//   int8 (one ymm = one group): |w| (unsigned, so -128 reads as 128) against
//     qx with w's sign (VPSIGNB; |qx| <= 127): pairs <= 2 * 128 * 127 = 32512.
//   int4 (one ymm = two groups): nibbles q + 8 (0-15) against qx, the low-
//     and high-nibble products added in 16 bits (<= 4 * 15 * 127 = 7620),
//     then 8 * sum(qx) of each group taken off.
// VPMADDWD with ones widens to int32 lanes; a VPHADDD tree gives the 8
// group sums of a block in group order; then f32 as in the AVX-512 file.
// Tiles: 1 row x 4 columns (GEMV) and 2 rows x 2 columns.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/cpu/qgemm_internal.h"
#include "kernels/cpu/simd_internal.h"
#include "kernels/quant.h"

#define DSV2_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace dsv2::kernels::internal {
namespace {

constexpr size_t kGroup = kQuantGroupSize;

// 8 lanes of 8 vectors to one vector of the 8 sums, in order.
DSV2_AVX2 inline __m256i SumEight(const __m256i (&p)[8]) {
  const __m256i h01 = _mm256_hadd_epi32(p[0], p[1]);
  const __m256i h23 = _mm256_hadd_epi32(p[2], p[3]);
  const __m256i h45 = _mm256_hadd_epi32(p[4], p[5]);
  const __m256i h67 = _mm256_hadd_epi32(p[6], p[7]);
  const __m256i a = _mm256_hadd_epi32(h01, h23);  // [p0 p1 p2 p3 | p0 p1 p2 p3] (half sums)
  const __m256i b = _mm256_hadd_epi32(h45, h67);
  return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20),
                          _mm256_permute2x128_si256(a, b, 0x31));
}

struct Int8 {
  static constexpr size_t kBlockBytes = 8 * kGroup;
  static constexpr size_t kPrefetchBytes = 512;
  struct Prepared {
    __m256i absw[8];
    __m256i w[8];
  };
  DSV2_AVX2 static void Prepare(const uint8_t* p, Prepared& pw) {
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      pw.w[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * i));
      pw.absw[i] = _mm256_abs_epi8(pw.w[i]);
    }
  }
  DSV2_AVX2 static __m256i Sums(const Prepared& pw, const int8_t* x, const int32_t*) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i p[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32 * i));
      p[i] =
          _mm256_madd_epi16(_mm256_maddubs_epi16(pw.absw[i], _mm256_sign_epi8(xv, pw.w[i])), ones);
    }
    return SumEight(p);
  }
};

struct Int4 {
  static constexpr size_t kBlockBytes = 8 * kGroup / 2;
  static constexpr size_t kPrefetchBytes = 0;  // 0: the next tile's rows
  struct Prepared {
    __m256i lo[4], hi[4];  // 2 groups each
  };
  DSV2_AVX2 static void Prepare(const uint8_t* p, Prepared& pw) {
    const __m256i mask = _mm256_set1_epi8(0x0f);
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * i));
      pw.lo[i] = _mm256_and_si256(v, mask);
      pw.hi[i] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
    }
  }
  DSV2_AVX2 static __m256i Sums(const Prepared& pw, const int8_t* x, const int32_t* sum8) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i p[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      // Groups 2 i, 2 i + 1 live in x block i / 2 at offset 32 (i % 2).
      const int8_t* xb = x + 128 * (i / 2) + 32 * (i % 2);
      const __m256i xlo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb));
      const __m256i xhi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 64));
      const __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(pw.lo[i], xlo),
                                           _mm256_maddubs_epi16(pw.hi[i], xhi));
      p[i] = _mm256_madd_epi16(s16, ones);  // lanes 0-3: group 2 i, lanes 4-7: group 2 i + 1
    }
    // hadd pairs: [g0 g0 g2 g2 | g1 g1 g3 g3], then [g0 g2 g4 g6 | g1 g3 g5 g7].
    const __m256i a =
        _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
    const __m256i sums = _mm256_permutevar8x32_epi32(a, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    return _mm256_sub_epi32(sums, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sum8)));
  }
};

template <typename F, int R, int C>
DSV2_AVX2 void Tile(const QGemmOperands& op, size_t m, size_t n) {
  const QuantizedActivations& xq = *op.xq;
  const size_t K = op.K;
  const size_t groups = QuantGroupsPerRow(K);
  const size_t padded = GroupsPadded8(K);
  const size_t row_bytes = QuantRowBytes(op.format, K);
  __m256 acc[R][C];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  }
  for (size_t g0 = 0; g0 < padded; g0 += 8) {
    const size_t byte0 = g0 / 8 * F::kBlockBytes;
    const bool whole = byte0 + F::kBlockBytes <= row_bytes && g0 + 8 <= groups;
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      const uint8_t* qrow = op.q + (n + c) * op.ldq;
      const uint16_t* srow = op.scales + (n + c) * op.lds;
      typename F::Prepared pw;
      __m256 scale;
      if (whole) {
        if constexpr (R == 1) {  // GEMV: the rows stream from DRAM
          PrefetchGemvBlock(qrow, byte0, F::kBlockBytes, F::kPrefetchBytes, C, op.ldq);
        }
        F::Prepare(qrow + byte0, pw);
        scale = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(srow + g0)));
      } else {
        alignas(32) uint8_t buf[F::kBlockBytes] = {};
        alignas(16) uint16_t sbuf[8] = {};
        std::memcpy(buf, qrow + byte0, row_bytes - byte0);
        std::memcpy(sbuf, srow + g0, (groups - g0) * sizeof(uint16_t));
        F::Prepare(buf, pw);
        scale = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(sbuf)));
      }
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const size_t row = m + r;
        const __m256i isum =
            F::Sums(pw, xq.q + row * xq.ldq + g0 * kGroup, xq.sum8 + row * xq.ldd + g0);
        const __m256 cg = _mm256_mul_ps(scale, _mm256_loadu_ps(xq.d + row * xq.ldd + g0));
        acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), cg, acc[r][c]);
      }
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) op.y[(m + r) * op.ldy + n + c] = HorizontalSum8(acc[r][c]);
  }
}

template <typename F, int R, int kCols>
DSV2_AVX2 void RowTiles(const QGemmOperands& op, size_t m, size_t n_begin, size_t n_end) {
  size_t n = n_begin;
  for (; n + kCols <= n_end; n += kCols) Tile<F, R, kCols>(op, m, n);
  if constexpr (kCols > 2) {
    if (n + 2 <= n_end) {
      Tile<F, R, 2>(op, m, n);
      n += 2;
    }
  }
  if (n < n_end) Tile<F, R, 1>(op, m, n);
}

template <typename F>
DSV2_AVX2 void Block(const QGemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                     size_t n_end) {
  if (m_end - m_begin == 1) {
    RowTiles<F, 1, 4>(op, m_begin, n_begin, n_end);
    return;
  }
  for (size_t n = n_begin; n < n_end; n += 8) {
    const size_t n1 = n + 8 < n_end ? n + 8 : n_end;
    size_t m = m_begin;
    for (; m + 2 <= m_end; m += 2) RowTiles<F, 2, 2>(op, m, n, n1);
    if (m < m_end) RowTiles<F, 1, 2>(op, m, n, n1);
  }
}

}  // namespace

void QGemmDotBlockAvx2(const QGemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                       size_t n_end) {
  if (op.format == QuantFormat::kInt4) {
    Block<Int4>(op, m_begin, m_end, n_begin, n_end);
  } else {
    Block<Int8>(op, m_begin, m_end, n_begin, n_end);
  }
}

}  // namespace dsv2::kernels::internal
