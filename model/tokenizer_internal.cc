// The stages declared in tokenizer_internal.h are implemented one file each; every stage
// mirrors the corresponding code of HuggingFace `tokenizers` (0.23.3) so that the same
// input takes the same decisions in the same order:
//   tokenizer_regex_translate.cc  TranslateOnigRegex (Oniguruma -> RE2)
//   tokenizer_regex.cc            OnigRegex (SysRegex / onig find_iter)
//   tokenizer_pretokenize.cc      PreTokenizer (Pattern::find_matches,
//                                 SplitDelimiterBehavior, Split / Digits / ByteLevel)
//   tokenizer_bpe.cc              BpeModel (BPE::merge_word, Word::merge_all)
//   tokenizer_added_tokens.cc     AddedVocabulary (add_tokens, find_matches,
//                                 extract_and_normalize)
// This file holds the tokenizer.json accessors they share. tests/model/tokenizer_test.cc
// compares the results with the library on tests/data/tokenizer_cases.json.
#include "model/tokenizer_internal.h"

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace dsv2::tokenizer_internal {

using ::nlohmann::json;

const json* JsonMember(const json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(std::string(key));
  return it == obj.end() ? nullptr : &*it;
}

absl::StatusOr<bool> JsonBool(const json& obj, std::string_view key, bool default_value,
                              std::string_view where) {
  const json* v = JsonMember(obj, key);
  if (v == nullptr || v->is_null()) return default_value;
  if (!v->is_boolean()) {
    return absl::InvalidArgumentError(
        absl::StrCat(ToAbsl(where), ".", ToAbsl(key), " is not a boolean"));
  }
  return v->get<bool>();
}

absl::StatusOr<std::string> JsonString(const json& obj, std::string_view key,
                                       std::string_view where) {
  const json* v = JsonMember(obj, key);
  if (v == nullptr || !v->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(
        ToAbsl(where), ".", ToAbsl(key), v == nullptr ? " is missing" : " is not a string"));
  }
  return v->get<std::string>();
}

}  // namespace dsv2::tokenizer_internal
