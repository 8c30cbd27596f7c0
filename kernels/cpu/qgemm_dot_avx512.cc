// AVX-512 VNNI integer dot product (QuantActivations::kInt8, CpuIsa::
// kAvx512Bf16 and kAmx), int8 and int4 weights. Bits: those of
// qgemm_dot_scalar.cc (cpu.h's contract); only the integer sums are formed
// differently, and integer sums are exact.
//
// Per column and block of 8 groups (the f32 lanes of one ymm accumulator):
//   int8: 4 zmm of weights (2 groups each). VPDPBUSD takes unsigned x
//     signed bytes, so x is offset to unsigned (qx + 128, one XOR) and
//     128 * sum(w), formed by a second VPDPBUSD with 128s, is taken off.
//   int4: 2 zmm of nibbles (4 groups each): the nibbles (q + 8, unsigned)
//     against qx (signed) directly, one VPDPBUSD per half; 8 * sum(qx) of
//     each group (QuantizedActivations::sum8) is taken off.
// The int32 lanes of a group are then added up (unpack/shuffle tree) into 8
// group sums in group order, converted to f32 (exact: |sum| < 2^24) and
// accumulated as fma(sum, scale * d, lane).
//
// Tiles: GEMV 1 row x 4 (int8) or 8 (int4) columns; 2-3 rows: 2 x 2 and 1 x 2 tiles (weights'
// integer work shared by the rows); 4 rows or more: the rows go across the lanes instead
// (LaneBlock below: no per-group shuffle tree). A block that would read past a row's end
// (the last one, when K is not a multiple of 256 / 128 elements) copies its
// bytes and scales into zeroed scratch first.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

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
    __m512i w[4];
    __m512i w128[4];  // 128 * (sum of each 4 bytes of w), per int32 lane
  };
  DSV2_AVX512_VNNI static void Prepare(const uint8_t* p, Prepared& pw) {
    const __m512i c128 = _mm512_set1_epi8(static_cast<char>(0x80));
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      pw.w[i] = _mm512_loadu_si512(p + 64 * i);
      pw.w128[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c128, pw.w[i]);
    }
  }
  DSV2_AVX512_VNNI static __m256i Sums(const Prepared& pw, const int8_t* x, const int32_t*) {
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    __m512i t[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      const __m512i xu = _mm512_xor_si512(_mm512_loadu_si512(x + 64 * i), flip);  // qx + 128
      t[i] = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), xu, pw.w[i]), pw.w128[i]);
    }
    return SumHalves(t[0], t[1], t[2], t[3]);
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
        if constexpr (R == 1) {
          // GEMV: the rows stream from DRAM; ask for them ahead (past a row's
          // end a prefetch reads the next row or nothing: it never faults).
          const uint8_t* ahead = F::kPrefetchBytes > 0 ? qrow + byte0 + F::kPrefetchBytes
                                                        : qrow + C * op.ldq + byte0;
#pragma GCC unroll 4
          for (size_t b = 0; b < F::kBlockBytes; b += 64) {
            _mm_prefetch(reinterpret_cast<const char*>(ahead + b), _MM_HINT_T0);
          }
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

// ---------------------------------------------------------------------------
// GEMM with the rows of x in the lanes (blocks of at least kLaneMinRows
// rows). The tiles above form a group's sum inside one row's vector and
// then add its int32 lanes up with shuffles, for every (row, column): at 4
// rows that tree costs more than the VPDPBUSDs. Here x's rows go across the
// 16 int32 lanes instead: for group g and dword k (elements 4k..4k+3), lane
// r holds row r's 4 bytes, and the weight dword is broadcast to every lane,
// so 8 VPDPBUSDs leave each lane holding its row's whole group sum: no
// horizontal work.
//   int8: x is the unsigned operand (qx + 128) and w the signed one, so a
//     lane holds sum(qx w) + 128 sum(w); lane 15 holds qx = 0 (bytes 128),
//     i.e. exactly 128 sum(w), taken off every lane. 15 rows per pass; a
//     last partial group's missing weights are zero-filled scratch.
//   int4: the nibbles (q + 8, unsigned; byte b of a group holds elements b
//     and b + 16) against qx (signed), then 8 sum(qx) of the row's group
//     (QuantizedActivations::sum8) taken off. 16 rows per pass.
// The f32 steps are the reference's per output element: c = scale * d,
// lane accumulator L[g mod 8] (one zmm per g mod 8, lanes = rows) =
// fma(sum, c, L), then ((L0 + L4) + (L2 + L6)) + ((L1 + L5) + (L3 + L7)).
// Groups past the last (padding) are skipped: the reference's fma(0, 0, L)
// there leaves L as it is (L is never -0).
constexpr size_t kLaneMinRows = 4;  // below this the row tiles above are faster

template <bool kInt4>
constexpr size_t LaneRows() {
  return kInt4 ? 16 : 15;
}

// x of rows [m, m + rows) packed for the lanes: xp[g][k] is a zmm (16
// dwords, lane r = elements 4k..4k+3 of row m + r's group g; int8: XOR 0x80,
// lanes >= rows 0x80808080; int4: as is, lanes >= rows 0), dp[g] the rows'
// d, sp[g] (int4) their 8 sum(qx) (0 past rows).
struct LanePack {
  std::vector<uint32_t> xp;  // [groups][8][16]
  std::vector<float> dp;     // [groups][16]
  std::vector<int32_t> sp;   // [groups][16]
};
thread_local LanePack tls_lane_pack;

template <bool kInt4>
void PackLanes(const QuantizedActivations& xq, size_t m, size_t rows, size_t groups, LanePack& p) {
  const uint32_t flip = kInt4 ? 0u : 0x80808080u;
  p.xp.assign(groups * 8 * 16, flip);
  p.dp.assign(groups * 16, 0.0f);
  p.sp.assign(kInt4 ? groups * 16 : 0, 0);
  for (size_t r = 0; r < rows; ++r) {
    const uint8_t* q = reinterpret_cast<const uint8_t*>(xq.q + (m + r) * xq.ldq);
    const float* d = xq.d + (m + r) * xq.ldd;
    for (size_t g = 0; g < groups; ++g) {
      for (size_t k = 0; k < 8; ++k) {
        // Where elements 4k..4k+3 of group g are (qgemm_dot_scalar.cc's XByte).
        const size_t at =
            kInt4 ? g / 4 * 128 + (k < 4 ? 0 : 64) + g % 4 * 16 + 4 * (k % 4) : g * kGroup + 4 * k;
        uint32_t v;
        std::memcpy(&v, q + at, 4);
        p.xp[(g * 8 + k) * 16 + r] = v ^ flip;
      }
      p.dp[g * 16 + r] = d[g];
      if constexpr (kInt4) p.sp[g * 16 + r] = xq.sum8[(m + r) * xq.ldd + g];
    }
  }
}

// Columns [n, n + C) against the packed rows; writes y rows [m, m + rows).
template <bool kInt4, int C>
DSV2_AVX512_VNNI void LaneTile(const QGemmOperands& op, const LanePack& p, size_t m, size_t rows,
                               size_t n) {
  const size_t K = op.K;
  const size_t groups = QuantGroupsPerRow(K);
  const size_t full = K / kGroup;  // int8: groups with all 32 weight bytes in the row
  const __m512i lane15 = _mm512_set1_epi32(15);
  __m512 acc[C][8];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) acc[c][j] = _mm512_setzero_ps();
  }
  // The group's weight bytes as VPDPBUSD reads them: int8 as stored (or
  // zero-filled scratch), int4 as 32 nibble bytes (elements 0-15, 16-31).
  alignas(32) uint8_t wbuf[C][kGroup];
  for (size_t g0 = 0; g0 < groups; g0 += 8) {
    const size_t jn = groups - g0 < 8 ? groups - g0 : 8;
    // The 8 groups' scales of each column, as f32 (zero past the last group).
    alignas(32) float s8[C][8];
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      alignas(16) uint16_t sbuf[8] = {};
      std::memcpy(sbuf, op.scales + (n + c) * op.lds + g0, jn * sizeof(uint16_t));
      _mm256_store_ps(s8[c],
                      _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(sbuf))));
    }
