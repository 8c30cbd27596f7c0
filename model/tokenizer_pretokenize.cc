// PreTokenizer (tokenizer_internal.h): tokenizer.json's "pre_tokenizer" as `tokenizers`
// (0.23.3) runs it: Pattern::find_matches for regexes and char predicates,
// NormalizedString::split with its SplitDelimiterBehavior, and the Sequence / Split /
// Digits / ByteLevel pre-tokenizers, each a Step applied to the previous step's pieces.
#include <algorithm>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/tokenizer_internal.h"
#include "model/unicode_internal.h"

namespace dsv2::tokenizer_internal {
namespace {

using ::nlohmann::json;
namespace uni = ::dsv2::unicode_internal;

struct Match {
  ByteRange range;
  bool is_match;
};

// tokenizers' Pattern::find_matches for a regex: every match and every gap, in order.
std::vector<Match> RegexMatches(const OnigRegex& regex, std::string_view text) {
  std::vector<Match> out;
  if (text.empty()) {
    out.push_back({{0, 0}, false});
    return out;
  }
  std::vector<ByteRange> found;
  regex.FindAll(text, &found);
  size_t prev = 0;
  for (const ByteRange& m : found) {
    if (prev != m.begin) out.push_back({{prev, m.begin}, false});
    out.push_back({m, true});
    prev = m.end;
  }
  if (prev != text.size()) out.push_back({{prev, text.size()}, false});
  return out;
}

// tokenizers' Pattern::find_matches for a char predicate: each matching character is its
// own match.
template <typename Pred>
std::vector<Match> CharMatches(std::string_view text, Pred pred) {
  std::vector<Match> out;
  if (text.empty()) {
    out.push_back({{0, 0}, false});
    return out;
  }
  size_t last_offset = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t begin = pos;
    const char32_t c = uni::DecodeUtf8(text, &pos);
    if (pred(c)) {
      if (last_offset < begin) out.push_back({{last_offset, begin}, false});
      out.push_back({{begin, pos}, true});
      last_offset = pos;
    }
  }
  if (text.size() > last_offset) out.push_back({{last_offset, text.size()}, false});
  return out;
}

// tokenizers' NormalizedString::split: applies the behaviour and appends the non-empty
// pieces.
void SplitByMatches(std::string_view text, std::vector<Match> matches, SplitBehavior behavior,
                    bool invert, std::vector<std::string>* out) {
  if (invert) {
    for (Match& m : matches) m.is_match = !m.is_match;
  }
  std::vector<Match> pieces;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      pieces = std::move(matches);
      break;
    case SplitBehavior::kRemoved:
      for (const Match& m : matches) {
        if (!m.is_match) pieces.push_back(m);
      }
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Match& m : matches) {
        if (m.is_match && !previous_match && !pieces.empty()) {
          pieces.back().range.end = m.range.end;
        } else {
          pieces.push_back({m.range, false});
        }
        previous_match = m.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = matches.rbegin(); it != matches.rend(); ++it) {
        if (it->is_match && !previous_match && !pieces.empty()) {
          pieces.back().range.begin = it->range.begin;
        } else {
          pieces.push_back({it->range, false});
        }
        previous_match = it->is_match;
      }
      std::reverse(pieces.begin(), pieces.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Match& m : matches) {
        if (m.is_match == previous_match && !pieces.empty()) {
          pieces.back().range.end = m.range.end;
        } else {
          pieces.push_back({m.range, false});
        }
        previous_match = m.is_match;
      }
      break;
    }
  }
  for (const Match& m : pieces) {
    if (m.range.end > m.range.begin) {
      out->emplace_back(text.substr(m.range.begin, m.range.end - m.range.begin));
    }
  }
}

absl::StatusOr<SplitBehavior> ParseBehavior(const std::string& name, std::string_view where) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  return absl::InvalidArgumentError(
      absl::StrCat(ToAbsl(where), ": unknown Split behavior \"", name, "\""));
}

