// AVX-512 kernels (CpuIsa::kAvx512Bf16): AVX-512F FMA for f32 weights and
// for bf16 weights with f32 x (XValues::kF32: weights widened to f32), and
// AVX-512 BF16 VDPBF16PS for bf16 weights with bf16-exact x
// (XValues::kBf16Exact, the activations of bf16 models).
//
// Reduction pattern, per Y element (the same in every tile shape below):
// one 16-lane f32 accumulator, then the fixed tree of HorizontalSum16 (simd_internal.h).
//   f32 weights: lane j takes k = j, j + 16, ... in ascending k, one FMA per
//     16-wide step; a K % 16 tail is one more FMA on zero-padded x and w.
//   bf16 weights, kF32 x: as f32 weights (16-wide FMA steps, zero-padded
//     tail), each weight widened exactly to f32.
//   bf16 weights, kBf16Exact x: x is converted to bf16 (exact for such x). Lane j takes the k pairs
//     (32 s + 2 j, 32 s + 2 j + 1) for s ascending, one VDPBF16PS per
//     32-wide step; a K % 32 tail is one more VDPBF16PS on zero-padded x and
//     w. VDPBF16PS treats bf16 denormal inputs as zero and flushes denormal
//     results, whatever MXCSR says; its internal rounding is the
//     hardware's, so this ISA's bits are only defined per CPU family (all
//     processes of a cluster must run the same ISA on like CPUs anyway).
//
// Tiles: GEMV streams 8 weight rows at once; GEMM uses 4 rows x 4 columns
// (16 of the 32 zmm registers as accumulators).
//
// No file-wide -mavx512*: each function carries DSV2_AVX512 and has internal
// linkage (see gemm_internal.h). This file is only compiled, never run, on
// CPUs without AVX-512 BF16; gemm.cc never calls it there.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cpu/gemm_internal.h"
#include "kernels/cpu/simd_internal.h"

#define DSV2_AVX512 __attribute__((target("avx512f,avx512bw,avx512bf16")))

namespace dsv2::kernels::internal {
namespace {

// x rows in bf16 for the bf16-weight path; one buffer per thread, reused
// across calls (grows to 64 rows of the largest K seen).
thread_local std::vector<uint16_t> tls_x_bf16;

// f32 weights: 16 elements per step.
struct F32Step {
  using W = float;
  using X = float;
  static constexpr size_t kWidth = 16;
  DSV2_AVX512 static __m512 LoadX(const float* p) { return _mm512_loadu_ps(p); }
  DSV2_AVX512 static __m512 LoadW(const float* p) { return _mm512_loadu_ps(p); }
  DSV2_AVX512 static __m512 LoadXTail(const float* p, size_t n) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
  }
  DSV2_AVX512 static __m512 LoadWTail(const float* p, size_t n) { return LoadXTail(p, n); }
  DSV2_AVX512 static __m512 Madd(__m512 acc, __m512 x, __m512 w) {
    return _mm512_fmadd_ps(x, w, acc);
  }
};

// bf16 weights and bf16-rounded x: 32 elements (16 pairs) per step.
struct Bf16Step {
  using W = uint16_t;
  using X = uint16_t;
  static constexpr size_t kWidth = 32;
  DSV2_AVX512 static __m512i LoadX(const uint16_t* p) { return _mm512_loadu_si512(p); }
  DSV2_AVX512 static __m512i LoadW(const uint16_t* p) { return _mm512_loadu_si512(p); }
  DSV2_AVX512 static __m512i LoadXTail(const uint16_t* p, size_t n) {
    return _mm512_maskz_loadu_epi16(static_cast<__mmask32>((uint64_t{1} << n) - 1), p);
  }
  DSV2_AVX512 static __m512i LoadWTail(const uint16_t* p, size_t n) { return LoadXTail(p, n); }
  DSV2_AVX512 static __m512 Madd(__m512 acc, __m512i x, __m512i w) {
    return _mm512_dpbf16_ps(acc, (__m512bh)x, (__m512bh)w);
  }
};

// bf16 weights widened to f32 and f32 x (XValues::kF32): 16 elements per
// step with FMA, so x keeps its full precision.
struct Bf16WidenStep {
  using W = uint16_t;
  using X = float;
  static constexpr size_t kWidth = 16;
  // The all-ones maskz forms: the unmasked intrinsics use an undefined
  // source that trips GCC 12's -Wmaybe-uninitialized (PR105593).
  DSV2_AVX512 static __m512 Widen(__m256i h) {
    const __m512i wide = _mm512_maskz_cvtepu16_epi32(__mmask16{0xffff}, h);
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(__mmask16{0xffff}, wide, 16));
  }
  DSV2_AVX512 static __m512 LoadX(const float* p) { return _mm512_loadu_ps(p); }
  DSV2_AVX512 static __m512 LoadW(const uint16_t* p) {
    return Widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  DSV2_AVX512 static __m512 LoadXTail(const float* p, size_t n) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
  }
  // Tail of n < 16 weights, zero-padded (runs once per output element).
  DSV2_AVX512 static __m512 LoadWTail(const uint16_t* p, size_t n) {
    alignas(32) uint16_t tmp[16] = {};
    std::memcpy(tmp, p, n * sizeof(uint16_t));
    return Widen(_mm256_load_si256(reinterpret_cast<const __m256i*>(tmp)));
  }
  DSV2_AVX512 static __m512 Madd(__m512 acc, __m512 x, __m512 w) {
    return _mm512_fmadd_ps(x, w, acc);
  }
};

