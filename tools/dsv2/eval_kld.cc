#include "tools/dsv2/eval_kld.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <span>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "tools/dsv2/local_engine.h"

namespace dsv2 {
namespace {

// log(sum exp(x)) in double, shifted by the maximum.
double LogSumExp(const float* x, int64_t n) {
  double m = x[0];
  for (int64_t i = 1; i < n; ++i) m = std::max(m, static_cast<double>(x[i]));
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(static_cast<double>(x[i]) - m);
  return m + std::log(s);
}

int64_t Argmax(const float* x, int64_t n) { return std::max_element(x, x + n) - x; }

// Logits at every position of `chunk`, one vector per token.
absl::StatusOr<std::vector<float>> ChunkLogits(LocalEngine& e, std::span<const int32_t> chunk) {
  SequenceCache seq;
  StepOutput out;
  StepSequence s{&seq, chunk, /*all_logits=*/true};
  const absl::Status st = e.loop().Step(std::span<StepSequence>(&s, 1), &out);
  e.cache().Release(seq);
  DSV2_RETURN_IF_ERROR(st);
  return std::move(out.logits[0]);
}

}  // namespace

double KlDivergence(const float* p, const float* q, int64_t n) {
  const double lp = LogSumExp(p, n), lq = LogSumExp(q, n);
  double kl = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double log_p = p[i] - lp, log_q = q[i] - lq;
    kl += std::exp(log_p) * (log_p - log_q);
  }
  return std::max(kl, 0.0);  // >= 0 in exact arithmetic; rounding may dip below
}

KldStats SummarizeKld(std::vector<double> kld, int64_t same_top1) {
  KldStats s;
  s.positions = static_cast<int64_t>(kld.size());
  if (kld.empty()) return s;
  double sum = 0, sum_sq = 0;
  for (double k : kld) {
    sum += k;
    sum_sq += k * k;
  }
  const double n = static_cast<double>(kld.size());
  s.mean = sum / n;
  s.stderr_mean =
      kld.size() > 1 ? std::sqrt(std::max(0.0, (sum_sq / n - s.mean * s.mean) / (n - 1))) : 0.0;
  std::sort(kld.begin(), kld.end());
  auto rank = [&](double q) {  // nearest rank: the ceil(q n)-th smallest
    const auto r = static_cast<size_t>(std::ceil(q * n));
    return kld[std::clamp<size_t>(r, 1, kld.size()) - 1];
  };
  s.median = rank(0.5);
  s.p99 = rank(0.99);
  s.max = kld.back();
  s.top1_agreement = static_cast<double>(same_top1) / n;
  return s;
}

absl::StatusOr<KldStats> EvalKld(const EvalKldOptions& o) {
  if (o.tokens.empty()) return absl::InvalidArgumentError("no tokens to evaluate");
  if (o.context < 2) return absl::InvalidArgumentError("--context must be at least 2");
  LocalEngineOptions ro;
  ro.model_dir = o.model_dir;
  ro.threads = o.threads;
  ro.cache_tokens = o.context;
  DSV2_ASSIGN_OR_RETURN(std::unique_ptr<LocalEngine> ref, LocalEngine::Open(ro));
  LocalEngineOptions qo = ro;
  if (o.quantized_model_dir) {
    qo.model_dir = *o.quantized_model_dir;
    qo.quantization.int8_activations = o.quantization.int8_activations;
  } else {
    qo.quantization = o.quantization;
  }
  DSV2_ASSIGN_OR_RETURN(std::unique_ptr<LocalEngine> quant, LocalEngine::Open(qo));
  const ModelConfig& c = ref->config();
  if (quant->config().vocab_size != c.vocab_size || quant->config().hidden_size != c.hidden_size) {
    return absl::InvalidArgumentError("the quantized model is not the reference's shape");
  }
  const int64_t V = c.vocab_size;
  for (int32_t t : o.tokens) {
    if (t < 0 || t >= V) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", t, " is outside the vocabulary [0, ", V, ")"));
    }
  }
  const bool bos = c.bos_token_id.has_value();
  const auto per_chunk = static_cast<size_t>(o.context - (bos ? 1 : 0));
  std::vector<double> kld;
  int64_t same = 0;
  std::vector<int32_t> chunk;
  for (size_t begin = 0; begin < o.tokens.size(); begin += per_chunk) {
    chunk.clear();
    if (bos) chunk.push_back(static_cast<int32_t>(*c.bos_token_id));
    const size_t n = std::min(per_chunk, o.tokens.size() - begin);
    chunk.insert(chunk.end(), o.tokens.begin() + static_cast<ptrdiff_t>(begin),
                 o.tokens.begin() + static_cast<ptrdiff_t>(begin + n));
    DSV2_ASSIGN_OR_RETURN(const std::vector<float> a, ChunkLogits(*ref, chunk));
    DSV2_ASSIGN_OR_RETURN(const std::vector<float> b, ChunkLogits(*quant, chunk));
    // Scored: positions [size / 2, size - 1) of each chunk, llama-perplexity's
    // choice (each has at least half a context before it; the last predicts
    // past the chunk).
    for (size_t i = chunk.size() / 2; i + 1 < chunk.size(); ++i) {
      if (o.max_positions > 0 && static_cast<int64_t>(kld.size()) >= o.max_positions) break;
      const float* pa = &a[i * static_cast<size_t>(V)];
      const float* pb = &b[i * static_cast<size_t>(V)];
      kld.push_back(KlDivergence(pa, pb, V));
      same += Argmax(pa, V) == Argmax(pb, V);
    }
    if (o.max_positions > 0 && static_cast<int64_t>(kld.size()) >= o.max_positions) break;
  }
  return SummarizeKld(std::move(kld), same);
}

}  // namespace dsv2
