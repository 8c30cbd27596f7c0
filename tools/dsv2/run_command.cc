#include "tools/dsv2/run_command.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/flags.h"
#include "base/status_macros.h"
#include "base/version.h"
#include "kernels/cpu.h"
#include "model/chat_template.h"
#include "model/sampling.h"
#include "model/tokenizer.h"
#include "model/weight_flags.h"
#include "nlohmann/json.hpp"
#include "tools/dsv2/default_model.h"
#include "tools/dsv2/local_engine.h"

namespace dsv2 {
namespace {

// What `dsv2 run` was asked for (its flags, typed and checked).
struct RunRequest {
  std::string model;
  std::optional<std::string> prompt;
  std::vector<int64_t> raw_ids;  // --prompt-ids, range-checked against the vocabulary later
  bool chat = false;
  bool json = false;
  bool ignore_eos = false;
  int64_t max_tokens = 64;
  int threads = 1;
  std::string cpu_isa;
  int64_t prefill_chunk = 0;  // 0 = the whole prompt in one step
  WeightQuantization quantization;  // --weights, --experts-only, --lm-head-bf16
  SamplingParams sampling;
};

// What generation produced, for the report.
struct RunResult {
  std::vector<int32_t> output_ids;
  std::string text;
  std::vector<std::pair<int32_t, float>> first_top10;
  double prefill_s = 0, decode_s = 0;
};

// Comma-separated ids; whitespace around an id is allowed, an empty entry is
// not. Range is checked later against the vocabulary (exit 1).
absl::StatusOr<std::vector<int64_t>> ParseIds(const std::string& s) {
  std::vector<int64_t> ids;
  for (absl::string_view part : absl::StrSplit(s, ',')) {
    int64_t id;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &id)) {
      return absl::InvalidArgumentError(absl::StrCat("--prompt-ids: '", part, "' is not an id"));
    }
    ids.push_back(id);
  }
  return ids;
}

// Parses the flags into *req; an exit code (0 help, 2 usage) when the
// command should stop.
std::optional<int> ParseRunFlags(int argc, char** argv, RunRequest* req) {
  flags::FlagSet flags("dsv2 run", std::string(VersionString()));
  std::string prompt_ids;
  std::optional<uint64_t> seed;
  std::optional<std::string> model;
  float temperature = 0.0f, top_p = 1.0f;
  int32_t top_k = 0;
  flags.String("model", &model, "checkpoint directory (config.json, *.safetensors, "
                                "tokenizer.json)")
      .DefaultText("$DSV2_DEFAULT_MODEL, else the shipped demo model, <data dir>/demo-stories");
  flags.String("prompt", &req->prompt, "prompt text (BOS added as the tokenizer config says)");
  flags.String("prompt-ids", &prompt_ids,
               "comma-separated token ids, used verbatim (no BOS added)");
  flags.Bool("chat", &req->chat, "render --prompt as one user message with the chat template");
  flags.Int("max-tokens", &req->max_tokens, "tokens to generate").Min(0);
  flags.Double("temperature", &temperature, "sampling temperature (0 = greedy)");
  flags.Double("top-p", &top_p, "nucleus sampling mass in (0, 1]");
  flags.Int("top-k", &top_k, "keep the k most likely tokens (0 = all)").Min(0);
  flags.Int("seed", &seed, "sampling seed").DefaultText("random, reported");
  flags.Bool("ignore-eos", &req->ignore_eos, "keep generating after EOS");
  req->threads = std::min(kernels::AvailableCpuCores(), 1024);
  flags.Int("threads", &req->threads, "worker threads").Range(1, 1024)
      .DefaultText("every core this process may run on (its CPU affinity)");
  flags.String("cpu-isa", &req->cpu_isa, "scalar, avx2, avx512bf16, amx or auto")
      .DefaultText("DSV2_CPU_ISA or best");
  flags.Int("prefill-chunk", &req->prefill_chunk,
            "prefill at most this many prompt tokens per step (0 = all)").Min(0);
  WeightFlags weight_flags;
  DefineWeightFlags(flags,
                    "quantize the linear weights at load: none, int8 or int4 (group-32, f16 "
                    "scales; docs/numerics.md)",
                    "as stored", &weight_flags);
  DefineQuantActivationsFlag(flags, &weight_flags);
  flags.Bool("json", &req->json, "print one JSON object on stdout; stream text to stderr");
  flags.ExclusiveGroup({"prompt", "prompt-ids"}, flags::GroupRule::kExactlyOne);
  if (std::optional<int> exit_code = flags.ParseCommandLine(argc, argv, 2)) return exit_code;
  if (req->chat && !req->prompt) return flags.UsageError("--chat needs --prompt");
  if (absl::StatusOr<WeightQuantization> q = WeightQuantizationFromFlags(weight_flags); q.ok()) {
    req->quantization = *q;
  } else {
    return flags.UsageError(std::string(q.status().message()));
  }
  if (absl::StatusOr<std::string> dir = ResolveModelDir(model); dir.ok()) {
    req->model = *dir;
  } else if (model) {
    req->model = *model;  // Run() names what is missing (exit 1)
  } else {
    std::cerr << "dsv2 run: " << dir.status().message() << "\n";
    return 1;
  }
  if (!req->cpu_isa.empty()) {
    if (auto isa = kernels::ParseCpuIsa(req->cpu_isa); !isa.ok()) {
      return flags.UsageError(isa.status().message());
    }
  }
  req->sampling.temperature = temperature;
  req->sampling.top_p = top_p;
  req->sampling.top_k = top_k;
  req->sampling.seed = seed.value_or(RandomSeed());
  if (absl::Status st = ValidateSamplingParams(req->sampling); !st.ok()) {
    return flags.UsageError(st.message());
  }
  if (flags.was_set("prompt-ids")) {
    absl::StatusOr<std::vector<int64_t>> ids = ParseIds(prompt_ids);
    if (!ids.ok()) return flags.UsageError(ids.status().message());
    req->raw_ids = *std::move(ids);
  }
  return std::nullopt;
}

