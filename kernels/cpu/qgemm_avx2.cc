// AVX2 + FMA + F16C quantized kernels (CpuIsa::kAvx2), int8 and int4.
//
// Reduction pattern, per Y element (the same in every tile shape below):
// one 8-lane f32 accumulator a. For each group g of 32 elements ascending
// (a short last group zero-padded: q = 0, x = 0): the group's integers are
// widened exactly to f32 in four 8-lane vectors w0..w3 (elements
// 8 i .. 8 i + 7 in w_i), then
//   p = w0 * x0;  p = fma(w1, x1, p);  p = fma(w2, x2, p);  p = fma(w3, x3, p);
//   a = fma(p, broadcast(scale_g), a)
// with the scale read exactly from f16 (VCVTPH2PS); finally the fixed tree
// ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)) (HorizontalSum8).
// Widening: int8 VPMOVSXBD + VCVTDQ2PS; int4 one AND (low nibbles =
// elements 0-15) and one shift + AND (high nibbles = 16-31), minus 8, then
// the same widening.
//
// Tiles: R rows x C columns of accumulators. GEMV (one row) streams 8 weight
// rows at once (8 independent chains, 8 sequential streams for the
// prefetchers), with the row's 4 x vectors of a group loaded once; GEMM
// uses 4 x 2 (8 accumulators + 4 widened weight vectors + scale +
// temporaries in the 16 ymm registers), so each group widened once feeds 4
// rows. Remainders use 4-, 2- and 1-wide tiles (same arithmetic per
// element).
//
// No file-wide -mavx2: each function carries DSV2_AVX2 and has internal
// linkage (see gemm_internal.h).
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
// Groups whose scales are converted together (one VCVTPH2PS of 8 f16).
constexpr size_t kScaleBlock = 8;

DSV2_AVX2 inline __m256 WidenBytes(__m128i bytes8) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes8));
}

// int8: a group is 32 bytes, one per element.
struct Int8 {
  static constexpr size_t kGroupBytes = kGroup;
  DSV2_AVX2 static void Widen(const uint8_t* p, __m256 w[4]) {
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      w[i] = WidenBytes(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * i)));
    }
  }
  // The first n (< 32) elements; the row ends there, so nothing past them
  // is read.
  DSV2_AVX2 static void WidenShort(const uint8_t* p, size_t n, __m256 w[4]) {
    alignas(16) uint8_t buf[kGroup] = {};
    std::memcpy(buf, p, n);
    Widen(buf, w);
  }
};

// int4: a group is 16 bytes (quant.h); low nibbles are elements 0-15, high
// nibbles 16-31, each q + 8.
struct Int4 {
  static constexpr size_t kGroupBytes = kGroup / 2;
  DSV2_AVX2 static void Widen(const uint8_t* p, __m256 w[4]) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i mask = _mm_set1_epi8(0x0f);
    const __m128i eight = _mm_set1_epi8(8);
    const __m128i lo = _mm_sub_epi8(_mm_and_si128(v, mask), eight);
    const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), mask), eight);
    w[0] = WidenBytes(lo);
    w[1] = WidenBytes(_mm_unpackhi_epi64(lo, lo));
    w[2] = WidenBytes(hi);
    w[3] = WidenBytes(_mm_unpackhi_epi64(hi, hi));
  }
  // A short group still has all 16 bytes; its nibbles past K hold q = 0.
  DSV2_AVX2 static void WidenShort(const uint8_t* p, size_t, __m256 w[4]) { Widen(p, w); }
};

// sc[c][i] = scale of group g0 + i of column c, as f32, for i < count.
template <int C>
DSV2_AVX2 inline void LoadScales(const uint16_t* s, size_t lds, size_t g0, size_t count,
                                 float (*sc)[kScaleBlock]) {
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    const uint16_t* sr = s + c * lds + g0;
    if (count == kScaleBlock) {
      _mm256_store_ps(sc[c],
                      _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sr))));
    } else {
      for (size_t i = 0; i < count; ++i) sc[c][i] = _cvtsh_ss(sr[i]);
    }
  }
}

// One group of every (row, column) of the tile: x points at the group's
// first element of row 0 (rows at stride ldx, 32 readable floats each), q
// at the group's bytes in column 0 (columns at stride ldq), sc at the
// scales, i the group's index in them. n: valid elements of a short group.
template <typename F, int R, int C, bool kShort>
DSV2_AVX2 inline void GroupStep(const float* x, size_t ldx, const uint8_t* q, size_t ldq,
                                const float (*sc)[kScaleBlock], size_t i, size_t n,
                                __m256 (&acc)[R][C]) {
  __m256 xv[4];
  if constexpr (R == 1) {
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) xv[j] = _mm256_loadu_ps(x + 8 * j);
  }
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    __m256 w[4];
    if constexpr (kShort) {
      F::WidenShort(q + c * ldq, n, w);
    } else {
      F::Widen(q + c * ldq, w);
    }
    const __m256 d = _mm256_broadcast_ss(&sc[c][i]);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      if constexpr (R > 1) {
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) xv[j] = _mm256_loadu_ps(x + r * ldx + 8 * j);
      }
      __m256 p = _mm256_mul_ps(w[0], xv[0]);
      p = _mm256_fmadd_ps(w[1], xv[1], p);
      p = _mm256_fmadd_ps(w[2], xv[2], p);
      p = _mm256_fmadd_ps(w[3], xv[3], p);
      acc[r][c] = _mm256_fmadd_ps(p, d, acc[r][c]);
    }
  }
}

