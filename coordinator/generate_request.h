// Validation and tokenization of a public Generate request
// (proto/inference.proto) into what an attention node runs. Pure: no I/O.
//
// Order of checks (first failure wins): the input (exactly one of prompt,
// messages, prompt_ids), each field's range (InvalidArgument naming the
// field), tokenization; then, with the cluster's largest attention-node
// capacity, the length limits (InvalidArgument with both numbers).
#ifndef DSV2_COORDINATOR_GENERATE_REQUEST_H_
#define DSV2_COORDINATOR_GENERATE_REQUEST_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "inference.pb.h"
#include "model/chat_template.h"
#include "model/sampling.h"
#include "model/tokenizer.h"

namespace dsv2::coordinator {

inline constexpr int32_t kDefaultMaxTokens = 256;
inline constexpr int32_t kMaxLogprobs = 20;
inline constexpr int kMaxStopStrings = 16;
inline constexpr size_t kMaxStopStringBytes = 256;
inline constexpr int kMaxStopTokenIds = 64;

// What the coordinator knows about the served model.
struct ServedModel {
  int64_t context_tokens = 0;  // max_position_embeddings
  int64_t vocab_size = 0;
  std::vector<int32_t> eos_token_ids;
  const Tokenizer* tokenizer = nullptr;         // null: no text in or out
  const ChatTemplate* chat_template = nullptr;  // null: the fallback format
};

struct PreparedGenerate {
  std::vector<int32_t> prompt_ids;
  // Resolved by ApplyLimits; unset until then when the request left it out.
  std::optional<int32_t> max_tokens;
  SamplingParams sampling;  // seed resolved (random when unset)
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int32_t logprobs = -1;  // -1: none
};

// Field checks and tokenization (InvalidArgument naming the field).
absl::StatusOr<PreparedGenerate> PrepareGenerate(const v1::GenerateRequest& request,
                                                 const ServedModel& model);

// Resolves max_tokens against the context and the largest attention node's
// cache capacity (tokens): unset -> min(256, what fits); set -> prompt +
// max_tokens must fit both, else InvalidArgument with both numbers.
absl::Status ApplyLimits(const ServedModel& model, int64_t largest_capacity_tokens,
                         PreparedGenerate& prepared);

}  // namespace dsv2::coordinator

#endif  // DSV2_COORDINATOR_GENERATE_REQUEST_H_
