// AVX-512 VNNI integer dot product (QuantActivations::kInt8, CpuIsa::
// kAvx512Bf16 and kAmx), int8 and int4 weights. Bits: those of
// qgemm_dot_scalar.cc (cpu.h's contract); only the integer sums are formed
// differently, and integer sums are exact.
//
// Per column and block of 8 groups (the f32 lanes of one ymm accumulator):
//   int8: 4 zmm of weights (2 groups each). VPDPBUSD takes unsigned x
//     signed bytes, so the weights are offset to unsigned (q + 128, one XOR
//     per zmm, shared by the rows of a tile) against qx (signed), and
//     128 * sum(qx) of each group (16 * QuantizedActivations::sum8, one
//     shift per row) is taken off the group sums: one VPDPBUSD per 64
//     bytes, where offsetting x instead needs a second one (128 * sum(w)
//     per lane) and a subtraction per lane.
//   int4: 2 zmm of nibbles (4 groups each): the nibbles (q + 8, unsigned)
//     against qx (signed) directly, one VPDPBUSD per half; 8 * sum(qx) of
//     each group (QuantizedActivations::sum8) is taken off.
// The int32 lanes of a group are then added up (unpack/shuffle tree) into 8
// group sums in group order, converted to f32 (exact: |sum| < 2^24) and
// accumulated as fma(sum, scale * d, lane).
//
// Tiles: GEMV 1 row x 4 (int8) or 8 (int4) columns; GEMM 4 rows x 2 columns (weights' integer
// work shared by the rows). A block that would read past a row's end
// (the last one, when K is not a multiple of 256 / 128 elements) copies its
// bytes and scales into zeroed scratch first.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/cpu/qgemm_internal.h"
#include "kernels/cpu/simd_internal.h"
#include "kernels/quant.h"

#define DSV2_AVX512_VNNI                                      \
  __attribute__((                                             \
      target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma," \
             "f16c")))

namespace dsv2::kernels::internal {
namespace {

constexpr size_t kGroup = kQuantGroupSize;

// The all-ones maskz forms of the shuffles: the unmasked intrinsics use an
// undefined source that trips GCC 12's -Wmaybe-uninitialized (PR105593).
constexpr __mmask16 kAll16 = 0xffff;
constexpr __mmask8 kAll8 = 0xff;
DSV2_AVX512_VNNI inline __m512i UnpackLo32(__m512i a, __m512i b) {
  return _mm512_maskz_unpacklo_epi32(kAll16, a, b);
}
DSV2_AVX512_VNNI inline __m512i UnpackHi32(__m512i a, __m512i b) {
  return _mm512_maskz_unpackhi_epi32(kAll16, a, b);
}
DSV2_AVX512_VNNI inline __m512i UnpackLo64(__m512i a, __m512i b) {
  return _mm512_maskz_unpacklo_epi64(kAll8, a, b);
}
DSV2_AVX512_VNNI inline __m512i UnpackHi64(__m512i a, __m512i b) {
  return _mm512_maskz_unpackhi_epi64(kAll8, a, b);
}
DSV2_AVX512_VNNI inline __m256i FirstEight(__m512i order, __m512i v) {
  // Through memory: GCC 12's 512->256-bit cast and extract intrinsics trip
  // -Werror=uninitialized too (see simd_internal.h); the store forwards.
  alignas(64) int32_t lanes[16];
  _mm512_store_si512(lanes, _mm512_maskz_permutexvar_epi32(kAll16, order, v));
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes));
}

// The 8 group sums of four zmm whose halves (8 int32 lanes) each belong to
// one group: t_i holds groups 2 i (lanes 0-7) and 2 i + 1 (lanes 8-15).
DSV2_AVX512_VNNI inline __m256i SumHalves(__m512i t0, __m512i t1, __m512i t2, __m512i t3) {
  // Per 128-bit lane L: [S0(L), S1(L), S2(L), S3(L)], S_i(L) = sum of t_i's 4 lanes in L.
  const __m512i a = _mm512_add_epi32(UnpackLo32(t0, t1), UnpackHi32(t0, t1));
  const __m512i b = _mm512_add_epi32(UnpackLo32(t2, t3), UnpackHi32(t2, t3));
  const __m512i c = _mm512_add_epi32(UnpackLo64(a, b), UnpackHi64(a, b));
  // Lanes 0-3: L0 + L1 = groups 0, 2, 4, 6; lanes 8-11: L2 + L3 = groups 1, 3, 5, 7.
  const __m512i e =
      _mm512_add_epi32(c, _mm512_maskz_shuffle_i32x4(kAll16, c, c, _MM_SHUFFLE(2, 3, 0, 1)));
  const __m512i order = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 0, 0, 0, 0, 0, 0, 0, 0);
  return FirstEight(order, e);
}

// The 8 group sums of two zmm whose 128-bit lanes each belong to one group:
// t0 holds groups 0-3, t1 groups 4-7.
DSV2_AVX512_VNNI inline __m256i SumQuarters(__m512i t0, __m512i t1) {
  // Per 128-bit lane L: [t0 0+2, t1 0+2, t0 1+3, t1 1+3].
  const __m512i a = _mm512_add_epi32(UnpackLo32(t0, t1), UnpackHi32(t0, t1));
  // Lane 4 L: group L of t0; lane 4 L + 1: group L of t1.
  const __m512i e = _mm512_add_epi32(a, _mm512_maskz_shuffle_epi32(kAll16, a, _MM_PERM_BADC));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
  return FirstEight(order, e);
}

// int8: a block is 256 bytes (8 groups of 32).
struct Int8 {
  static constexpr size_t kBlockBytes = 8 * kGroup;
  static constexpr int kGemvCols = 4;  // weight rows per GEMV tile (measured: 4 > 8 here)
  // GEMV prefetch: the same row kPrefetchBytes ahead, or (0) the next tile's
  // rows at the same place (measured best per format, 1 thread).
  static constexpr size_t kPrefetchBytes = 512;
  // Weight-side work shared by the rows of a tile.
  struct Prepared {
    __m512i wu[4];  // q + 128 as unsigned bytes, 2 groups each
  };
  DSV2_AVX512_VNNI static void Prepare(const uint8_t* p, Prepared& pw) {
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) pw.wu[i] = _mm512_xor_si512(_mm512_loadu_si512(p + 64 * i), flip);
  }
  DSV2_AVX512_VNNI static __m256i Sums(const Prepared& pw, const int8_t* x, const int32_t* sum8) {
    __m512i t[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      t[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), pw.wu[i], _mm512_loadu_si512(x + 64 * i));
    }
    // sum((q + 128) qx) - 128 sum(qx), 128 sum(qx) = 16 * sum8.
    const __m256i x128 =
        _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sum8)), 4);
    return _mm256_sub_epi32(SumHalves(t[0], t[1], t[2], t[3]), x128);
  }
};

