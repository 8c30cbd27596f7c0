#include "coordinator/generate_request.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/utf8.h"

namespace dsv2::coordinator {
namespace {

absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

}  // namespace

absl::StatusOr<PreparedGenerate> PrepareGenerate(const v1::GenerateRequest& request,
                                                 const ServedModel& model) {
  const int inputs = (request.prompt().empty() ? 0 : 1) + (request.messages().empty() ? 0 : 1) +
                     (request.prompt_ids().empty() ? 0 : 1);
  if (inputs == 0) {
    return Invalid("prompt", "the request has no input: set prompt, messages or prompt_ids");
  }
  if (inputs > 1) {
    return Invalid("prompt", "set exactly one of prompt, messages and prompt_ids");
  }
  PreparedGenerate p;
  std::vector<ChatMessage> messages;
  for (const v1::ChatMessage& m : request.messages()) messages.push_back({m.role(), m.content()});
  if (!messages.empty()) {
    if (absl::Status st = ValidateChatMessages(messages); !st.ok()) {
      return Invalid("messages", std::string(st.message()));
    }
  }
  if (request.has_temperature() &&
      (!std::isfinite(request.temperature()) || request.temperature() < 0)) {
    return Invalid("temperature", absl::StrCat(request.temperature(), " must be >= 0"));
  }
  if (request.has_top_p() &&
      (!std::isfinite(request.top_p()) || request.top_p() <= 0 || request.top_p() > 1)) {
    return Invalid("top_p", absl::StrCat(request.top_p(), " must be in (0, 1]"));
  }
  if (request.top_k() < 0) return Invalid("top_k", absl::StrCat(request.top_k(), " must be >= 0"));
  if (request.has_logprobs() && (request.logprobs() < 0 || request.logprobs() > kMaxLogprobs)) {
    return Invalid("logprobs",
                   absl::StrCat(request.logprobs(), " must be in [0, ", kMaxLogprobs, "]"));
  }
  if (request.has_max_tokens() && request.max_tokens() < 1) {
    return Invalid("max_tokens", absl::StrCat(request.max_tokens(), " must be >= 1"));
  }
  if (request.stop_size() > kMaxStopStrings) {
    return Invalid("stop", absl::StrCat(request.stop_size(), " strings; at most ",
                                        kMaxStopStrings));
  }
  for (const std::string& s : request.stop()) {
    if (s.empty()) return Invalid("stop", "a stop string is empty");
    if (s.size() > kMaxStopStringBytes) {
      return Invalid("stop", absl::StrCat("a stop string has ", s.size(), " bytes; at most ",
                                          kMaxStopStringBytes));
    }
    if (!IsValidUtf8(s)) return Invalid("stop", "a stop string is not valid UTF-8");
  }
  if (!request.stop().empty() && model.tokenizer == nullptr) {
    return Invalid("stop", "the model has no tokenizer, so stop strings cannot be matched");
  }
  if (request.stop_token_ids_size() > kMaxStopTokenIds) {
    return Invalid("stop_token_ids", absl::StrCat(request.stop_token_ids_size(),
                                                  " ids; at most ", kMaxStopTokenIds));
  }
  for (int32_t id : request.stop_token_ids()) {
    if (id < 0 || id >= model.vocab_size) {
      return Invalid("stop_token_ids", absl::StrCat("token id ", id, " is outside [0, ",
                                                    model.vocab_size, ")"));
    }
  }
  for (int32_t id : request.prompt_ids()) {
    if (id < 0 || id >= model.vocab_size) {
      return Invalid("prompt_ids", absl::StrCat("token id ", id, " is outside [0, ",
                                                model.vocab_size, ")"));
    }
  }

  // Tokenize.
  if (!request.prompt_ids().empty()) {
    p.prompt_ids.assign(request.prompt_ids().begin(), request.prompt_ids().end());
  } else if (model.tokenizer == nullptr) {
    return Invalid(request.prompt().empty() ? "messages" : "prompt",
                   "the model has no tokenizer.json; send prompt_ids");
  } else if (!messages.empty()) {
    ChatTemplateInputs in;
    in.messages = std::move(messages);
    in.add_generation_prompt = true;
    in.bos_token = model.tokenizer->bos_token();
    in.eos_token = model.tokenizer->eos_token();
    std::string rendered;
    if (model.chat_template != nullptr) {
      absl::StatusOr<std::string> r = model.chat_template->Render(in);
      if (!r.ok()) return Invalid("messages", std::string(r.status().message()));
      rendered = *std::move(r);
    } else {
      rendered = RenderFallbackChat(in);
    }
    // The template writes BOS itself: never a second one.
    p.prompt_ids = model.tokenizer->Encode(rendered, /*add_special_tokens=*/false);
  } else {
    const bool special = !request.has_add_special_tokens() || request.add_special_tokens();
    p.prompt_ids = model.tokenizer->Encode(request.prompt(), special);
  }
  if (p.prompt_ids.empty()) return Invalid("prompt", "the input encodes to no tokens");

  if (request.has_max_tokens()) p.max_tokens = request.max_tokens();
  p.sampling.temperature = request.has_temperature() ? request.temperature() : 1.0f;
  p.sampling.top_p = request.has_top_p() ? request.top_p() : 1.0f;
  p.sampling.top_k = request.top_k();
  p.sampling.seed = request.has_seed() ? request.seed() : RandomSeed();
  DSV2_RETURN_IF_ERROR(ValidateSamplingParams(p.sampling));
  p.stop.assign(request.stop().begin(), request.stop().end());
  p.stop_token_ids.assign(request.stop_token_ids().begin(), request.stop_token_ids().end());
  p.ignore_eos = request.ignore_eos();
  p.logprobs = request.has_logprobs() ? request.logprobs() : -1;
  return p;
}

absl::Status ApplyLimits(const ServedModel& model, int64_t largest_capacity_tokens,
                         PreparedGenerate& p) {
  const int64_t prompt = static_cast<int64_t>(p.prompt_ids.size());
  const int64_t limit = std::min(model.context_tokens, largest_capacity_tokens);
  const bool context_binds = model.context_tokens <= largest_capacity_tokens;
  const std::string what =
      context_binds ? absl::StrCat("the model's context of ", model.context_tokens, " tokens")
                    : absl::StrCat("the largest attention node's cache capacity of ",
                                   largest_capacity_tokens, " tokens");
  if (p.max_tokens) {
    if (prompt + *p.max_tokens > limit) {
      return absl::InvalidArgumentError(absl::StrCat("max_tokens: prompt of ", prompt,
                                                     " tokens + max_tokens ", *p.max_tokens,
                                                     " = ", prompt + *p.max_tokens,
                                                     " exceeds ", what));
    }
    return absl::OkStatus();
  }
  if (prompt >= limit) {
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", prompt,
                                                   " tokens leave no room to generate within ",
                                                   what));
  }
  p.max_tokens = static_cast<int32_t>(std::min<int64_t>(kDefaultMaxTokens, limit - prompt));
  return absl::OkStatus();
}

}  // namespace dsv2::coordinator