// GPT-2's pre-tokenization regex, used by ByteLevel with use_regex = true.
constexpr char kGpt2Regex[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace

class PreTokenizer::Step {
 public:
  virtual ~Step() = default;
  // Appends the non-empty pieces that `piece` splits into.
  virtual void Split(std::string_view piece, std::vector<std::string>* out) const = 0;
};

namespace {

class RegexSplitStep : public PreTokenizer::Step {
 public:
  RegexSplitStep(std::unique_ptr<OnigRegex> regex, SplitBehavior behavior, bool invert)
      : regex_(std::move(regex)), behavior_(behavior), invert_(invert) {}
  void Split(std::string_view piece, std::vector<std::string>* out) const override {
    SplitByMatches(piece, RegexMatches(*regex_, piece), behavior_, invert_, out);
  }

 private:
  std::unique_ptr<OnigRegex> regex_;
  SplitBehavior behavior_;
  bool invert_;
};

class DigitsStep : public PreTokenizer::Step {
 public:
  explicit DigitsStep(bool individual) : individual_(individual) {}
  void Split(std::string_view piece, std::vector<std::string>* out) const override {
    SplitByMatches(piece, CharMatches(piece, uni::IsNumeric),
                   individual_ ? SplitBehavior::kIsolated : SplitBehavior::kContiguous,
                   /*invert=*/false, out);
  }

 private:
  bool individual_;
};

class ByteLevelStep : public PreTokenizer::Step {
 public:
  ByteLevelStep(bool add_prefix_space, std::unique_ptr<OnigRegex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
  void Split(std::string_view piece, std::vector<std::string>* out) const override {
    std::string prefixed;
    if (add_prefix_space_ && !piece.starts_with(' ')) {
      prefixed = absl::StrCat(" ", ToAbsl(piece));
      piece = prefixed;
    }
    if (regex_ == nullptr) {
      if (!piece.empty()) out->emplace_back(piece);
      return;
    }
    SplitByMatches(piece, RegexMatches(*regex_, piece), SplitBehavior::kIsolated,
                   /*invert=*/false, out);
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<OnigRegex> regex_;  // null when use_regex is false
};

using Steps = std::vector<std::unique_ptr<PreTokenizer::Step>>;

absl::Status AddSteps(const json& config, const std::string& where, Steps* steps);

absl::Status AddSequenceSteps(const json& config, const std::string& where, Steps* steps) {
  const json* list = JsonMember(config, "pretokenizers");
  if (list == nullptr || !list->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".pretokenizers is not an array"));
  }
  for (size_t k = 0; k < list->size(); ++k) {
    absl::Status s = AddSteps((*list)[k], absl::StrCat(where, ".pretokenizers[", k, "]"), steps);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status AddSplitStep(const json& config, const std::string& where, Steps* steps) {
  const json* pattern = JsonMember(config, "pattern");
  absl::StatusOr<std::unique_ptr<OnigRegex>> regex =
      absl::InvalidArgumentError(absl::StrCat(where, ".pattern needs \"Regex\" or \"String\""));
  if (pattern != nullptr && JsonMember(*pattern, "Regex") != nullptr) {
    absl::StatusOr<std::string> re = JsonString(*pattern, "Regex", where + ".pattern");
    if (!re.ok()) return re.status();
    regex = OnigRegex::Compile(*re);
  } else if (pattern != nullptr && JsonMember(*pattern, "String") != nullptr) {
    absl::StatusOr<std::string> literal = JsonString(*pattern, "String", where + ".pattern");
    if (!literal.ok()) return literal.status();
    regex = OnigRegex::Literal(*literal);
  }
  if (!regex.ok()) {
    return absl::Status(regex.status().code(), absl::StrCat(where, ": ", regex.status().message()));
  }
  absl::StatusOr<std::string> behavior_name = JsonString(config, "behavior", where);
  if (!behavior_name.ok()) return behavior_name.status();
  absl::StatusOr<SplitBehavior> behavior = ParseBehavior(*behavior_name, where);
  if (!behavior.ok()) return behavior.status();
  absl::StatusOr<bool> invert = JsonBool(config, "invert", false, where);
  if (!invert.ok()) return invert.status();
  steps->push_back(std::make_unique<RegexSplitStep>(*std::move(regex), *behavior, *invert));
  return absl::OkStatus();
}

absl::Status AddDigitsStep(const json& config, const std::string& where, Steps* steps) {
  absl::StatusOr<bool> individual = JsonBool(config, "individual_digits", false, where);
  if (!individual.ok()) return individual.status();
  steps->push_back(std::make_unique<DigitsStep>(*individual));
  return absl::OkStatus();
}

absl::Status AddByteLevelStep(const json& config, const std::string& where, Steps* steps) {
  absl::StatusOr<bool> prefix = JsonBool(config, "add_prefix_space", true, where);
  if (!prefix.ok()) return prefix.status();
  absl::StatusOr<bool> use_regex = JsonBool(config, "use_regex", true, where);
  if (!use_regex.ok()) return use_regex.status();
  std::unique_ptr<OnigRegex> regex;
  if (*use_regex) {
    absl::StatusOr<std::unique_ptr<OnigRegex>> compiled = OnigRegex::Compile(kGpt2Regex);
    if (!compiled.ok()) return compiled.status();
    regex = *std::move(compiled);
  }
  steps->push_back(std::make_unique<ByteLevelStep>(*prefix, std::move(regex)));
  return absl::OkStatus();
}

// Appends the steps of one tokenizer.json pre-tokenizer object (a Sequence flattened).
absl::Status AddSteps(const json& config, const std::string& where, Steps* steps) {
  if (!config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(where, " is not an object"));
  }
  absl::StatusOr<std::string> type = JsonString(config, "type", where);
  if (!type.ok()) return type.status();
  if (*type == "Sequence") return AddSequenceSteps(config, where, steps);
  if (*type == "Split") return AddSplitStep(config, where, steps);
  if (*type == "Digits") return AddDigitsStep(config, where, steps);
  if (*type == "ByteLevel") return AddByteLevelStep(config, where, steps);
  return absl::UnimplementedError(
      absl::StrCat(where, ": pre-tokenizer type \"", *type, "\" is not supported"));
}

}  // namespace

PreTokenizer::~PreTokenizer() = default;

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::FromJson(const json& config) {
  std::unique_ptr<PreTokenizer> pre(new PreTokenizer());
  if (config.is_null()) return pre;
  absl::Status s = AddSteps(config, "pre_tokenizer", &pre->steps_);
  if (!s.ok()) return s;
  return pre;
}

void PreTokenizer::PreTokenize(std::string_view text, std::vector<std::string>* pieces) const {
  std::vector<std::string> current;
  if (!text.empty()) current.emplace_back(text);
  std::vector<std::string> next;
  for (const auto& step : steps_) {
    next.clear();
    for (const std::string& piece : current) step->Split(piece, &next);
    current.swap(next);
  }
  for (std::string& piece : current) pieces->push_back(std::move(piece));
}

}  // namespace dsv2::tokenizer_internal