// Y[r, c] for r < R, c < C (see gemm_avx2.cc's Tile).
template <typename S, int R, int C>
DSV2_AVX512 void Tile(const typename S::X* x, size_t ldx, const typename S::W* w, size_t ldw,
                      float* y, size_t ldy, size_t K) {
  __m512 acc[R][C];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 32
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  }
  size_t k = 0;
  for (; k + S::kWidth <= K; k += S::kWidth) {
    decltype(S::LoadW(w)) wv[C];
#pragma GCC unroll 32
    for (int c = 0; c < C; ++c) wv[c] = S::LoadW(w + c * ldw + k);
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const auto xv = S::LoadX(x + r * ldx + k);
#pragma GCC unroll 32
      for (int c = 0; c < C; ++c) acc[r][c] = S::Madd(acc[r][c], xv, wv[c]);
    }
  }
  if (k < K) {
    const size_t n = K - k;
    decltype(S::LoadW(w)) wv[C];
#pragma GCC unroll 32
    for (int c = 0; c < C; ++c) wv[c] = S::LoadWTail(w + c * ldw + k, n);
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const auto xv = S::LoadXTail(x + r * ldx + k, n);
#pragma GCC unroll 32
      for (int c = 0; c < C; ++c) acc[r][c] = S::Madd(acc[r][c], xv, wv[c]);
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 32
    for (int c = 0; c < C; ++c) y[r * ldy + c] = HorizontalSum16(acc[r][c]);
  }
}

// Tile<S, R, c> for a run-time c in [1, 8] (c <= 4 for R > 1).
template <typename S, int R>
DSV2_AVX512 void TileCols(int c, const typename S::X* x, size_t ldx, const typename S::W* w,
                          size_t ldw, float* y, size_t ldy, size_t K) {
  if constexpr (R == 1) {
    switch (c) {
      case 8:
        return Tile<S, 1, 8>(x, ldx, w, ldw, y, ldy, K);
      case 7:
        return Tile<S, 1, 7>(x, ldx, w, ldw, y, ldy, K);
      case 6:
        return Tile<S, 1, 6>(x, ldx, w, ldw, y, ldy, K);
      case 5:
        return Tile<S, 1, 5>(x, ldx, w, ldw, y, ldy, K);
    }
  }
  switch (c) {
    case 4:
      return Tile<S, R, 4>(x, ldx, w, ldw, y, ldy, K);
    case 3:
      return Tile<S, R, 3>(x, ldx, w, ldw, y, ldy, K);
    case 2:
      return Tile<S, R, 2>(x, ldx, w, ldw, y, ldy, K);
    case 1:
      return Tile<S, R, 1>(x, ldx, w, ldw, y, ldy, K);
  }
}

