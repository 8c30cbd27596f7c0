#include "tools/dsv2/run_command.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "kernels/status_macros.h"
#include "model/chat_template.h"
#include "model/sampling.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tools/dsv2/cli_flags.h"
#include "tools/dsv2/local_engine.h"

namespace dsv2 {
namespace {

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

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& s) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipWhitespace())) {
    int32_t id;
    if (!absl::SimpleAtoi(part, &id)) {
      return absl::InvalidArgumentError(absl::StrCat("--prompt-ids: '", part, "' is not an id"));
    }
    ids.push_back(id);
  }
  if (ids.empty()) return absl::InvalidArgumentError("--prompt-ids is empty");
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
  if (*threads < 1) return usage("--threads must be >= 1");
  if (*prefill_chunk < 0) return usage("--prefill-chunk must be >= 0");
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

  if (!std::filesystem::is_directory(*model)) {
    return fail(absl::StrCat(*model, ": model directory not found"));
  }
  // Tokenizer (optional with --prompt-ids).
  std::unique_ptr<Tokenizer> tokenizer;
  if (std::filesystem::exists(*model + "/tokenizer.json")) {
    auto t = Tokenizer::FromDir(*model);
    if (!t.ok()) return fail(t.status().message());
    tokenizer = *std::move(t);
  }
  std::vector<int32_t> prompt_ids;
  if (prompt_ids_flag) {
    auto ids = ParseIds(*prompt_ids_flag);
    if (!ids.ok()) return usage(ids.status().message());
    prompt_ids = *ids;
  } else {
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
  const int64_t total = static_cast<int64_t>(prompt_ids.size()) + *max_tokens;
  if (total > cfg.max_position_embeddings) {
    return fail(absl::StrCat("prompt has ", prompt_ids.size(), " tokens + max-tokens ", *max_tokens,
                             " = ", total, "; the context is ", cfg.max_position_embeddings));
  }
  for (int32_t id : prompt_ids) {
    if (id < 0 || id >= cfg.vocab_size) {
      return fail(absl::StrCat("token id ", id, " is outside the vocabulary [0, ", cfg.vocab_size,
                               ")"));
    }
  }
  LocalEngineOptions eo;
  eo.model_dir = *model;
  eo.threads = static_cast<int>(*threads);
  eo.cpu_isa = flags->Get("cpu-isa").value_or("");
  eo.cache_tokens = total;
  eo.verbose_load = true;
  if (!eo.cpu_isa.empty()) {
    if (auto isa = kernels::ParseCpuIsa(eo.cpu_isa); !isa.ok()) return usage(isa.status().message());
  }
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
  const auto is_eos = [&](int32_t id) {
    for (int64_t e : cfg.eos_token_ids) {
      if (e == id) return true;
    }
    return false;
  };
  for (int64_t i = 0; i < *max_tokens; ++i) {
    const int32_t next = SampleToken(last_logits, sp, static_cast<uint64_t>(i));
    output_ids.push_back(next);
    const bool eos = is_eos(next);
    if (!eos || ignore_eos) {
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
  std::fprintf(stderr, "prefill: %zu tokens in %.3f s; decode: %zu steps in %.3f s (%.2f tokens/s)\n",
               prompt_ids.size(), prefill_s, decode_steps, decode_s,
               decode_s > 0 ? decode_steps / decode_s : 0.0);
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
