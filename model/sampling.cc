#include "model/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"

namespace dsv2 {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  if (!(p.temperature >= 0.0f) || std::isinf(p.temperature)) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature = ", p.temperature, " must be >= 0"));
  }
  if (p.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k = ", p.top_k, " must be >= 0"));
  }
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p = ", p.top_p, " must be in (0, 1]"));
  }
  return absl::OkStatus();
}

double CounterUniform(uint64_t seed, uint64_t position) {
  const uint64_t k = SplitMix64(seed ^ 0x5851f42d4c957f2dull);
  const uint64_t bits = SplitMix64(k ^ SplitMix64(position + 0x2545f4914f6cdd1dull));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

std::vector<std::pair<int32_t, float>> TopLogits(std::span<const float> logits, size_t n) {
  std::vector<std::pair<int32_t, float>> out;
  for (int32_t id : kernels::TopKIndices(logits, std::min(n, logits.size()))) {
    out.emplace_back(id, logits[id]);
  }
  return out;
}

int32_t SampleToken(std::span<const float> logits, const SamplingParams& p, uint64_t position) {
  const size_t V = logits.size();
  if (p.temperature == 0.0f || p.top_k == 1) {
    int32_t best = 0;
    for (size_t i = 1; i < V; ++i) {
      if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
    }
    return best;
  }
  const size_t k = p.top_k > 0 ? std::min<size_t>(p.top_k, V) : V;
  const std::vector<int32_t> idx = kernels::TopKIndices(logits, k);
  // (logit - max) / T in double: never NaN, even when 1/T overflows f32
  // (a tiny temperature then degenerates to greedy, as it should).
  std::vector<double> prob(k);
  const double lmax = logits[idx[0]];
  double sum = 0.0;
  for (size_t i = 0; i < k; ++i) {
    prob[i] = std::exp((static_cast<double>(logits[idx[i]]) - lmax) / p.temperature);
    sum += prob[i];
  }
  for (double& x : prob) x /= sum;
  size_t kept = k;
  if (p.top_p < 1.0f) {
    double cum = 0.0;
    kept = 0;
    while (kept < k) {
      cum += prob[kept++];
      if (cum >= p.top_p) break;
    }
  }
  double total = 0.0;
  for (size_t i = 0; i < kept; ++i) total += prob[i];
  const double target = CounterUniform(p.seed, position) * total;
  double cum = 0.0;
  for (size_t i = 0; i < kept; ++i) {
    cum += prob[i];
    if (target < cum) return idx[i];
  }
  return idx[kept - 1];
}

TokenLogprobs ComputeLogprobs(std::span<const float> logits, int32_t token, int32_t top_n) {
  double lmax = logits[0];
  for (float x : logits) lmax = std::max(lmax, static_cast<double>(x));
  double sum = 0.0;
  for (float x : logits) sum += std::exp(static_cast<double>(x) - lmax);
  // sum >= 1 (the max contributes exp(0)), so log_sum is finite and >= 0.
  // (x - lmax) first: lmax + log_sum would lose log_sum for huge logits.
  // Two finite floats can differ by more than FLT_MAX: clamp to lowest().
  const double log_sum = std::log(sum);
  const auto logprob = [&](float x) {
    const double lp = (static_cast<double>(x) - lmax) - log_sum;
    return static_cast<float>(
        std::max(lp, static_cast<double>(std::numeric_limits<float>::lowest())));
  };
  TokenLogprobs out;
  out.token = token;
  out.logprob = logprob(logits[token]);
  if (top_n > 0) {
    for (const auto& [id, logit] : TopLogits(logits, static_cast<size_t>(top_n))) {
      out.top.emplace_back(id, logprob(logit));
    }
  }
  return out;
}

uint64_t RandomSeed() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

}  // namespace dsv2
