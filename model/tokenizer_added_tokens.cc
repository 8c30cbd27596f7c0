// AddedVocabulary (tokenizer_internal.h): tokenizer.json's "added_tokens" as `tokenizers`
// (0.23.3) assigns their ids (AddedVocabulary::add_tokens) and cuts them out of the text
// (find_matches with leftmost-longest matching, then extract_and_normalize: non-normalized
// tokens first, normalized ones in what remains), with the single_word / lstrip / rstrip
// flags.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/tokenizer_internal.h"
#include "model/unicode_internal.h"

namespace dsv2::tokenizer_internal {

using ::nlohmann::json;
namespace uni = ::dsv2::unicode_internal;

AddedVocabulary::Trie::Trie() : nodes_(1) {}

void AddedVocabulary::Trie::Insert(std::string_view s, int32_t id) {
  if (s.empty()) return;
  first_bytes_.set(static_cast<uint8_t>(s[0]));
  int32_t node = 0;
  for (char ch : s) {
    const uint8_t b = static_cast<uint8_t>(ch);
    auto& children = nodes_[node].children;
    auto it = std::lower_bound(children.begin(), children.end(), std::make_pair(b, int32_t{-1}));
    if (it != children.end() && it->first == b) {
      node = it->second;
    } else {
      const int32_t child = static_cast<int32_t>(nodes_.size());
      children.insert(it, {b, child});
      nodes_.emplace_back();  // invalidates `children`; not used below
      node = child;
    }
  }
  nodes_[node].id = id;
}

size_t AddedVocabulary::Trie::LongestAt(std::string_view text, size_t pos, int32_t* id) const {
  if (pos >= text.size() || !first_bytes_.test(static_cast<uint8_t>(text[pos]))) return 0;
  size_t best = 0;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const uint8_t b = static_cast<uint8_t>(text[i]);
    const auto& children = nodes_[node].children;
    auto it = std::lower_bound(children.begin(), children.end(), std::make_pair(b, int32_t{-1}));
    if (it == children.end() || it->first != b) break;
    node = it->second;
    if (nodes_[node].id >= 0) {
      best = i + 1 - pos;
      *id = nodes_[node].id;
    }
  }
  return best;
}

absl::StatusOr<std::unique_ptr<AddedVocabulary>> AddedVocabulary::FromJson(const json& config,
                                                                           const BpeModel& model) {
  std::unique_ptr<AddedVocabulary> vocab(new AddedVocabulary());
  if (config.is_null()) return vocab;
  if (!config.is_array()) return absl::InvalidArgumentError("added_tokens is not an array");
  for (size_t k = 0; k < config.size(); ++k) {
    const std::string where = absl::StrCat("added_tokens[", k, "]");
    const json& entry = config[k];
    AddedToken token;
    absl::StatusOr<std::string> content = JsonString(entry, "content", where);
    if (!content.ok()) return content.status();
    token.content = *std::move(content);
    absl::StatusOr<bool> special = JsonBool(entry, "special", false, where);
    absl::StatusOr<bool> single_word = JsonBool(entry, "single_word", false, where);
    absl::StatusOr<bool> lstrip = JsonBool(entry, "lstrip", false, where);
    absl::StatusOr<bool> rstrip = JsonBool(entry, "rstrip", false, where);
    for (const auto* flag : {&special, &single_word, &lstrip, &rstrip}) {
      if (!flag->ok()) return flag->status();
    }
    absl::StatusOr<bool> normalized = JsonBool(entry, "normalized", !*special, where);
    if (!normalized.ok()) return normalized.status();
    token.special = *special;
    token.single_word = *single_word;
    token.lstrip = *lstrip;
    token.rstrip = *rstrip;
    token.normalized = *normalized;
    if (token.content.empty()) continue;
    if (token.special) vocab->special_.insert(token.content);
    bool duplicate = false;
    for (const auto& [id, existing] : vocab->tokens_) duplicate = duplicate || existing == token;
    if (duplicate) continue;
    int32_t id;
    if (std::optional<int32_t> known = vocab->TokenToId(token.content)) {
      id = *known;
    } else if (std::optional<int32_t> in_model = model.TokenToId(token.content)) {
      id = *in_model;
    } else {
      const int32_t vocab_size = static_cast<int32_t>(model.vocab_size());
      id = vocab->max_id_ < 0                                  ? vocab_size
           : (vocab->max_id_ >= vocab_size || vocab_size == 0) ? vocab->max_id_ + 1
                                                               : vocab_size;
    }
    vocab->ids_[token.content] = id;
    vocab->tokens_[id] = token;
    vocab->max_id_ = std::max(vocab->max_id_, id);
  }
  for (const auto& [id, token] : vocab->tokens_) {
    (token.normalized ? vocab->normalized_ : vocab->non_normalized_).Insert(token.content, id);
  }
  return vocab;
}

