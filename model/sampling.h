// Token sampling: temperature, then top-k, then top-p, in fp32, ties to the
// lower token id; temperature 0 is greedy (argmax, ties to the lower id).
//
// Randomness comes from a counter-based generator keyed by (seed, output
// position): the u in [0, 1) used for the token at output position i is a
// pure function of (seed, i), so a seeded request produces the same tokens
// whatever its batch, node or resumption point (DESIGN.md section 7).
// Pure functions; thread-safe.
#ifndef DSV2_MODEL_SAMPLING_H_
#define DSV2_MODEL_SAMPLING_H_

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace dsv2 {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy; must be >= 0
  int32_t top_k = 0;         // 0 = no limit
  float top_p = 1.0f;        // in (0, 1]
  uint64_t seed = 0;
};

// InvalidArgument naming the field for temperature < 0, top_k < 0, top_p
// outside (0, 1].
absl::Status ValidateSamplingParams(const SamplingParams& p);

// Uniform in [0, 1) from (seed, position): a splitmix64 hash of the seed
// mixed with a splitmix64 hash of the position; 53 random bits.
double CounterUniform(uint64_t seed, uint64_t position);

// Picks the token for output position `position` from raw logits [V].
// Candidates sorted by logit descending, then id ascending; top-k keeps the
// first k; probabilities are softmax(logit / T) over the kept set
// (computed in double from logit - max, so no temperature gives NaN); top-p
// keeps the shortest prefix whose cumulative probability reaches top_p (at
// least one token); sampling inverts the cumulative sum of the kept
// (renormalised) probabilities at CounterUniform(seed, position).
// Expected O(V) (selections, no sort of the vocabulary): the same token as
// SampleTokenBySorting but where float rounding of the sums, accumulated
// in another order, puts a threshold within an ulp of a boundary.
int32_t SampleToken(std::span<const float> logits, const SamplingParams& p, uint64_t position);

// The definition above executed literally (every candidate sorted,
// O(V log V)): the reference SampleToken is tested against.
int32_t SampleTokenBySorting(std::span<const float> logits, const SamplingParams& p,
                             uint64_t position);

// The n largest logits as (id, logit), by logit descending then id ascending.
std::vector<std::pair<int32_t, float>> TopLogits(std::span<const float> logits, size_t n);

// One generated token's log-probability and the most likely alternatives,
// all from the raw next-token distribution: log_softmax(logits), before
// temperature, top-k and top-p (the public API's TokenLogprob).
struct TokenLogprobs {
  int32_t token = 0;
  float logprob = 0.0f;  // natural log, <= 0
  // The top_n most likely tokens as (id, logprob), by logit descending then
  // id ascending (TopLogits' order); may include `token` itself.
  std::vector<std::pair<int32_t, float>> top;
};

// Largest top_n that ComputeLogprobs' callers accept (the API's limit).
inline constexpr int32_t kMaxTopLogprobs = 20;

// log_softmax(logits)[token] and the top_n most likely tokens. Computed in
// double as (logit - max) - log(sum(exp(logit - max))), so huge or very
// negative finite logits give finite values, never NaN or inf (a logprob
// below the float range is clamped to the lowest float); rounded to float
// at the end. top_n beyond the vocabulary size is clamped to it.
// REQUIRES: logits non-empty and finite, 0 <= token < logits.size(),
// top_n >= 0.
TokenLogprobs ComputeLogprobs(std::span<const float> logits, int32_t token, int32_t top_n);

// A seed for requests that did not set one (random; reported back).
uint64_t RandomSeed();

}  // namespace dsv2

#endif  // DSV2_MODEL_SAMPLING_H_