// int4: a block is 128 bytes (8 groups of 16 bytes).
struct Int4 {
  static constexpr size_t kBlockBytes = 8 * kGroup / 2;
  static constexpr int kGemvCols = 8;  // more rows in flight: int4 reads half the bytes per row
  static constexpr size_t kPrefetchBytes = 0;
  struct Prepared {
    __m512i lo[2], hi[2];  // nibbles as bytes: elements 0-15 / 16-31 of 4 groups each
  };
  DSV2_AVX512_VNNI static void Prepare(const uint8_t* p, Prepared& pw) {
    const __m512i mask = _mm512_set1_epi8(0x0f);
#pragma GCC unroll 2
    for (int i = 0; i < 2; ++i) {
      const __m512i v = _mm512_loadu_si512(p + 64 * i);
      pw.lo[i] = _mm512_and_si512(v, mask);
      pw.hi[i] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
    }
  }
  DSV2_AVX512_VNNI static __m256i Sums(const Prepared& pw, const int8_t* x, const int32_t* sum8) {
    __m512i t[2];
#pragma GCC unroll 2
    for (int i = 0; i < 2; ++i) {
      const __m512i xlo = _mm512_loadu_si512(x + 128 * i);
      const __m512i xhi = _mm512_loadu_si512(x + 128 * i + 64);
      t[i] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), pw.lo[i], xlo),
                                 pw.hi[i], xhi);
    }
    return _mm256_sub_epi32(SumQuarters(t[0], t[1]),
                            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sum8)));
  }
};

// Y[r, c] for r < R, c < C at rows m, columns n.
template <typename F, int R, int C>
DSV2_AVX512_VNNI void Tile(const QGemmOperands& op, size_t m, size_t n) {
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
        alignas(64) uint8_t buf[F::kBlockBytes] = {};
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

// Rows [m, m + R) over columns [n_begin, n_end): tiles of kCols, then 2, 1.
template <typename F, int R, int kCols>
DSV2_AVX512_VNNI void RowTiles(const QGemmOperands& op, size_t m, size_t n_begin, size_t n_end) {
  size_t n = n_begin;
  for (; n + kCols <= n_end; n += kCols) Tile<F, R, kCols>(op, m, n);
  if constexpr (kCols > 4) {
    if (n + 4 <= n_end) {
      Tile<F, R, 4>(op, m, n);
      n += 4;
    }
  }
  if constexpr (kCols > 2) {
    if (n + 2 <= n_end) {
      Tile<F, R, 2>(op, m, n);
      n += 2;
    }
  }
  if (n < n_end) Tile<F, R, 1>(op, m, n);
}

template <typename F>
DSV2_AVX512_VNNI void Block(const QGemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                            size_t n_end) {
  if (m_end - m_begin == 1) {
    RowTiles<F, 1, F::kGemvCols>(op, m_begin, n_begin, n_end);
    return;
  }
  for (size_t n = n_begin; n < n_end; n += 8) {
    const size_t n1 = n + 8 < n_end ? n + 8 : n_end;
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

void QGemmDotBlockAvx512(const QGemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                         size_t n_end) {
  if (op.format == QuantFormat::kInt4) {
    Block<Int4>(op, m_begin, m_end, n_begin, n_end);
  } else {
    Block<Int8>(op, m_begin, m_end, n_begin, n_end);
  }
}

}  // namespace dsv2::kernels::internal
