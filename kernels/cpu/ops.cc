#include "kernels/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>
#include <numeric>

namespace dsv2::kernels {

void RmsNorm(const float* x, const float* w, size_t n, float eps, DType act, float* out) {
  float sum_sq = 0.f;
  for (size_t i = 0; i < n; ++i) sum_sq += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(sum_sq / static_cast<float>(n) + eps);
  for (size_t i = 0; i < n; ++i) {
    float normed = x[i] * inv;
    if (act == DType::kBF16) normed = RoundToBf16(normed);
    out[i] = w[i] * normed;
  }
  RoundInPlace(out, n, act);
}

void Softmax(float* x, size_t n) {
  if (n == 0) return;
  float m = x[0];
  for (size_t i = 1; i < n; ++i) m = std::max(m, x[i]);
  float sum = 0.f;
  for (size_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  for (size_t i = 0; i < n; ++i) x[i] *= inv;
}

void SwiGlu(const float* gate, const float* up, size_t n, DType act, float* out) {
  for (size_t i = 0; i < n; ++i) {
    const float g = gate[i];
    float s = g / (1.0f + std::exp(-g));
    if (act == DType::kBF16) s = RoundToBf16(s);
    out[i] = s * up[i];
  }
  RoundInPlace(out, n, act);
}

RopeTable DefaultRopeTable(size_t rope_dim, float theta) {
  RopeTable t;
  for (size_t i = 0; i < rope_dim / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(rope_dim);
    t.inv_freq.push_back(1.0f / std::pow(theta, e));
  }
  return t;
}

double YarnMscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

std::vector<int32_t> TopKIndices(std::span<const float> v, size_t k) {
  std::vector<int32_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
    return v[a] > v[b] || (v[a] == v[b] && a < b);
  });
  idx.resize(k);
  return idx;
}

namespace {
double CorrectionDim(double rotations, double dim, double base, double orig_max) {
  return dim * std::log(orig_max / (rotations * 2 * std::numbers::pi)) / (2 * std::log(base));
}
}  // namespace

RopeTable YarnRopeTable(size_t rope_dim, const YarnParams& p) {
  RopeTable t;
  const double dim = static_cast<double>(rope_dim);
  double low = CorrectionDim(p.beta_fast, dim, p.theta, p.original_max_position_embeddings);
  double high = CorrectionDim(p.beta_slow, dim, p.theta, p.original_max_position_embeddings);
  if (p.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, dim - 1);
  if (low == high) high += 0.001;
  // transformers computes the ramp and frequencies in fp32.
  const float lowf = static_cast<float>(low), highf = static_cast<float>(high);
  for (size_t i = 0; i < rope_dim / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(rope_dim);
    const float pos_freq = std::pow(p.theta, e);
    const float extra = 1.0f / pos_freq;
    const float inter = 1.0f / (p.factor * pos_freq);
    const float ramp = std::clamp((static_cast<float>(i) - lowf) / (highf - lowf), 0.0f, 1.0f);
    const float extra_factor = 1.0f - ramp;
    t.inv_freq.push_back(inter * (1.0f - extra_factor) + extra * extra_factor);
  }
  double a;
  if (p.has_attention_factor) {
    a = p.attention_factor;
  } else if (p.mscale != 0 && p.mscale_all_dim != 0) {
    a = YarnMscale(p.factor, p.mscale) / YarnMscale(p.factor, p.mscale_all_dim);
  } else {
    a = YarnMscale(p.factor, 1.0);
  }
  t.attention_scaling = static_cast<float>(a);
  return t;
}

void ApplyRope(const RopeTable& table, int64_t pos, float* x, size_t rope_dim, DType act) {
  const float fpos = static_cast<float>(pos);
  for (size_t i = 0; i < rope_dim / 2; ++i) {
    const float angle = fpos * table.inv_freq[i];
    const float c = std::cos(angle) * table.attention_scaling;
    const float s = std::sin(angle) * table.attention_scaling;
    const float x0 = x[2 * i], x1 = x[2 * i + 1];
    x[2 * i] = x0 * c - x1 * s;
    x[2 * i + 1] = x0 * s + x1 * c;
  }
  RoundInPlace(x, rope_dim, act);
}

}  // namespace dsv2::kernels
