#include "tools/dsv2/run_command.h"

#include <algorithm>
#include <chrono>
#include <limits>
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
#include "base/status_macros.h"
#include "model/chat_template.h"
#include "model/sampling.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "base/cli_flags.h"
#include "tools/dsv2/local_engine.h"

namespace dsv2 {
namespace {

constexpr int64_t kMaxThreads = 1024;

const std::vector<cli::FlagSpec>& RunFlags() {
  static const std::vector<cli::FlagSpec> specs = {
      {"model", false, "checkpoint directory (config.json, *.safetensors, tokenizer.json)"},
      {"prompt", false, "prompt text (BOS added as the tokenizer config says)"},
      {"prompt-ids", false, "comma-separated token ids, used verbatim (no BOS added)"},
      {"chat", true, "render --prompt as one user message with the chat template"},
      {"max-tokens", false, "tokens to generate (default 64)"},
      {"temperature", false, "sampling temperature (default 0 = greedy)"},
      {"top-p", false, "nucleus sampling mass in (0, 1] (default 1)"},
      {"top-k", false, "keep the k most likely tokens (default 0 = all)"},
      {"seed", false, "sampling seed (default: random, reported)"},
      {"ignore-eos", true, "keep generating after EOS"},
      {"threads", false, "worker threads (default 1)"},
      {"cpu-isa", false, "scalar, avx2, avx512bf16 or auto (default: DSV2_CPU_ISA or best)"},
      {"prefill-chunk", false, "prefill at most this many prompt tokens per step (0 = all)"},
      {"json", true, "print one JSON object on stdout; stream text to stderr"},
      {"help", true, "show this help"},
  };
  return specs;
}

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

}  // namespace

int RunCommandMain(int argc, char** argv) {
  auto usage = [](absl::string_view msg) {
    std::cerr << "dsv2 run: " << msg << "\n";
    return 2;
  };
  auto fail = [](absl::string_view msg) {
    std::cerr << "dsv2 run: " << msg << "\n";
    return 1;
  };
  auto flags = cli::ParseFlags(argc, argv, 2, RunFlags());
  if (!flags.ok()) return usage(flags.status().message());
  flags->PreferCommandLine({"prompt", "prompt-ids"});
  if (flags->GetBool("help")) {
    std::cout << "dsv2 run flags:\n" << cli::FlagsHelp(RunFlags());
    return 0;
  }
  const auto model = flags->Get("model");
  const auto prompt = flags->Get("prompt");
  const auto prompt_ids_flag = flags->Get("prompt-ids");
  if (!model) return usage("--model is required");
  if (prompt.has_value() == prompt_ids_flag.has_value()) {
    return usage("exactly one of --prompt and --prompt-ids is required");
  }
  const bool chat = flags->GetBool("chat");
  if (chat && !prompt) return usage("--chat needs --prompt");
  const bool json_out = flags->GetBool("json");
  const bool ignore_eos = flags->GetBool("ignore-eos");
  auto max_tokens = flags->GetInt("max-tokens", 64);
  auto threads = flags->GetInt("threads", 1);
  auto prefill_chunk = flags->GetInt("prefill-chunk", 0);
  auto temperature = flags->GetDouble("temperature", 0.0);
  auto top_p = flags->GetDouble("top-p", 1.0);
  auto top_k = flags->GetInt("top-k", 0);
  for (const absl::Status& st : {max_tokens.status(), threads.status(), prefill_chunk.status(),
                                 temperature.status(), top_p.status(), top_k.status()}) {
    if (!st.ok()) return usage(st.message());
  }
  if (*max_tokens < 0) return usage("--max-tokens must be >= 0");
  if (*threads < 1 || *threads > kMaxThreads) {
    return usage(absl::StrCat("--threads must be in [1, ", kMaxThreads, "]"));
  }
  if (*prefill_chunk < 0) return usage("--prefill-chunk must be >= 0");
  if (*top_k < 0 || *top_k > std::numeric_limits<int32_t>::max()) {
    return usage("--top-k must be in [0, 2147483647]");
  }
  const std::string cpu_isa = flags->Get("cpu-isa").value_or("");
  if (!cpu_isa.empty()) {
    if (auto isa = kernels::ParseCpuIsa(cpu_isa); !isa.ok()) return usage(isa.status().message());
  }
  SamplingParams sp;
  sp.temperature = static_cast<float>(*temperature);
  sp.top_p = static_cast<float>(*top_p);
  sp.top_k = static_cast<int32_t>(*top_k);
  if (auto s = flags->Get("seed")) {
    if (!absl::SimpleAtoi(*s, &sp.seed)) return usage("--seed must be an unsigned integer");
  } else {
    sp.seed = RandomSeed();
  }
  if (absl::Status st = ValidateSamplingParams(sp); !st.ok()) return usage(st.message());
  std::vector<int64_t> raw_ids;
  if (prompt_ids_flag) {
    auto ids = ParseIds(*prompt_ids_flag);
    if (!ids.ok()) return usage(ids.status().message());
    raw_ids = *ids;
  }

  std::error_code ec;
  if (!std::filesystem::is_directory(*model, ec)) {
    return fail(absl::StrCat(*model, ": model directory not found"));
  }
  // Tokenizer (optional with --prompt-ids).
  std::unique_ptr<Tokenizer> tokenizer;
  if (std::filesystem::exists(*model + "/tokenizer.json", ec)) {
    auto t = Tokenizer::FromDir(*model);
    if (!t.ok()) return fail(t.status().message());
    tokenizer = *std::move(t);
  }
  std::vector<int32_t> prompt_ids;
  if (!prompt_ids_flag) {
    if (!tokenizer) return fail(absl::StrCat(*model, ": --prompt needs a tokenizer.json"));
    if (chat) {
      ChatTemplateInputs in;
      in.messages.push_back({"user", *prompt});
      in.add_generation_prompt = true;
      in.bos_token = tokenizer->bos_token();
      in.eos_token = tokenizer->eos_token();
      std::string rendered;
      if (tokenizer->chat_template()) {
        auto tmpl = ChatTemplate::Parse(*tokenizer->chat_template());
        if (!tmpl.ok()) return fail(tmpl.status().message());
        auto r = tmpl->Render(in);
        if (!r.ok()) return fail(r.status().message());
        rendered = *r;
      } else {
        rendered = RenderFallbackChat(in);
      }
      // The template renders BOS itself: never add a second one.
      prompt_ids = tokenizer->Encode(rendered, /*add_special_tokens=*/false);
    } else {
      prompt_ids = tokenizer->Encode(*prompt, /*add_special_tokens=*/true);
    }
    if (prompt_ids.empty()) return fail("the prompt encodes to no tokens");
  }

  // Cheap checks on config.json before mapping any weights.
  auto cfg_or = LoadModelConfig(*model + "/config.json");
  if (!cfg_or.ok()) return fail(cfg_or.status().message());
  const ModelConfig& cfg = *cfg_or;
  for (int64_t id : raw_ids) {
    if (id < 0 || id >= cfg.vocab_size) {
      return fail(absl::StrCat("token id ", id, " is outside the vocabulary [0, ", cfg.vocab_size,
                               ")"));
    }
    prompt_ids.push_back(static_cast<int32_t>(id));
  }
  const int64_t num_prompt = static_cast<int64_t>(prompt_ids.size());
  if (*max_tokens > cfg.max_position_embeddings - num_prompt) {
    return fail(absl::StrCat("prompt has ", num_prompt, " tokens + max-tokens ", *max_tokens,
                             " exceeds the context of ", cfg.max_position_embeddings,
                             " tokens"));
  }
  const int64_t total = num_prompt + *max_tokens;
  LocalEngineOptions eo;
  eo.model_dir = *model;
  eo.threads = static_cast<int>(*threads);
  eo.cpu_isa = cpu_isa;
  eo.cache_tokens = total;
  eo.config = cfg;
  eo.verbose_load = true;
  auto engine = LocalEngine::Open(eo);
  if (!engine.ok()) return fail(engine.status().message());
  LayerLoop& loop = (*engine)->loop();
  const auto t_start = std::chrono::steady_clock::now();
  SequenceCache seq;
  StepOutput out;
  std::vector<float> last_logits;
  // Prefill (optionally in chunks: results are chunk-invariant).
  const size_t chunk = *prefill_chunk > 0 ? static_cast<size_t>(*prefill_chunk) : prompt_ids.size();
  for (size_t begin = 0; begin < prompt_ids.size(); begin += chunk) {
    const size_t n = std::min(chunk, prompt_ids.size() - begin);
    StepSequence s{&seq, std::span<const int32_t>(prompt_ids).subspan(begin, n), false};
    if (absl::Status st = loop.Step(std::span<StepSequence>(&s, 1), &out); !st.ok()) {
      return fail(st.message());
    }
  }
  last_logits = out.logits[0];
  const auto top10 = TopLogits(last_logits, 10);
  const auto t_prefill = std::chrono::steady_clock::now();

  std::ostream& stream = json_out ? std::cerr : std::cout;
  std::optional<StreamingDecoder> decoder;
  if (tokenizer) decoder.emplace(*tokenizer, /*skip_special_tokens=*/true);
  std::vector<int32_t> output_ids;
  std::vector<int32_t> text_ids;
  std::string text;
  // EOS ids: config.json's, else the tokenizer's.
  std::vector<int64_t> eos_ids = cfg.eos_token_ids;
  if (eos_ids.empty() && tokenizer && tokenizer->eos_id()) eos_ids.push_back(*tokenizer->eos_id());
  const auto is_eos = [&](int32_t id) {
    return std::find(eos_ids.begin(), eos_ids.end(), id) != eos_ids.end();
  };
  for (int64_t i = 0; i < *max_tokens; ++i) {
    const int32_t next = SampleToken(last_logits, sp, static_cast<uint64_t>(i));
    output_ids.push_back(next);
    const bool eos = is_eos(next);
    if (!eos) {  // `text` never contains EOS, even with --ignore-eos
      if (decoder) {
        const std::string piece = decoder->Push(next);
        text += piece;
        stream << piece << std::flush;
      }
    }
    if (eos && !ignore_eos) break;
    if (i + 1 == *max_tokens) break;
    StepSequence s{&seq, std::span<const int32_t>(&output_ids.back(), 1), false};
    if (absl::Status st = loop.Step(std::span<StepSequence>(&s, 1), &out); !st.ok()) {
      stream << "\n" << std::flush;  // end the streamed line first
      return fail(st.message());
    }
    last_logits = out.logits[0];
  }
  const auto t_end = std::chrono::steady_clock::now();
  if (decoder) {
    const std::string rest = decoder->Finish();
    text += rest;
    stream << rest;
  }
  stream << "\n" << std::flush;
  const double prefill_s = std::chrono::duration<double>(t_prefill - t_start).count();
  const double decode_s = std::chrono::duration<double>(t_end - t_prefill).count();
  const size_t decode_steps = output_ids.empty() ? 0 : output_ids.size() - 1;
  std::fprintf(stderr,
               "seed %llu; prefill: %zu tokens in %.3f s; decode: %zu steps in %.3f s "
               "(%.2f tokens/s)\n",
               static_cast<unsigned long long>(sp.seed), prompt_ids.size(), prefill_s,
               decode_steps, decode_s, decode_s > 0 ? decode_steps / decode_s : 0.0);
  if (json_out) {
    nlohmann::json j;
    j["prompt_ids"] = prompt_ids;
    j["output_ids"] = output_ids;
    j["text"] = text;
    nlohmann::json top = nlohmann::json::array();
    for (const auto& [id, logit] : top10) top.push_back({id, logit});
    j["first_logits_top10"] = top;
    j["seed"] = sp.seed;
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  }
  return 0;
}

}  // namespace dsv2
