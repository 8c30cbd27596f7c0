// OnigRegex (tokenizer_internal.h): a translated pattern compiled with RE2, searched with
// the semantics of onig's find_iter as `tokenizers` (0.23.3) calls it, including the
// emulated `\s+(?!\S)` alternative.
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/tokenizer_internal.h"
#include "model/unicode_internal.h"
#include "re2/re2.h"

namespace dsv2::tokenizer_internal {
namespace {

namespace uni = ::dsv2::unicode_internal;

std::unique_ptr<re2::RE2> NewRe2(const std::string& pattern) {
  re2::RE2::Options options;
  options.set_log_errors(false);
  options.set_max_mem(64 << 20);
  return std::make_unique<re2::RE2>(pattern, options);
}

}  // namespace

OnigRegex::~OnigRegex() = default;

absl::StatusOr<std::unique_ptr<OnigRegex>> OnigRegex::Compile(std::string_view pattern) {
  absl::StatusOr<TranslatedRegex> t = TranslateOnigRegex(pattern);
  if (!t.ok()) return t.status();
  std::unique_ptr<OnigRegex> regex(new OnigRegex());
  regex->re_ = NewRe2(t->re2);
  if (!regex->re_->ok()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot compile regex \"", ToAbsl(pattern),
                                                   "\" (as RE2 \"", t->re2,
                                                   "\"): ", regex->re_->error()));
  }
  regex->has_lookahead_alternative_ = t->has_lookahead_alternative;
  if (!t->rest.empty()) {
    regex->rest_ = NewRe2(t->rest);
    if (!regex->rest_->ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot compile regex \"", ToAbsl(pattern), "\": ", regex->rest_->error()));
    }
  }
  return regex;
}

absl::StatusOr<std::unique_ptr<OnigRegex>> OnigRegex::Literal(std::string_view literal) {
  if (literal.empty()) return absl::InvalidArgumentError("empty Split string pattern");
  std::unique_ptr<OnigRegex> regex(new OnigRegex());
  regex->re_ = NewRe2(re2::RE2::QuoteMeta(re2::StringPiece(literal.data(), literal.size())));
  if (!regex->re_->ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot compile literal \"", ToAbsl(literal), "\""));
  }
  return regex;
}

bool OnigRegex::Search(std::string_view text, size_t from, ByteRange* match) const {
  const re2::StringPiece sp(text.data(), text.size());
  size_t pos = from;
  while (pos <= text.size()) {
    re2::StringPiece groups[2];
    const int num_groups = has_lookahead_alternative_ ? 2 : 1;
    if (!re_->Match(sp, pos, text.size(), re2::RE2::UNANCHORED, groups, num_groups)) {
      return false;
    }
    match->begin = static_cast<size_t>(groups[0].data() - text.data());
    match->end = match->begin + groups[0].size();
    if (!has_lookahead_alternative_ || groups[1].data() == nullptr || match->end == text.size()) {
      return true;
    }
    // `\s+` took the whole whitespace run and a non-space follows, so `(?!\S)` fails
    // there; backtracking gives the last whitespace character back.
    size_t last = match->end - 1;
    while ((static_cast<uint8_t>(text[last]) & 0xC0) == 0x80) --last;
    if (last > match->begin) {
      match->end = last;
      return true;
    }
    // One whitespace character: this alternative fails here; try the later ones.
    if (rest_ != nullptr &&
        rest_->Match(sp, match->begin, text.size(), re2::RE2::ANCHOR_START, groups, 1)) {
      match->end = match->begin + groups[0].size();
      return true;
    }
    pos = match->begin + uni::Utf8SequenceLength(static_cast<uint8_t>(text[match->begin]));
  }
  return false;
}

void OnigRegex::FindAll(std::string_view text, std::vector<ByteRange>* matches) const {
  size_t last_end = 0;
  std::optional<size_t> last_match_end;
  while (last_end <= text.size()) {
    ByteRange m;
    if (!Search(text, last_end, &m)) return;
    if (m.begin == m.end && last_match_end == m.end) {
      last_end += last_end < text.size()
                      ? uni::Utf8SequenceLength(static_cast<uint8_t>(text[last_end]))
                      : 1;
      continue;
    }
    last_end = m.end;
    last_match_end = m.end;
    matches->push_back(m);
  }
}

}  // namespace dsv2::tokenizer_internal