// x: the block's rows (row 0 = Y row m_begin), row stride ldx; y likewise.
template <typename S>
DSV2_AVX512 void Block(const typename S::X* x, size_t ldx, const typename S::W* w, size_t ldw,
                       float* y, size_t ldy, size_t K, size_t rows, size_t n_begin, size_t n_end) {
  if (rows == 1) {
    for (size_t n = n_begin; n < n_end; n += 8) {
      const int c = static_cast<int>(n_end - n < 8 ? n_end - n : 8);
      TileCols<S, 1>(c, x, 0, w + n * ldw, ldw, y + n, 0, K);
    }
    return;
  }
  // The 4 weight rows of a column tile stay in L1 while the block's x rows
  // stream past them.
  for (size_t n = n_begin; n < n_end; n += 4) {
    const int c = static_cast<int>(n_end - n < 4 ? n_end - n : 4);
    const typename S::W* wt = w + n * ldw;
    size_t m = 0;
    for (; m + 4 <= rows; m += 4) {
      TileCols<S, 4>(c, x + m * ldx, ldx, wt, ldw, y + m * ldy + n, ldy, K);
    }
    switch (rows - m) {
      case 3:
        TileCols<S, 3>(c, x + m * ldx, ldx, wt, ldw, y + m * ldy + n, ldy, K);
        break;
      case 2:
        TileCols<S, 2>(c, x + m * ldx, ldx, wt, ldw, y + m * ldy + n, ldy, K);
        break;
      case 1:
        TileCols<S, 1>(c, x + m * ldx, ldx, wt, ldw, y + m * ldy + n, ldy, K);
        break;
    }
  }
}

// Rounds rows x [rows, K] (stride ldx) to bf16 into dst [rows, K] (stride K),
// round to nearest even, NaN kept quiet (as dtype.h's F32ToBf16). Cheap
// next to the block's K * rows * columns multiply-adds, so kept scalar.
void RoundRowsToBf16(const float* x, size_t ldx, size_t rows, size_t K, uint16_t* dst) {
  for (size_t r = 0; r < rows; ++r) {
    const float* src = x + r * ldx;
    uint16_t* out = dst + r * K;
    for (size_t k = 0; k < K; ++k) out[k] = F32ToBf16(src[k]);
  }
}

}  // namespace

void GemmBlockAvx512(const GemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                     size_t n_end) {
  const size_t rows = m_end - m_begin;
  float* y = op.y + m_begin * op.ldy;
  if (op.w_dtype == DType::kBF16 && !op.x_bf16_exact) {
    Block<Bf16WidenStep>(op.x + m_begin * op.ldx, op.ldx, static_cast<const uint16_t*>(op.w),
                         op.ldw, y, op.ldy, op.K, rows, n_begin, n_end);
  } else if (op.w_dtype == DType::kBF16) {
    // At most kRowsPerChunk rows converted at a time bounds the buffer; the
    // chunking changes no element's arithmetic.
    constexpr size_t kRowsPerChunk = 64;
    std::vector<uint16_t>& xb = tls_x_bf16;
    const size_t chunk_rows = rows < kRowsPerChunk ? rows : kRowsPerChunk;
    if (xb.size() < chunk_rows * op.K) xb.resize(chunk_rows * op.K);
    for (size_t m = 0; m < rows; m += kRowsPerChunk) {
      const size_t r = rows - m < kRowsPerChunk ? rows - m : kRowsPerChunk;
      RoundRowsToBf16(op.x + (m_begin + m) * op.ldx, op.ldx, r, op.K, xb.data());
      Block<Bf16Step>(xb.data(), op.K, static_cast<const uint16_t*>(op.w), op.ldw, y + m * op.ldy,
                      op.ldy, op.K, r, n_begin, n_end);
    }
  } else {
    Block<F32Step>(op.x + m_begin * op.ldx, op.ldx, static_cast<const float*>(op.w), op.ldw, y,
                   op.ldy, op.K, rows, n_begin, n_end);
  }
}

}  // namespace dsv2::kernels::internal