#pragma GCC unroll 8
    for (size_t j = 0; j < 8; ++j) {
      if (j >= jn) break;
      const size_t g = g0 + j;
      const uint8_t* w[C];
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        if constexpr (kInt4) {
          const __m128i v = _mm_loadu_si128(
              reinterpret_cast<const __m128i*>(op.q + (n + c) * op.ldq + g * (kGroup / 2)));
          const __m128i mask = _mm_set1_epi8(0x0f);
          _mm_store_si128(reinterpret_cast<__m128i*>(wbuf[c]), _mm_and_si128(v, mask));
          _mm_store_si128(reinterpret_cast<__m128i*>(wbuf[c] + 16),
                          _mm_and_si128(_mm_srli_epi16(v, 4), mask));
          w[c] = wbuf[c];
        } else {
          w[c] = op.q + (n + c) * op.ldq + g * kGroup;
          if (g >= full) {  // the last, partial group: its bytes, zero-filled
            std::memset(wbuf[c], 0, kGroup);
            std::memcpy(wbuf[c], w[c], K - g * kGroup);
            w[c] = wbuf[c];
          }
        }
      }
      // Four independent VPDPBUSD chains per column (dwords k and k + 4),
      // so their latency overlaps; integer sums are exact in any order.
      __m512i part[C][4];
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) part[c][i] = _mm512_setzero_si512();
      }
      const uint32_t* xg = p.xp.data() + g * 8 * 16;
