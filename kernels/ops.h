// Element-wise and row-wise CPU kernels of the forward pass: RMSNorm,
// softmax, SwiGLU, rotary embedding (YaRN tables) and the weighted row sum
// of attention. All math in fp32; `act` is the activation dtype whose
// rounding the caller models (see dtype.h). Each kernel processes one row
// (or one row set) with a fixed reduction order, so results are
// independent of batch composition and thread count (DESIGN.md section 7).
// Pure functions over pointers + sizes; thread-safe.
#ifndef DSV2_KERNELS_OPS_H_
#define DSV2_KERNELS_OPS_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/dtype.h"

namespace dsv2::kernels {

// MODEL_SPEC section 3: out = w * act(x / sqrt(mean(x^2) + eps)), result
// rounded to `act`. x and out are [n] f32 and may alias; w is [n] f32.
void RmsNorm(const float* x, const float* w, size_t n, float eps, DType act, float* out);

// In-place softmax over [n] in fp32 (max-subtracted, sum in index order).
void Softmax(float* x, size_t n);

// out[i] = act(act(silu(gate[i])) * up[i]): the SwiGLU product of
// MODEL_SPEC section 3 with PyTorch's rounding points (gate/up already in
// `act`). out may alias gate or up.
void SwiGlu(const float* gate, const float* up, size_t n, DType act, float* out);

// yarn_mscale(s, a) = 1 if s <= 1 else 0.1 a ln(s) + 1 (MODEL_SPEC section 4).
double YarnMscale(double scale, double mscale);

// Indices of the k largest of v, ordered by value descending then index
// ascending (ties go to the lower index). REQUIRES: k <= v.size().
std::vector<int32_t> TopKIndices(std::span<const float> v, size_t k);

// Rotary embedding tables: inv_freq[i] for i < rope_dim / 2 and the
// amplitude `attention_scaling` (MODEL_SPEC section 6). Computed in fp32
// exactly as transformers' rope init functions do.
struct RopeTable {
  std::vector<float> inv_freq;
  float attention_scaling = 1.0f;
};
struct YarnParams {
  float theta = 10000.f;
  float factor = 1.f;
  double original_max_position_embeddings = 0;
  double beta_fast = 32, beta_slow = 1;
  double mscale = 0, mscale_all_dim = 0;
  bool has_attention_factor = false;
  double attention_factor = 1;
  bool truncate = true;
};
RopeTable DefaultRopeTable(size_t rope_dim, float theta);
RopeTable YarnRopeTable(size_t rope_dim, const YarnParams& p);

// Rotates x [rope_dim] (pairs (x[2i], x[2i+1]), the interleaved layout of
// transformers 5.x) for position `pos` in place; result rounded to `act`.
void ApplyRope(const RopeTable& table, int64_t pos, float* x, size_t rope_dim, DType act);

// acc[r, :] += sum_{t < n} p[r, t] * v[t, :] for r < rows, t ascending
// (one fixed order per element: acc = acc + p * v, the product rounded to
// f32, then the sum; no FMA).
//   p:   f32 [rows, n], row stride ldp.
//   v:   [n, width] in v_dtype (kF32 or kBF16), row stride ldv.
//   acc: f32 [rows, width], row stride ldacc.
// Runs AVX-512 or AVX2 code where the CPU has it (vectorised across the
// width, v read once for all rows): bitwise the same on every CPU, since
// each element's operations are the reference's.
void WeightedRowSum(const float* p, size_t ldp, const void* v, DType v_dtype, size_t ldv,
                    float* acc, size_t ldacc, size_t rows, size_t n, size_t width);
// The scalar reference WeightedRowSum is tested against (bitwise).
void WeightedRowSumReference(const float* p, size_t ldp, const void* v, DType v_dtype, size_t ldv,
                             float* acc, size_t ldacc, size_t rows, size_t n, size_t width);

}  // namespace dsv2::kernels

#endif  // DSV2_KERNELS_OPS_H_
