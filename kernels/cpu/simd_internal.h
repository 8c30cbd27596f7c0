// Private to kernels/cpu: the horizontal sums that end every vector
// reduction, shared by the f32/bf16 and the quantized kernels so that each
// ISA has one lane tree.
//
// Like every vector function in kernels/cpu (see gemm_internal.h), these
// carry their own target attribute and have internal linkage (static), so
// including this header compiles nothing for a newer ISA into a file that
// does not call them.
#ifndef DSV2_KERNELS_CPU_SIMD_INTERNAL_H_
#define DSV2_KERNELS_CPU_SIMD_INTERNAL_H_

#include <immintrin.h>

namespace dsv2::kernels::internal {

// The 8 lanes summed in the fixed tree ((l0 + l4) + (l2 + l6)) +
// ((l1 + l5) + (l3 + l7)).
__attribute__((target("avx2"))) static inline float HorizontalSum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));  // l_i + l_i+4
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));  // (l0+l4)+(l2+l6), (l1+l5)+(l3+l7)
  s = _mm_add_ss(s, _mm_movehdup_ps(s));   // lane 0 + lane 1
  return _mm_cvtss_f32(s);
}

// The 16 lanes summed in the fixed tree
//   (((l0+l8) + (l4+l12)) + ((l2+l10) + (l6+l14))) +
//   (((l1+l9) + (l5+l13)) + ((l3+l11) + (l7+l15))),
// i.e. the 8-lane tree applied to the pairwise sums of the two 256-bit halves.
// Done on stored lanes: GCC 12's 512->256-bit cast and extract intrinsics
// trip -Werror=uninitialized (GCC PR105593), and this runs once per output.
__attribute__((target("avx512f"))) static inline float HorizontalSum16(__m512 v) {
  alignas(64) float l[16];
  _mm512_store_ps(l, v);
  float h[8];
  for (int i = 0; i < 8; ++i) h[i] = l[i] + l[i + 8];
  return ((h[0] + h[4]) + (h[2] + h[6])) + ((h[1] + h[5]) + (h[3] + h[7]));
}

}  // namespace dsv2::kernels::internal

#endif  // DSV2_KERNELS_CPU_SIMD_INTERNAL_H_