#pragma GCC unroll 8
      for (int k = 0; k < 8; ++k) {
        const __m512i xk = _mm512_loadu_si512(xg + k * 16);
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) {
          int32_t wd;
          std::memcpy(&wd, w[c] + 4 * k, 4);
          part[c][k % 4] = kInt4 ? _mm512_dpbusd_epi32(part[c][k % 4], _mm512_set1_epi32(wd), xk)
                                 : _mm512_dpbusd_epi32(part[c][k % 4], xk, _mm512_set1_epi32(wd));
        }
      }
      const __m512 d = _mm512_loadu_ps(p.dp.data() + g * 16);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        const __m512i sum = _mm512_add_epi32(_mm512_add_epi32(part[c][0], part[c][1]),
                                             _mm512_add_epi32(part[c][2], part[c][3]));
        const __m512i off = kInt4 ? _mm512_loadu_si512(p.sp.data() + g * 16)
                                  : _mm512_maskz_permutexvar_epi32(0xffff, lane15, sum);
        const __m512i exact = _mm512_sub_epi32(sum, off);
        const __m512 cg = _mm512_mul_ps(_mm512_set1_ps(s8[c][j]), d);
        acc[c][j] = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(0xffff, exact), cg, acc[c][j]);
      }
    }
  }
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) {
    const __m512 a0 = _mm512_add_ps(acc[c][0], acc[c][4]);
    const __m512 a1 = _mm512_add_ps(acc[c][1], acc[c][5]);
    const __m512 a2 = _mm512_add_ps(acc[c][2], acc[c][6]);
    const __m512 a3 = _mm512_add_ps(acc[c][3], acc[c][7]);
    const __m512 total = _mm512_add_ps(_mm512_add_ps(a0, a2), _mm512_add_ps(a1, a3));
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, total);
    for (size_t r = 0; r < rows; ++r) op.y[(m + r) * op.ldy + n + c] = lanes[r];
  }
}

template <bool kInt4>
DSV2_AVX512_VNNI void LaneBlock(const QGemmOperands& op, size_t m_begin, size_t m_end,
                                size_t n_begin, size_t n_end) {
  const size_t groups = QuantGroupsPerRow(op.K);
  LanePack& p = tls_lane_pack;
  for (size_t m = m_begin; m < m_end; m += LaneRows<kInt4>()) {
    const size_t rows = m_end - m < LaneRows<kInt4>() ? m_end - m : LaneRows<kInt4>();
    PackLanes<kInt4>(*op.xq, m, rows, groups, p);
    size_t n = n_begin;
    for (; n + 2 <= n_end; n += 2) LaneTile<kInt4, 2>(op, p, m, rows, n);
    if (n < n_end) LaneTile<kInt4, 1>(op, p, m, rows, n);
  }
}

// Fewer than kLaneMinRows rows (LaneBlock takes the rest).
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
  const bool lanes = m_end - m_begin >= kLaneMinRows;
  if (op.format == QuantFormat::kInt4) {
    if (lanes) {
      LaneBlock<true>(op, m_begin, m_end, n_begin, n_end);
    } else {
      Block<Int4>(op, m_begin, m_end, n_begin, n_end);
    }
  } else if (lanes) {
    LaneBlock<false>(op, m_begin, m_end, n_begin, n_end);
  } else {
    Block<Int8>(op, m_begin, m_end, n_begin, n_end);
  }
}

}  // namespace dsv2::kernels::internal