std::optional<int32_t> AddedVocabulary::TokenToId(std::string_view content) const {
  const auto it = ids_.find(ToAbsl(content));
  if (it == ids_.end()) return std::nullopt;
  return it->second;
}

const AddedToken* AddedVocabulary::IdToToken(int32_t id) const {
  const auto it = tokens_.find(id);
  return it == tokens_.end() ? nullptr : &it->second;
}

namespace {

bool StartsWithWordChar(std::string_view s) {
  if (s.empty()) return false;
  size_t pos = 0;
  return uni::IsWordChar(uni::DecodeUtf8(s, &pos));
}

bool EndsWithWordChar(std::string_view s) {
  return !s.empty() && uni::IsWordChar(uni::LastCodepoint(s));
}

// Start of the whitespace run that ends `s` (s.size() when none).
size_t TrailingSpaceStart(std::string_view s) {
  size_t start = s.size();
  while (start > 0) {
    size_t prev = start - 1;
    while (prev > 0 && (static_cast<uint8_t>(s[prev]) & 0xC0) == 0x80) --prev;
    size_t pos = prev;
    if (!uni::IsWhitespace(uni::DecodeUtf8(s, &pos))) break;
    start = prev;
  }
  return start;
}

// Length of the whitespace run that starts `s`.
size_t LeadingSpaceLength(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    size_t next = pos;
    if (!uni::IsWhitespace(uni::DecodeUtf8(s, &next))) break;
    pos = next;
  }
  return pos;
}

}  // namespace

void AddedVocabulary::FindMatches(std::string_view sentence, const Trie& trie, size_t base,
                                  std::vector<Segment>* out) const {
  if (sentence.empty()) return;
  if (trie.empty()) {
    out->push_back({base, base + sentence.size(), -1});
    return;
  }
  size_t start_offset = 0;
  size_t pos = 0;
  while (pos < sentence.size()) {
    int32_t id = -1;
    const size_t len = trie.LongestAt(sentence, pos, &id);
    if (len == 0) {
      ++pos;
      continue;
    }
    size_t start = pos;
    size_t stop = pos + len;
    pos = stop;  // the automaton resumes after the raw match, whatever happens to it below
    const AddedToken& token = tokens_.at(id);
    if (token.single_word) {
      const bool start_space = start == 0 || !EndsWithWordChar(sentence.substr(0, start));
      const bool stop_space = stop == sentence.size() || !StartsWithWordChar(sentence.substr(stop));
      if (!start_space || !stop_space) continue;
    }
    if (token.lstrip) start = std::max(TrailingSpaceStart(sentence.substr(0, start)), start_offset);
    if (token.rstrip) stop += LeadingSpaceLength(sentence.substr(stop));
    if (start > start_offset) out->push_back({base + start_offset, base + start, -1});
    out->push_back({base + start, base + stop, id});
    start_offset = stop;
  }
  if (start_offset < sentence.size()) {
    out->push_back({base + start_offset, base + sentence.size(), -1});
  }
}

void AddedVocabulary::Split(std::string_view text, std::vector<Segment>* segments) const {
  std::vector<Segment> first;
  FindMatches(text, non_normalized_, 0, &first);
  for (const Segment& s : first) {
    if (s.end <= s.begin) continue;
    if (s.id >= 0) {
      segments->push_back(s);
    } else {
      FindMatches(text.substr(s.begin, s.end - s.begin), normalized_, s.begin, segments);
    }
  }
}

}  // namespace dsv2::tokenizer_internal
