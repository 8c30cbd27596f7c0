// The stages of model/tokenizer.h, each reproducing one component of HuggingFace
// `tokenizers` (0.23.3); exposed here for tests, not a public API.
//
//   OnigRegex        a "Regex" pattern of tokenizer.json (compiled by `tokenizers` with
//                    Oniguruma, Ruby syntax) translated to RE2, with find_iter semantics.
//   PreTokenizer     tokenizer.json "pre_tokenizer": Sequence / Split / Digits / ByteLevel.
//   BpeModel         tokenizer.json "model" of type BPE: vocabulary, ranked merges, cache.
//   AddedVocabulary  tokenizer.json "added_tokens": ids and how they are cut out of text.
//
// Thread-safety: all classes are immutable after construction (BpeModel's cache is
// guarded by its own mutex); const methods are safe for concurrent use.
#ifndef DSV2_MODEL_TOKENIZER_INTERNAL_H_
#define DSV2_MODEL_TOKENIZER_INTERNAL_H_

#include <array>
#include <bitset>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace re2 {
class RE2;
}  // namespace re2

namespace dsv2::tokenizer_internal {

// absl::string_view is not std::string_view in every Abseil build (Debian's 20220623 has
// its own class), so std::string_view values pass through this on their way into absl.
inline absl::string_view ToAbsl(std::string_view s) { return {s.data(), s.size()}; }

// Typed access to members of tokenizer.json objects. `where` names the object in error
// messages ("pre_tokenizer.pretokenizers[2]"). JsonMember returns nullptr when `obj` is
// not an object or lacks `key`; a null member counts as absent for the typed getters.
const nlohmann::json* JsonMember(const nlohmann::json& obj, std::string_view key);
absl::StatusOr<bool> JsonBool(const nlohmann::json& obj, std::string_view key, bool default_value,
                              std::string_view where);
absl::StatusOr<std::string> JsonString(const nlohmann::json& obj, std::string_view key,
                                       std::string_view where);

// Byte offsets [begin, end).
struct ByteRange {
  size_t begin = 0;
  size_t end = 0;
};

// An Oniguruma regex translated to RE2 syntax. Oniguruma (UTF-8, Ruby syntax) differs
// from RE2 where it matters here: `\s` `\d` `\w` are Unicode (RE2: ASCII), `$` / `^` match
// at every line end / start, `(?m)` is RE2's `(?s)`, `\uHHHH` and `{,n}` exist, and
// lookaround exists. A top-level alternative that is exactly `\s+(?!\S)` (GPT-2, Llama 3,
// Qwen pre-tokenizers) is emulated: it is compiled as the capture group `(\s+)` and
// `rest` holds the alternatives after it, which are tried when the lookahead fails.
struct TranslatedRegex {
  std::string re2;
  bool has_lookahead_alternative = false;
  std::string rest;  // "" when nothing follows the lookahead alternative
};
// Unimplemented for constructs RE2 cannot express with the same meaning (other
// lookaround, `\b`, backreferences, atomic groups, possessive quantifiers, ...).
absl::StatusOr<TranslatedRegex> TranslateOnigRegex(std::string_view pattern);

class OnigRegex {
 public:
  // `pattern` in Oniguruma syntax; InvalidArgument / Unimplemented naming the pattern.
  static absl::StatusOr<std::unique_ptr<OnigRegex>> Compile(std::string_view pattern);
  // A literal string (tokenizer.json Split pattern {"String": ...}); `literal` non-empty.
  static absl::StatusOr<std::unique_ptr<OnigRegex>> Literal(std::string_view literal);
  ~OnigRegex();

  // Appends the matches of onig's find_iter: leftmost-first, non-overlapping, left to
  // right; an empty match right at the end of the previous match is skipped.
  // REQUIRES: text is valid UTF-8.
  void FindAll(std::string_view text, std::vector<ByteRange>* matches) const;

 private:
  OnigRegex() = default;
  // First match starting at or after `from`, with the lookahead emulation applied.
  bool Search(std::string_view text, size_t from, ByteRange* match) const;

  std::unique_ptr<re2::RE2> re_;
  std::unique_ptr<re2::RE2> rest_;  // null when there is no lookahead alternative or rest
  bool has_lookahead_alternative_ = false;
};

// How a Split puts matches and the text between them into pieces (tokenizers'
// SplitDelimiterBehavior).
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

class PreTokenizer {
 public:
  // `config` is tokenizer.json's "pre_tokenizer"; null gives one piece per text.
  static absl::StatusOr<std::unique_ptr<PreTokenizer>> FromJson(const nlohmann::json& config);
  ~PreTokenizer();

