// AVX2 + FMA kernels (CpuIsa::kAvx2) for f32 and bf16 weights.
//
// Reduction pattern, per Y element (the same in every tile shape below):
// one 8-lane f32 accumulator; lane j takes k = j, j + 8, j + 16, ... in
// ascending k with one FMA per 8-wide step; a K % 8 tail is one more FMA
// on zero-padded x and w; then the fixed tree
// ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)) (HorizontalSum8).
// bf16 weights are widened exactly (bf16 bits << 16) before the FMA.
//
// Tiles: R rows x C columns of independent accumulators. GEMV (one row)
// streams 8 weight rows at once (8 FMA chains hide the FMA latency, 8
// sequential streams keep the prefetchers busy); GEMM uses 4 x 3 (12
// accumulators + 3 weight vectors + 1 x vector = the 16 ymm registers), so
// each weight vector loaded and widened once feeds 4 rows. On one core
// (Zen 3, N = K = 2048, W in cache) the 4 x 3 tile runs at ~95% of the FMA
// peak for bf16 and ~85% for f32; a bf16 GEMV streams ~25 GB/s from L3.
//
// No file-wide -mavx2: each function carries DSV2_AVX2 and has internal
// linkage (see gemm_internal.h).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/cpu/gemm_internal.h"
#include "kernels/cpu/simd_internal.h"

#define DSV2_AVX2 __attribute__((target("avx2,fma")))

namespace dsv2::kernels::internal {
namespace {

DSV2_AVX2 inline __m256 Load8(const float* p) { return _mm256_loadu_ps(p); }

DSV2_AVX2 inline __m256 Load8(const uint16_t* p) {
  const __m128i bf16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bf16), 16));
}

// The first n (< 8) elements at p, zeros above; reads nothing past p + n.
DSV2_AVX2 inline __m256 LoadTail(const float* p, size_t n) {
  alignas(32) static const int32_t kMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                0,  0,  0,  0,  0,  0,  0,  0};
  const __m256i mask = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMask + 8 - n));
  return _mm256_maskload_ps(p, mask);
}

DSV2_AVX2 inline __m256 LoadTail(const uint16_t* p, size_t n) {
  uint16_t buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(buf, p, n * sizeof(uint16_t));
  return Load8(buf);
}

// Y[r, c] for r < R, c < C at y (row stride ldy); x rows at stride ldx,
// w rows at stride ldw. For R > 1, a non-null `w_next` (C rows at stride
// ldw) is prefetched into L2 along the way, one 64-byte line per row per
// line of w consumed, so the next column tile's weights arrive from DRAM
// while this tile computes.
template <typename W, int R, int C>
DSV2_AVX2 void Tile(const float* x, size_t ldx, const W* w, const W* w_next, size_t ldw, float* y,
                    size_t ldy, size_t K) {
  __m256 acc[R][C];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 32
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  }
  size_t k = 0;
  if constexpr (R == 1) {
    // One row: each weight vector is used once, so load it right at its FMA
    // (8 accumulators + x + a temporary fit the 16 registers; loading all C
    // first would spill an accumulator).
    for (; k + 8 <= K; k += 8) {
      const __m256 xv = _mm256_loadu_ps(x + k);
#pragma GCC unroll 32
      for (int c = 0; c < C; ++c)
        acc[0][c] = _mm256_fmadd_ps(xv, Load8(w + c * ldw + k), acc[0][c]);
    }
  } else {
    constexpr size_t kLineElems = 64 / sizeof(W);
    for (; k + 8 <= K; k += 8) {
      if (w_next != nullptr && k % kLineElems == 0) {
#pragma GCC unroll 32
        for (int c = 0; c < C; ++c) {
          _mm_prefetch(reinterpret_cast<const char*>(w_next + c * ldw + k), _MM_HINT_T1);
        }
      }
      __m256 wv[C];
#pragma GCC unroll 32
      for (int c = 0; c < C; ++c) wv[c] = Load8(w + c * ldw + k);
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r) {
        const __m256 xv = _mm256_loadu_ps(x + r * ldx + k);
#pragma GCC unroll 32
        for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
      }
    }
  }
  if (k < K) {
    const size_t n = K - k;
    __m256 wv[C];
#pragma GCC unroll 32
    for (int c = 0; c < C; ++c) wv[c] = LoadTail(w + c * ldw + k, n);
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const __m256 xv = LoadTail(x + r * ldx + k, n);
#pragma GCC unroll 32
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 32
    for (int c = 0; c < C; ++c) y[r * ldy + c] = HorizontalSum8(acc[r][c]);
  }
}