// Y[r, c] for r < R, c < C at y (row stride ldy); x rows at stride ldx,
// weight rows at stride ldq bytes, scale rows at stride lds.
template <typename F, int R, int C>
DSV2_AVX2 void Tile(const float* x, size_t ldx, const uint8_t* q, size_t ldq, const uint16_t* s,
                    size_t lds, float* y, size_t ldy, size_t K) {
  __m256 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  }
  const size_t groups = QuantGroupsPerRow(K);
  const size_t full = K / kGroup;
  alignas(32) float sc[C][kScaleBlock];
  for (size_t g0 = 0; g0 < groups; g0 += kScaleBlock) {
    const size_t count = groups - g0 < kScaleBlock ? groups - g0 : kScaleBlock;
    LoadScales<C>(s, lds, g0, count, sc);
    const size_t full_here = full > g0 ? (full - g0 < count ? full - g0 : count) : 0;
    for (size_t i = 0; i < full_here; ++i) {
      const size_t g = g0 + i;
      GroupStep<F, R, C, false>(x + g * kGroup, ldx, q + g * F::kGroupBytes, ldq, sc, i, 0, acc);
    }
    if (full_here < count) {  // the short last group
      const size_t g = g0 + full_here;
      const size_t n = K - g * kGroup;
      alignas(32) float xb[R][kGroup] = {};
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) std::memcpy(xb[r], x + r * ldx + g * kGroup, n * sizeof(float));
      GroupStep<F, R, C, true>(xb[0], kGroup, q + g * F::kGroupBytes, ldq, sc, full_here, n, acc);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) y[r * ldy + c] = HorizontalSum8(acc[r][c]);
  }
}

// Tile<F, R, C> at row m, column n of the operands.
template <typename F, int R, int C>
DSV2_AVX2 inline void TileAt(const QGemmOperands& op, size_t m, size_t n) {
  Tile<F, R, C>(op.x + m * op.ldx, op.ldx, op.q + n * op.ldq, op.ldq, op.scales + n * op.lds,
                op.lds, op.y + m * op.ldy + n, op.ldy, op.K);
}

// Rows [m, m + R) over columns [n_begin, n_end): tiles of kCols columns,
// then 4, 2, 1 (kCols is 8 or 2).
template <typename F, int R, int kCols>
DSV2_AVX2 void RowTiles(const QGemmOperands& op, size_t m, size_t n_begin, size_t n_end) {
  size_t n = n_begin;
  for (; n + kCols <= n_end; n += kCols) TileAt<F, R, kCols>(op, m, n);
  if constexpr (kCols > 4) {
    if (n + 4 <= n_end) {
      TileAt<F, R, 4>(op, m, n);
      n += 4;
    }
  }
  if constexpr (kCols > 2) {
    if (n + 2 <= n_end) {
      TileAt<F, R, 2>(op, m, n);
      n += 2;
    }
  }
  if (n < n_end) TileAt<F, R, 1>(op, m, n);
}

template <typename F>
DSV2_AVX2 void Block(const QGemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                     size_t n_end) {
  if (m_end - m_begin == 1) {
    RowTiles<F, 1, 8>(op, m_begin, n_begin, n_end);
    return;
  }
  // Column tiles of 2: their weight rows stay in L1 while the block's x
  // rows (sized by gemm.cc's split to fit L2) stream past them.
  for (size_t n = n_begin; n < n_end; n += 2) {
    const size_t n1 = n + 2 < n_end ? n + 2 : n_end;
    size_t m = m_begin;
    for (; m + 4 <= m_end; m += 4) RowTiles<F, 4, 2>(op, m, n, n1);
    if (m + 2 <= m_end) {
      RowTiles<F, 2, 2>(op, m, n, n1);
      m += 2;
    }
    if (m < m_end) RowTiles<F, 1, 2>(op, m, n, n1);
  }
}

}  // namespace

void QGemmBlockAvx2(const QGemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                    size_t n_end) {
  if (op.format == QuantFormat::kInt4) {
    Block<Int4>(op, m_begin, m_end, n_begin, n_end);
  } else {
    Block<Int8>(op, m_begin, m_end, n_begin, n_end);
  }
}

}  // namespace dsv2::kernels::internal
