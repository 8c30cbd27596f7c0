// Byte-level BPE tokenizer loaded from a HuggingFace `tokenizer.json` (MODEL_SPEC.md §8),
// giving exactly the ids and text of HuggingFace `tokenizers` (checked against 0.23.3 by
// tests/model/tokenizer_test.cc on tests/data/tokenizer_cases.json).
//
// Encode(text) follows the `tokenizers` pipeline:
//   1. added tokens (tokenizer.json "added_tokens": BOS/EOS and, for DeepSeek-V2, the 13
//      byte-level characters of ids 100002-100014) are cut out of the raw text first:
//      leftmost-longest match, non-normalized tokens before normalized ones, with the
//      single_word / lstrip / rstrip flags; a literal "ü" in text is id 100014;
//   2. every other piece goes through the pre-tokenizer ("Split" regexes with Oniguruma
//      semantics, "Digits", "ByteLevel") and then byte-level BPE with ranked merges;
//   3. with add_special_tokens, the post-processor's template adds its special tokens
//      (DeepSeek-V2: BOS in front).
// Text that is not valid UTF-8 is first made valid the way Rust/Python do it (each
// maximal invalid subpart becomes U+FFFD): `tokenizers` only accepts valid strings.
//
// Decode(ids) concatenates the tokens' bytes (ByteLevel decoder: characters of the byte
// alphabet map back to bytes, any other token, e.g. "<｜begin▁of▁sentence｜>", is its own
// UTF-8) and converts them like Rust's String::from_utf8_lossy: each maximal invalid
// subpart becomes one U+FFFD. So the added token "ü" (100014) decodes to "\xFC", i.e.
// U+FFFD, exactly as in `tokenizers`. Ids that are neither in the vocabulary nor added
// tokens (negative, >= num_ids(), or holes) are skipped, as `tokenizers` does.
//
// What it supports and refuses: model "BPE" (merges as "a b" strings or [a, b] pairs,
// unk_token/fuse_unk, ignore_merges); normalizer null or an empty "Sequence";
// pre-tokenizers "Sequence", "Split" (Regex or String pattern, all behaviours, invert),
// "Digits", "ByteLevel" (add_prefix_space, use_regex); post-processors
// "TemplateProcessing" (single), "RobertaProcessing", "BertProcessing", "ByteLevel",
// "Sequence", null; decoder "ByteLevel". Anything else (other normalizers, byte_fallback,
// dropout, regex lookaround other than a top-level `\s+(?!\S)` alternative, `\b`,
// backreferences, ...) fails to load with Unimplemented rather than tokenizing
// differently. Regex classes `\s \d \w \p{L} \p{N}` use tables measured on `tokenizers`;
// other `\p{...}` use the linked RE2's Unicode tables, which may be older. "truncation"
// and "padding" are ignored (the server enforces its own context limit).
//
// tokenizer_config.json supplies bos_token / eos_token (strings or {"content": ...}) and
// chat_template. Its add_bos_token / add_eos_token are not used: the post-processor of
// tokenizer.json alone decides what Encode(..., add_special_tokens=true) adds, as in
// `tokenizers` and in transformers 5.x (which loads a ByteLevel tokenizer.json as is).
//
// Thread-safety: a Tokenizer is immutable after construction except for an internal,
// mutex-guarded BPE cache; all const methods are safe for concurrent use. A
// StreamingDecoder is one-thread-only and borrows its Tokenizer, which must outlive it.
#ifndef DSV2_MODEL_TOKENIZER_H_
#define DSV2_MODEL_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace dsv2 {

namespace tokenizer_internal {
class AddedVocabulary;
class BpeModel;
class PreTokenizer;
}  // namespace tokenizer_internal

