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

namespace {

int32_t Greedy(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

// The candidates' order: logit descending, then id ascending.
struct Precedes {
  std::span<const float> logits;
  bool operator()(int32_t a, int32_t b) const {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  }
};

// `ids` taken in the candidates' order with masses w[id]: the position of
// the first at which the running sum reaches `threshold` (>= when
// `inclusive`, > otherwise; the last one if rounding never lets it).
// Quickselect, expected O(n) instead of a sort: halves around a median
// (std::nth_element), keeps the half the threshold falls in, sorts the
// last few. Reorders `ids` so that ids[0..pos] are the first pos + 1
// candidates (as a set).
size_t FirstReaching(std::span<int32_t> ids, const std::vector<double>& w, double threshold,
                     bool inclusive, const Precedes& precedes) {
  const auto reaches = [&](double cum) { return inclusive ? cum >= threshold : cum > threshold; };
  size_t lo = 0, hi = ids.size();
  double acc = 0.0;
  while (hi - lo > 32) {
    const size_t mid = lo + (hi - lo) / 2;
    std::nth_element(ids.begin() + lo, ids.begin() + mid, ids.begin() + hi, precedes);
    double mass = 0.0;
    for (size_t i = lo; i <= mid; ++i) mass += w[ids[i]];
    if (reaches(acc + mass)) {
      hi = mid + 1;
    } else {
      acc += mass;
      lo = mid + 1;
    }
  }
  std::sort(ids.begin() + lo, ids.begin() + hi, precedes);
  for (size_t i = lo; i < hi; ++i) {
    acc += w[ids[i]];
    if (reaches(acc)) return i;
  }
  return hi - 1;
}

}  // namespace

int32_t SampleToken(std::span<const float> logits, const SamplingParams& p, uint64_t position) {
  const size_t V = logits.size();
  if (p.temperature == 0.0f || p.top_k == 1) return Greedy(logits);
  const Precedes precedes{logits};
  std::vector<int32_t> ids(V);
  std::iota(ids.begin(), ids.end(), 0);
  // Top-k: the k first candidates as a set (their order does not matter
  // to the selections below).
  const size_t k = p.top_k > 0 ? std::min<size_t>(p.top_k, V) : V;
  if (k < V) std::nth_element(ids.begin(), ids.begin() + (k - 1), ids.end(), precedes);
  std::span<int32_t> kept(ids.data(), k);
  // Unnormalised softmax(logit / T) in double from logit - max (see the
  // header); indexed by id.
  const double lmax = logits[Greedy(logits)];
  std::vector<double> w(V, 0.0);
  double sum = 0.0;
  for (int32_t id : kept) {
    w[id] = std::exp((static_cast<double>(logits[id]) - lmax) / p.temperature);
    sum += w[id];
  }
  if (p.top_p < 1.0f) {
    kept = kept.first(FirstReaching(kept, w, static_cast<double>(p.top_p) * sum,
                                    /*inclusive=*/true, precedes) +
                      1);
    sum = 0.0;
    for (int32_t id : kept) sum += w[id];
  }
  const double target = CounterUniform(p.seed, position) * sum;
  return kept[FirstReaching(kept, w, target, /*inclusive=*/false, precedes)];
}

int32_t SampleTokenBySorting(std::span<const float> logits, const SamplingParams& p,
                             uint64_t position) {
  const size_t V = logits.size();
  if (p.temperature == 0.0f || p.top_k == 1) return Greedy(logits);
  const size_t k = p.top_k > 0 ? std::min<size_t>(p.top_k, V) : V;
  const std::vector<int32_t> idx = kernels::TopKIndices(logits, k);
  std::vector<double> prob(k);
  const double lmax = logits[idx[0]];
  double sum = 0.0;
  for (size_t i = 0; i < k; ++i) {
    prob[i] = std::exp((static_cast<double>(logits[idx[i]]) - lmax) / p.temperature);
    sum += prob[i];
  }
  size_t kept = k;
  if (p.top_p < 1.0f) {
    double cum = 0.0;
    kept = 0;
    while (kept < k) {
      cum += prob[kept++];
      if (cum >= static_cast<double>(p.top_p) * sum) break;
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
