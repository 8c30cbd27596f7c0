#include "tools/dsv2/eval_kld_command.h"

#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <random>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/flags.h"
#include "base/version.h"
#include "kernels/cpu.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "model/weight_flags.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"
#include "tools/dsv2/eval_kld.h"

namespace dsv2 {
namespace {

absl::StatusOr<std::vector<int32_t>> StreamTokens(const std::string& model_dir,
                                                  const std::optional<std::string>& text_file,
                                                  int64_t random_tokens, uint64_t seed) {
  if (text_file) {
    std::ifstream in(*text_file, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat(*text_file, ": cannot open"));
    std::stringstream ss;
    ss << in.rdbuf();
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromDir(model_dir);
    if (!tok.ok()) return tok.status();
    return (*tok)->Encode(ss.str(), /*add_special_tokens=*/false);
  }
  absl::StatusOr<ModelConfig> c = LoadModelConfig(model_dir + "/config.json");
  if (!c.ok()) return c.status();
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(c->vocab_size - 1));
  std::vector<int32_t> out(static_cast<size_t>(random_tokens));
  for (int32_t& t : out) t = id(rng);
  return out;
}

}  // namespace

int EvalKldCommandMain(int argc, char** argv) {
  EvalKldOptions o;
  std::optional<std::string> text_file, quantized;
  int64_t random_tokens = 0;
  uint64_t seed = 0;
  bool json = false;
  o.threads = kernels::AvailableCpuCores();
  o.max_positions = 2048;
  flags::FlagSet flags("dsv2 eval-kld", std::string(VersionString()));
  flags.String("model", &o.model_dir, "the reference checkpoint, run as stored").Required();
  WeightFlags weight_flags;
  DefineWeightFlags(flags, "quantize --model at load: int8 or int4", "as stored", &weight_flags);
  DefineQuantActivationsFlag(flags, &weight_flags);
  flags.String("quantized-model", &quantized,
               "instead of --weights: a checkpoint `dsv2 quantize` wrote from --model");
  flags.String("text", &text_file,
               "UTF-8 text to evaluate on (tokenized with --model's tokenizer)");
  flags
      .Int("random-tokens", &random_tokens, "instead of --text: this many uniform random token ids")
      .Min(0);
  flags.Int("seed", &seed, "seed of --random-tokens");
  flags.Int("context", &o.context, "tokens per chunk (BOS included); the second half is scored")
      .Min(2);
  flags.Int("positions", &o.max_positions, "stop after this many scored positions (0 = all)")
      .Min(0);
  flags.Int("threads", &o.threads, "compute threads per engine")
      .Range(1, 1024)
      .DefaultText("the available cores");
  flags.Bool("json", &json, "print one JSON object on stdout");
  if (std::optional<int> exit_code = flags.ParseCommandLine(argc, argv, 2)) return *exit_code;
  absl::StatusOr<WeightQuantization> q = WeightQuantizationFromFlags(weight_flags);
  if (!q.ok()) return flags.UsageError(std::string(q.status().message()));
  o.quantization = *q;
  if ((o.quantization.format == WeightQuantization::Format::kNone) == !quantized.has_value()) {
    return flags.UsageError("give exactly one of --weights int8|int4 and --quantized-model");
  }
  if (text_file.has_value() == (random_tokens > 0)) {
    return flags.UsageError("give exactly one of --text and --random-tokens");
  }
  o.quantized_model_dir = quantized;
  absl::StatusOr<std::vector<int32_t>> tokens =
      StreamTokens(o.model_dir, text_file, random_tokens, seed);
  if (!tokens.ok()) {
    std::cerr << "dsv2 eval-kld: " << tokens.status().message() << "\n";
    return 1;
  }
  o.tokens = std::move(*tokens);
  absl::StatusOr<KldStats> s = EvalKld(o);
  if (!s.ok()) {
    std::cerr << "dsv2 eval-kld: " << s.status().message() << "\n";
    return 1;
  }
  const std::string what = quantized ? *quantized : weight_flags.weights;
  std::fprintf(stderr,
               "%s vs %s: %lld positions; KLD mean %.6f +- %.6f, median %.6f, p99 %.6f, max %.6f; "
               "same top-1 %.2f%%\n",
               what.c_str(), o.model_dir.c_str(), static_cast<long long>(s->positions), s->mean,
               s->stderr_mean, s->median, s->p99, s->max, 100 * s->top1_agreement);
  if (json) {
    nlohmann::json j = {{"positions", s->positions},
                        {"kld_mean", s->mean},
                        {"kld_stderr", s->stderr_mean},
                        {"kld_median", s->median},
                        {"kld_p99", s->p99},
                        {"kld_max", s->max},
                        {"top1_agreement", s->top1_agreement},
                        {"quantized", what}};
    std::cout << j.dump() << "\n";
  }
  return 0;
}

}  // namespace dsv2