class Tokenizer {
 public:
  // Loads dir/tokenizer.json and, when present, dir/tokenizer_config.json. When the
  // config has no chat_template, dir/chat_template.jinja is used if it exists.
  // Errors: NotFound (no tokenizer.json), InvalidArgument (malformed file; the message
  // names the file and the offending key), Unimplemented (a feature listed above).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromDir(const std::string& dir);
  // Same from explicit paths; tokenizer_config_json == "" means none.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFiles(
      const std::string& tokenizer_json, const std::string& tokenizer_config_json);
  // Same from the files' contents; tokenizer_config_json == "" means none.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJsonText(
      std::string_view tokenizer_json, std::string_view tokenizer_config_json);
  // Same from parsed JSON; tokenizer_config == nullptr means none. Neither is retained.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(
      const nlohmann::json& tokenizer_json, const nlohmann::json* tokenizer_config);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // HF encode(text, add_special_tokens=...).ids.
  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens) const;

  // HF decode(ids, skip_special_tokens=...). skip_special_tokens drops the ids whose
  // token is an added token marked "special" (BOS/EOS; not the 13 byte characters).
  std::string Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const;

  // Token strings from tokenizer_config.json ("" when absent; then bos_token falls back
  // to the special token the post-processor puts before the text, if any) and their ids
  // (nullopt when the string is not a token).
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }
  std::optional<int32_t> bos_id() const { return bos_id_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }

  // tokenizer_config.json "chat_template" (a string, or the entry named "default" of a
  // list of {name, template}), else chat_template.jinja (FromDir only).
  const std::optional<std::string>& chat_template() const { return chat_template_; }

  // Whether Encode(..., add_special_tokens=true) puts the BOS id first (from the
  // post-processor, not from tokenizer_config.json's add_bos_token).
  bool add_bos_token() const { return add_bos_token_; }

  // Largest id the tokenizer can produce or decode, plus one (DeepSeek-V2: 100015; the
  // model's vocab_size of 102400 includes padding ids that decode to nothing).
  int32_t num_ids() const { return num_ids_; }

  // Added tokens first, then the BPE vocabulary (byte-level form, e.g. "Ġworld").
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // Inverse of TokenToId; nullopt for unknown ids.
  std::optional<std::string> IdToToken(int32_t id) const;

 private:
  friend class StreamingDecoder;
  struct TemplateItem {
    bool is_sequence = false;  // the encoded text ("$A")
    std::vector<int32_t> ids;  // else: these special ids
  };

  Tokenizer();
  // Sets template_ from tokenizer.json's "post_processor".
  absl::Status ParsePostProcessor(const nlohmann::json& config);
  // Appends the bytes of `id` to *bytes; false when the id is unknown or skipped.
  bool AppendTokenBytes(int32_t id, bool skip_special_tokens, std::string* bytes) const;

  // Constant after construction.
  std::unique_ptr<tokenizer_internal::BpeModel> model_;
  std::unique_ptr<tokenizer_internal::AddedVocabulary> added_;
  std::unique_ptr<tokenizer_internal::PreTokenizer> pre_tokenizer_;
  std::vector<TemplateItem> template_;  // empty: add nothing
  // Per id: the ByteLevel decoder's bytes, whether the id exists, whether it is special.
  std::vector<std::string> id_bytes_;
  std::vector<uint8_t> id_flags_;
  int32_t num_ids_ = 0;
  std::string bos_token_;
  std::string eos_token_;
  std::optional<int32_t> bos_id_;
  std::optional<int32_t> eos_id_;
  std::optional<std::string> chat_template_;
  bool add_bos_token_ = false;
};

// Incremental Decode for streaming generated text. Push(id) returns the text that became
// final with that id: never half a UTF-8 character, since a trailing byte sequence that
// could still be completed is held back (at most 3 bytes). Finish() returns the rest,
// an incomplete sequence becoming U+FFFD. The concatenation of all returned strings is
// exactly Decode(all pushed ids, skip_special_tokens).
// Thread-safety: one thread only. The Tokenizer must outlive the decoder.
class StreamingDecoder {
 public:
  StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens);

  std::string Push(int32_t id);
  // Flushes the held bytes; the decoder can then be reused for a new stream.
  std::string Finish();

 private:
  const Tokenizer& tokenizer_;
  const bool skip_special_tokens_;
  std::string pending_;  // bytes not yet returned: an incomplete UTF-8 sequence
};

}  // namespace dsv2

#endif  // DSV2_MODEL_TOKENIZER_H_
