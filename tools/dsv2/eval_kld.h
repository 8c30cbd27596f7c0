// `dsv2 eval-kld`: how far a quantized model's next-token distributions are
// from the model as stored (issue 13). The same token stream is run
// teacher-forced through two single-process engines, the reference (the
// checkpoint as stored, unquantized) and the quantized one (load-time
// `--weights`, or a checkpoint `dsv2 quantize` wrote from the same model),
// and at every position
//   KL(P_ref || P_q) = sum_v P_ref(v) (log P_ref(v) - log P_q(v))
// is computed in double from the two logit vectors (log-softmax each), as
// llama.cpp's `llama-perplexity --kl-divergence` does, with top-1 agreement
// (the same argmax). The stream is cut into chunks of `context` tokens, each
// run from an empty cache with BOS in front (when the config has one), and,
// as llama-perplexity does, positions [n/2, n - 1) of each n-token chunk are
// scored.
#ifndef DSV2_TOOLS_DSV2_EVAL_KLD_H_
#define DSV2_TOOLS_DSV2_EVAL_KLD_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"

namespace dsv2 {

struct EvalKldOptions {
  std::string model_dir;  // the reference: loaded as stored
  // The quantized side: `quantized_model_dir` when set (loaded as stored),
  // else model_dir with `quantization` applied at load.
  std::optional<std::string> quantized_model_dir;
  WeightQuantization quantization;
  std::vector<int32_t> tokens;  // the stream (no BOS; added per chunk)
  int64_t context = 512;        // tokens per chunk, BOS included
  int64_t max_positions = 0;    // stop after this many scored positions (0 = all)
  int threads = 1;
};

struct KldStats {
  int64_t positions = 0;
  double mean = 0, stderr_mean = 0, median = 0, p99 = 0, max = 0;
  double top1_agreement = 0;  // share of positions with the same argmax
};

// InvalidArgument for an empty stream, a context < 2 or token ids outside
// the vocabulary; load errors as the engines report them.
absl::StatusOr<KldStats> EvalKld(const EvalKldOptions& options);

// Summary of per-position KL values and argmax matches (the statistics
// above; percentiles by nearest rank). Exposed for tests.
KldStats SummarizeKld(std::vector<double> kld, int64_t same_top1);

// KL(P || Q) for P = softmax(p_logits), Q = softmax(q_logits), in double.
double KlDivergence(const float* p_logits, const float* q_logits, int64_t n);

}  // namespace dsv2

#endif  // DSV2_TOOLS_DSV2_EVAL_KLD_H_