// --prompt as token ids (with --chat through the chat template, whose
// rendering carries the only BOS).
absl::StatusOr<std::vector<int32_t>> EncodePrompt(const RunRequest& req,
                                                  const Tokenizer& tokenizer) {
  if (!req.chat) return tokenizer.Encode(*req.prompt, /*add_special_tokens=*/true);
  ChatTemplateInputs in;
  in.messages.push_back({"user", *req.prompt});
  in.add_generation_prompt = true;
  in.bos_token = tokenizer.bos_token();
  in.eos_token = tokenizer.eos_token();
  std::string rendered;
  if (tokenizer.chat_template()) {
    DSV2_ASSIGN_OR_RETURN(ChatTemplate tmpl, ChatTemplate::Parse(*tokenizer.chat_template()));
    DSV2_ASSIGN_OR_RETURN(rendered, tmpl.Render(in));
  } else {
    rendered = RenderFallbackChat(in);
  }
  return tokenizer.Encode(rendered, /*add_special_tokens=*/false);
}

// The prompt's ids: --prompt-ids verbatim (checked against the vocabulary)
// or --prompt encoded.
absl::StatusOr<std::vector<int32_t>> PromptIds(const RunRequest& req, const Tokenizer* tokenizer,
                                               const ModelConfig& cfg) {
  std::vector<int32_t> ids;
  if (req.prompt) {
    if (tokenizer == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat(req.model, ": --prompt needs a tokenizer.json"));
    }
    DSV2_ASSIGN_OR_RETURN(ids, EncodePrompt(req, *tokenizer));
    if (ids.empty()) return absl::InvalidArgumentError("the prompt encodes to no tokens");
  }
  for (int64_t id : req.raw_ids) {
    if (id < 0 || id >= cfg.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token id ", id, " is outside the vocabulary [0, ", cfg.vocab_size, ")"));
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

// Prefill (in --prefill-chunk steps: results are chunk-invariant) and
// decode, streaming text to `stream`.
absl::Status Generate(const RunRequest& req, const std::vector<int32_t>& prompt_ids,
                      const Tokenizer* tokenizer, LocalEngine& engine, std::ostream& stream,
                      RunResult* result) {
  LayerLoop& loop = engine.loop();
  const auto t_start = std::chrono::steady_clock::now();
  SequenceCache seq;
  StepOutput out;
  const size_t chunk =
      req.prefill_chunk > 0 ? static_cast<size_t>(req.prefill_chunk) : prompt_ids.size();
  for (size_t begin = 0; begin < prompt_ids.size(); begin += chunk) {
    const size_t n = std::min(chunk, prompt_ids.size() - begin);
    StepSequence s{&seq, std::span<const int32_t>(prompt_ids).subspan(begin, n), false};
    DSV2_RETURN_IF_ERROR(loop.Step(std::span<StepSequence>(&s, 1), &out));
  }
  std::vector<float> last_logits = out.logits[0];
  result->first_top10 = TopLogits(last_logits, 10);
  const auto t_prefill = std::chrono::steady_clock::now();

  std::optional<StreamingDecoder> decoder;
  if (tokenizer) decoder.emplace(*tokenizer, /*skip_special_tokens=*/true);
  // EOS ids: config.json's, else the tokenizer's.
  std::vector<int64_t> eos_ids = engine.config().eos_token_ids;
  if (eos_ids.empty() && tokenizer && tokenizer->eos_id()) eos_ids.push_back(*tokenizer->eos_id());
  std::vector<int32_t>& output_ids = result->output_ids;
  for (int64_t i = 0; i < req.max_tokens; ++i) {
    const int32_t next = SampleToken(last_logits, req.sampling, static_cast<uint64_t>(i));
    output_ids.push_back(next);
    const bool eos = std::find(eos_ids.begin(), eos_ids.end(), next) != eos_ids.end();
    if (!eos && decoder) {  // `text` never contains EOS, even with --ignore-eos
      const std::string piece = decoder->Push(next);
      result->text += piece;
      stream << piece << std::flush;
    }
    if ((eos && !req.ignore_eos) || i + 1 == req.max_tokens) break;
    StepSequence s{&seq, std::span<const int32_t>(&output_ids.back(), 1), false};
    if (absl::Status st = loop.Step(std::span<StepSequence>(&s, 1), &out); !st.ok()) {
      stream << "\n" << std::flush;  // end the streamed line first
      return st;
    }
    last_logits = out.logits[0];
  }
  const auto t_end = std::chrono::steady_clock::now();
  if (decoder) {
    const std::string rest = decoder->Finish();
    result->text += rest;
    stream << rest;
  }
  stream << "\n" << std::flush;
  result->prefill_s = std::chrono::duration<double>(t_prefill - t_start).count();
  result->decode_s = std::chrono::duration<double>(t_end - t_prefill).count();
  return absl::OkStatus();
}

// The timing line on stderr and, with --json, the JSON object on stdout.
// `weights`: the linear weights' format in effect (the checkpoint's stored
// quantization, else --weights).
void Report(const RunRequest& req, const std::vector<int32_t>& prompt_ids, const RunResult& r,
            WeightQuantization::Format weights) {
  const size_t decode_steps = r.output_ids.empty() ? 0 : r.output_ids.size() - 1;
  std::fprintf(stderr,
               "seed %llu; %d threads; prefill: %zu tokens in %.3f s; decode: %zu steps in %.3f s "
               "(%.2f tokens/s)\n",
               static_cast<unsigned long long>(req.sampling.seed), req.threads, prompt_ids.size(),
               r.prefill_s,
               decode_steps, r.decode_s, r.decode_s > 0 ? decode_steps / r.decode_s : 0.0);
  if (!req.json) return;
  nlohmann::json j;
  j["prompt_ids"] = prompt_ids;
  j["output_ids"] = r.output_ids;
  j["text"] = r.text;
  nlohmann::json top = nlohmann::json::array();
  for (const auto& [id, logit] : r.first_top10) top.push_back({id, logit});
  j["first_logits_top10"] = top;
  j["seed"] = req.sampling.seed;
  j["threads"] = req.threads;
  j["weights"] = WeightFormatName(weights);
  std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
}

absl::Status Run(const RunRequest& req) {
  std::error_code ec;
  if (!std::filesystem::is_directory(req.model, ec)) {
    return absl::NotFoundError(absl::StrCat(req.model, ": model directory not found"));
  }
  std::unique_ptr<Tokenizer> tokenizer;  // optional with --prompt-ids
  if (std::filesystem::exists(req.model + "/tokenizer.json", ec)) {
    DSV2_ASSIGN_OR_RETURN(tokenizer, Tokenizer::FromDir(req.model));
  }
  // Cheap checks on config.json before mapping any weights.
  DSV2_ASSIGN_OR_RETURN(ModelConfig cfg, LoadModelConfig(req.model + "/config.json"));
  DSV2_ASSIGN_OR_RETURN(std::vector<int32_t> prompt_ids, PromptIds(req, tokenizer.get(), cfg));
  const int64_t num_prompt = static_cast<int64_t>(prompt_ids.size());
  if (req.max_tokens > cfg.max_position_embeddings - num_prompt) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt has ", num_prompt, " tokens + max-tokens ", req.max_tokens,
        " exceeds the context of ", cfg.max_position_embeddings, " tokens"));
  }
  LocalEngineOptions eo;
  eo.model_dir = req.model;
  eo.threads = req.threads;
  eo.cpu_isa = req.cpu_isa;
  eo.cache_tokens = num_prompt + req.max_tokens;
  eo.config = cfg;
  eo.verbose_load = true;
  eo.quantization = req.quantization;
  DSV2_ASSIGN_OR_RETURN(std::unique_ptr<LocalEngine> engine, LocalEngine::Open(eo));
  RunResult result;
  DSV2_RETURN_IF_ERROR(Generate(req, prompt_ids, tokenizer.get(), *engine,
                                req.json ? std::cerr : std::cout, &result));
  Report(req, prompt_ids, result,
         cfg.stored_quantization ? cfg.stored_quantization->format : req.quantization.format);
  return absl::OkStatus();
}

}  // namespace

int RunCommandMain(int argc, char** argv) {
  RunRequest req;
  if (std::optional<int> exit_code = ParseRunFlags(argc, argv, &req)) return *exit_code;
  if (absl::Status st = Run(req); !st.ok()) {
    std::cerr << "dsv2 run: " << st.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace dsv2
