// WeightedRowSum (kernels/ops.h): the attention's probability-weighted sum
// of latent rows. Every path computes each element as the reference does,
// acc = acc + (p * v) in f32, t ascending, product and sum each rounded (no
// FMA: this file is compiled with -ffp-contract=off, as GCC would otherwise
// fuse the vector mul and add; the bitwise test against the reference
// shows it), so the vector paths give the reference's bits on any CPU.
//
// The vector paths keep up to 8 rows' 16 (AVX-512) or 8 (AVX2) lanes in
// registers across all t and widen each v chunk once for all of them.
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu.h"
#include "kernels/cpu/gemm_internal.h"
#include "kernels/dtype.h"
#include "kernels/ops.h"

#define DSV2_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define DSV2_AVX2 __attribute__((target("avx2")))

namespace dsv2::kernels {
namespace {

float LoadF32(const float* v, size_t i) { return v[i]; }
float LoadF32(const uint16_t* v, size_t i) { return Bf16ToF32(v[i]); }

template <typename T>
void ReferenceImpl(const float* p, size_t ldp, const T* v, size_t ldv, float* acc, size_t ldacc,
                   size_t rows, size_t n, size_t width) {
  for (size_t r = 0; r < rows; ++r) {
    float* a = acc + r * ldacc;
    for (size_t t = 0; t < n; ++t) {
      const float pt = p[r * ldp + t];
      const T* vt = v + t * ldv;
      for (size_t j = 0; j < width; ++j) a[j] += pt * LoadF32(vt, j);
    }
  }
}

// ---------------------------------------------------------------- AVX-512

DSV2_AVX512 inline __m512 LoadV512(const float* v, __mmask16 mask) {
  return _mm512_maskz_loadu_ps(mask, v);
}
DSV2_AVX512 inline __m512 LoadV512(const uint16_t* v, __mmask16 mask) {
  const __m256i h = _mm256_maskz_loadu_epi16(mask, v);
  const __m512i wide = _mm512_maskz_cvtepu16_epi32(__mmask16{0xffff}, h);
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(__mmask16{0xffff}, wide, 16));
}

// Rows [0, R) of one 16-column chunk (mask: its valid columns).
template <typename T, int R>
DSV2_AVX512 void Chunk512(const float* p, size_t ldp, const T* v, size_t ldv, float* acc,
                          size_t ldacc, size_t n, __mmask16 mask) {
  __m512 a[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) a[r] = _mm512_maskz_loadu_ps(mask, acc + r * ldacc);
  for (size_t t = 0; t < n; ++t) {
    const __m512 vt = LoadV512(v + t * ldv, mask);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      a[r] = _mm512_add_ps(a[r], _mm512_mul_ps(_mm512_set1_ps(p[r * ldp + t]), vt));
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(acc + r * ldacc, mask, a[r]);
}

template <typename T>
DSV2_AVX512 void Avx512Impl(const float* p, size_t ldp, const T* v, size_t ldv, float* acc,
                            size_t ldacc, size_t rows, size_t n, size_t width) {
  for (size_t j = 0; j < width; j += 16) {
    const size_t cols = width - j < 16 ? width - j : 16;
    const __mmask16 mask = static_cast<__mmask16>((1u << cols) - 1);
    size_t r = 0;
    for (; r + 8 <= rows; r += 8) {
      Chunk512<T, 8>(p + r * ldp, ldp, v + j, ldv, acc + r * ldacc + j, ldacc, n, mask);
    }
    if (rows - r >= 4) {
      Chunk512<T, 4>(p + r * ldp, ldp, v + j, ldv, acc + r * ldacc + j, ldacc, n, mask);
      r += 4;
    }
    if (rows - r >= 2) {
      Chunk512<T, 2>(p + r * ldp, ldp, v + j, ldv, acc + r * ldacc + j, ldacc, n, mask);
      r += 2;
    }
    if (rows - r == 1) {
      Chunk512<T, 1>(p + r * ldp, ldp, v + j, ldv, acc + r * ldacc + j, ldacc, n, mask);
    }
  }
}

// ---------------------------------------------------------------- AVX2

DSV2_AVX2 inline __m256 LoadV256(const float* v) { return _mm256_loadu_ps(v); }
DSV2_AVX2 inline __m256 LoadV256(const uint16_t* v) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

// Rows [0, R) of one full 8-column chunk.
template <typename T, int R>
DSV2_AVX2 void Chunk256(const float* p, size_t ldp, const T* v, size_t ldv, float* acc,
                        size_t ldacc, size_t n) {
  __m256 a[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) a[r] = _mm256_loadu_ps(acc + r * ldacc);
  for (size_t t = 0; t < n; ++t) {
    const __m256 vt = LoadV256(v + t * ldv);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      a[r] = _mm256_add_ps(a[r], _mm256_mul_ps(_mm256_set1_ps(p[r * ldp + t]), vt));
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(acc + r * ldacc, a[r]);
}

template <typename T>
DSV2_AVX2 void Avx2Impl(const float* p, size_t ldp, const T* v, size_t ldv, float* acc,
                        size_t ldacc, size_t rows, size_t n, size_t width) {
  const size_t full = width / 8 * 8;
  for (size_t j = 0; j < full; j += 8) {
    size_t r = 0;
    for (; r + 4 <= rows; r += 4) {
      Chunk256<T, 4>(p + r * ldp, ldp, v + j, ldv, acc + r * ldacc + j, ldacc, n);
    }
    if (rows - r >= 2) {
      Chunk256<T, 2>(p + r * ldp, ldp, v + j, ldv, acc + r * ldacc + j, ldacc, n);
      r += 2;
    }
    if (rows - r == 1) Chunk256<T, 1>(p + r * ldp, ldp, v + j, ldv, acc + r * ldacc + j, ldacc, n);
  }
  // The last width % 8 columns: the reference loop on those columns.
  if (full < width) ReferenceImpl(p, ldp, v + full, ldv, acc + full, ldacc, rows, n, width - full);
}

template <typename T>
void Dispatch(CpuIsa isa, const float* p, size_t ldp, const T* v, size_t ldv, float* acc,
              size_t ldacc, size_t rows, size_t n, size_t width) {
  switch (isa) {
    case CpuIsa::kAvx512Bf16:
    case CpuIsa::kAmx:
      return Avx512Impl(p, ldp, v, ldv, acc, ldacc, rows, n, width);
    case CpuIsa::kAvx2:
      return Avx2Impl(p, ldp, v, ldv, acc, ldacc, rows, n, width);
    case CpuIsa::kScalar:
      break;
  }
  ReferenceImpl(p, ldp, v, ldv, acc, ldacc, rows, n, width);
}

}  // namespace

void WeightedRowSumForIsa(CpuIsa isa, const float* p, size_t ldp, const void* v, DType v_dtype,
                          size_t ldv, float* acc, size_t ldacc, size_t rows, size_t n,
                          size_t width) {
  internal::CheckIsaSupported("WeightedRowSum", isa);
  if (v_dtype == DType::kF32) {
    Dispatch(isa, p, ldp, static_cast<const float*>(v), ldv, acc, ldacc, rows, n, width);
  } else {
    Dispatch(isa, p, ldp, static_cast<const uint16_t*>(v), ldv, acc, ldacc, rows, n, width);
  }
}

void WeightedRowSum(const float* p, size_t ldp, const void* v, DType v_dtype, size_t ldv,
                    float* acc, size_t ldacc, size_t rows, size_t n, size_t width) {
  // The same bits on every ISA, so the best one (CPUID cached by BestCpuIsa).
  static const CpuIsa best = BestCpuIsa();
  WeightedRowSumForIsa(best, p, ldp, v, v_dtype, ldv, acc, ldacc, rows, n, width);
}

void WeightedRowSumReference(const float* p, size_t ldp, const void* v, DType v_dtype, size_t ldv,
                             float* acc, size_t ldacc, size_t rows, size_t n, size_t width) {
  if (v_dtype == DType::kF32) {
    ReferenceImpl(p, ldp, static_cast<const float*>(v), ldv, acc, ldacc, rows, n, width);
  } else {
    ReferenceImpl(p, ldp, static_cast<const uint16_t*>(v), ldv, acc, ldacc, rows, n, width);
  }
}

}  // namespace dsv2::kernels