  // Appends the non-empty pieces of `text` as raw bytes (the byte-level mapping is the
  // BPE model's job). ByteLevel's add_prefix_space may prepend a space to a piece.
  // REQUIRES: text is valid UTF-8.
  void PreTokenize(std::string_view text, std::vector<std::string>* pieces) const;

  class Step;

 private:
  PreTokenizer() = default;
  std::vector<std::unique_ptr<Step>> steps_;
};

class BpeModel {
 public:
  // `config` is tokenizer.json's "model".
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(const nlohmann::json& config);

  // Appends the ids of one pre-tokenized piece (raw bytes). Results for pieces shorter
  // than kMaxCachedPieceBytes are cached (at most kCacheEntries, then the cache restarts).
  void Tokenize(std::string_view piece, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // nullptr for ids not in the vocabulary.
  const std::string* IdToToken(int32_t id) const;
  // Number of vocabulary entries (tokenizers' Model::get_vocab_size).
  size_t vocab_size() const { return vocab_.size(); }
  // Largest id in the vocabulary, -1 when empty.
  int32_t max_id() const { return static_cast<int32_t>(id_to_token_.size()) - 1; }

  static constexpr size_t kMaxCachedPieceBytes = 256;
  static constexpr size_t kCacheEntries = 16384;

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  BpeModel() = default;
  // Parts of FromJson: "vocab" into vocab_ / id_to_token_ / has_id_, then "merges" (which
  // name vocabulary tokens) into merges_.
  absl::Status ReadVocab(const nlohmann::json& config);
  absl::Status ReadMerges(const nlohmann::json& config);
  void MergeWord(std::string_view piece, std::vector<int32_t>* ids) const;

  // Constant after construction.
  absl::flat_hash_map<std::string, int32_t> vocab_;  // byte-level token -> id
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  absl::flat_hash_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> merge
  std::array<int32_t, 256> byte_ids_{};          // id of each byte's character, or -1
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;

  mutable absl::Mutex mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_ ABSL_GUARDED_BY(mu_);
};

struct AddedToken {
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;

  bool operator==(const AddedToken&) const = default;
};

class AddedVocabulary {
 public:
  // `config` is tokenizer.json's "added_tokens". Like tokenizers' AddedVocabulary, the
  // ids written in the file are ignored: a token already in `model` keeps its id, any
  // other gets the next id after the vocabulary / the previous added tokens; a repeated
  // token replaces the earlier flags, and "special" sticks to the content once set.
  static absl::StatusOr<std::unique_ptr<AddedVocabulary>> FromJson(const nlohmann::json& config,
                                                                   const BpeModel& model);

  // A slice of the text: an added token (id >= 0) or text to pre-tokenize (id == -1).
  struct Segment {
    size_t begin;
    size_t end;
    int32_t id;
  };
  // Cuts the added tokens out of `text`: non-normalized tokens first, then normalized
  // ones inside the remaining text (the normalizer is the identity). Empty segments are
  // dropped. REQUIRES: text is valid UTF-8.
  void Split(std::string_view text, std::vector<Segment>* segments) const;

  std::optional<int32_t> TokenToId(std::string_view content) const;
  const AddedToken* IdToToken(int32_t id) const;  // nullptr when not an added id
  bool IsSpecial(std::string_view content) const { return special_.contains(ToAbsl(content)); }
  int32_t max_id() const { return max_id_; }  // -1 when there are none

 private:
  // Byte trie of token contents for leftmost-longest matching (aho-corasick's
  // MatchKind::LeftmostLongest in `tokenizers`).
  class Trie {
   public:
    Trie();
    void Insert(std::string_view s, int32_t id);
    // Length of the longest token starting at text[pos] (0 when none) and its id.
    size_t LongestAt(std::string_view text, size_t pos, int32_t* id) const;
    bool empty() const { return nodes_.size() == 1; }

   private:
    struct Node {
      std::vector<std::pair<uint8_t, int32_t>> children;  // sorted by byte
      int32_t id = -1;
    };
    std::vector<Node> nodes_;
    std::bitset<256> first_bytes_;
  };

  AddedVocabulary() = default;
  // tokenizers' AddedVocabulary::find_matches on one piece of text.
  void FindMatches(std::string_view sentence, const Trie& trie, size_t base,
                   std::vector<Segment>* out) const;

  absl::flat_hash_map<std::string, int32_t> ids_;
  absl::flat_hash_map<int32_t, AddedToken> tokens_;
  absl::flat_hash_set<std::string> special_;
  Trie non_normalized_;
  Trie normalized_;
  int32_t max_id_ = -1;
};

}  // namespace dsv2::tokenizer_internal

#endif  // DSV2_MODEL_TOKENIZER_INTERNAL_H_