// Tile<W, R, c> for a run-time c in [1, 8] (R * c <= 12 for R > 1).
template <typename W, int R>
DSV2_AVX2 void TileCols(int c, const float* x, size_t ldx, const W* w, const W* w_next, size_t ldw,
                        float* y, size_t ldy, size_t K) {
  if constexpr (R == 1) {
    switch (c) {
      case 8:
        return Tile<W, 1, 8>(x, ldx, w, w_next, ldw, y, ldy, K);
      case 7:
        return Tile<W, 1, 7>(x, ldx, w, w_next, ldw, y, ldy, K);
      case 6:
        return Tile<W, 1, 6>(x, ldx, w, w_next, ldw, y, ldy, K);
      case 5:
        return Tile<W, 1, 5>(x, ldx, w, w_next, ldw, y, ldy, K);
      case 4:
        return Tile<W, 1, 4>(x, ldx, w, w_next, ldw, y, ldy, K);
    }
  }
  switch (c) {
    case 3:
      return Tile<W, R, 3>(x, ldx, w, w_next, ldw, y, ldy, K);
    case 2:
      return Tile<W, R, 2>(x, ldx, w, w_next, ldw, y, ldy, K);
    case 1:
      return Tile<W, R, 1>(x, ldx, w, w_next, ldw, y, ldy, K);
  }
}

template <typename W>
DSV2_AVX2 void Block(const GemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                     size_t n_end) {
  const W* w = static_cast<const W*>(op.w);
  const size_t K = op.K;
  if (m_end - m_begin == 1) {
    const float* x = op.x + m_begin * op.ldx;
    float* y = op.y + m_begin * op.ldy;
    for (size_t n = n_begin; n < n_end; n += 8) {
      const int c = static_cast<int>(n_end - n < 8 ? n_end - n : 8);
      TileCols<W, 1>(c, x, 0, w + n * op.ldw, nullptr, op.ldw, y + n, 0, K);
    }
    return;
  }
  // The 3 weight rows of a column tile stay in L1 while the x rows of the
  // block (sized by gemm.cc to fit L2) stream past them.
  for (size_t n = n_begin; n < n_end; n += 3) {
    const int c = static_cast<int>(n_end - n < 3 ? n_end - n : 3);
    const W* wt = w + n * op.ldw;
    // Prefetch the next full column tile while this one computes, only for
    // few rows: then the weights come from DRAM once and compute does not
    // hide their latency. With more rows the tile is compute-bound and the
    // prefetches only cost load slots and L2 space (measured: -10% hot).
    const W* wn = m_end - m_begin <= 8 && n + 6 <= n_end ? wt + 3 * op.ldw : nullptr;
    size_t m = m_begin;
    for (; m + 4 <= m_end; m += 4) {
      TileCols<W, 4>(c, op.x + m * op.ldx, op.ldx, wt, wn, op.ldw, op.y + m * op.ldy + n, op.ldy,
                     K);
    }
    const float* x = op.x + m * op.ldx;
    float* y = op.y + m * op.ldy + n;
    switch (m_end - m) {
      case 3:
        TileCols<W, 3>(c, x, op.ldx, wt, wn, op.ldw, y, op.ldy, K);
        break;
      case 2:
        TileCols<W, 2>(c, x, op.ldx, wt, wn, op.ldw, y, op.ldy, K);
        break;
      // A single row goes through the GEMV tiles (no prefetch there).
      case 1:
        TileCols<W, 1>(c, x, op.ldx, wt, wn, op.ldw, y, op.ldy, K);
        break;
    }
  }
}

}  // namespace

void GemmBlockAvx2(const GemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                   size_t n_end) {
  if (op.w_dtype == DType::kBF16) {
    Block<uint16_t>(op, m_begin, m_end, n_begin, n_end);
  } else {
    Block<float>(op, m_begin, m_end, n_begin, n_end);
  }
}

}  // namespace dsv2::kernels::internal
