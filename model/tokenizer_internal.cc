// Implementation notes: every stage mirrors the corresponding code of HuggingFace
// `tokenizers` (0.23.3) — SysRegex/onig find_iter, Pattern::find_matches,
// SplitDelimiterBehavior, the Digits and ByteLevel pre-tokenizers, BPE's Word::merge_all
// and AddedVocabulary::{add_tokens, find_matches, extract_and_normalize} — so that the
// same input takes the same decisions in the same order. tests/model/tokenizer_test.cc
// compares the results with the library on tests/data/tokenizer_cases.json.
#include "model/tokenizer_internal.h"

#include <algorithm>
#include <queue>

#include "absl/strings/str_cat.h"
#include "model/unicode_internal.h"
#include "re2/re2.h"

namespace dsv2::tokenizer_internal {
namespace {

using ::nlohmann::json;
namespace uni = ::dsv2::unicode_internal;

// ----------------------------------------------------------------------------- regex
std::string HexCodepoint(char32_t c) {
  return absl::StrCat("\\x{", absl::Hex(static_cast<uint32_t>(c), absl::kNoPad), "}");
}

// The body of a character class (no brackets) holding exactly `ranges`.
std::string ClassBody(absl::Span<const uni::CodepointRange> ranges) {
  std::string out;
  for (const auto& r : ranges) {
    out += HexCodepoint(r.lo);
    if (r.hi != r.lo) absl::StrAppend(&out, "-", HexCodepoint(r.hi));
  }
  return out;
}

std::vector<uni::CodepointRange> Complement(absl::Span<const uni::CodepointRange> ranges) {
  std::vector<uni::CodepointRange> out;
  char32_t next = 0;
  for (const auto& r : ranges) {
    if (r.lo > next) out.push_back({next, r.lo - 1});
    next = r.hi + 1;
  }
  if (next <= 0x10FFFF) out.push_back({next, 0x10FFFF});
  return out;
}

// Oniguruma classes that RE2 either means differently (`\s` `\d` `\w` are ASCII in RE2) or
// knows from another Unicode version (`\p{L}`, `\p{N}`): spelled out from the tables
// measured on `tokenizers`.
enum class UClass { kSpace = 0, kLetter, kNumber, kWord, kDigit };

// Class body of `c`, or of its complement.
const std::string& UClassBody(UClass c, bool complement) {
  static const std::array<std::string, 10>* const bodies = [] {
    auto* b = new std::array<std::string, 10>;
    const absl::Span<const uni::CodepointRange> tables[] = {
        uni::WhitespaceRanges(), uni::OnigLetterRanges(), uni::OnigNumberRanges(),
        uni::OnigWordRanges(), uni::OnigDigitRanges()};
    for (int i = 0; i < 5; ++i) {
      (*b)[2 * i] = ClassBody(tables[i]);
      (*b)[2 * i + 1] = ClassBody(Complement(tables[i]));
    }
    return b;
  }();
  return (*bodies)[2 * static_cast<int>(c) + (complement ? 1 : 0)];
}

// Appends class `c` (negated when `negate`) inside a [...] or as a class of its own.
void AppendUClass(UClass c, bool negate, bool in_class, std::string* out) {
  if (in_class) {
    *out += UClassBody(c, negate);
  } else {
    absl::StrAppend(out, negate ? "[^" : "[", UClassBody(c, false), "]");
  }
}

absl::Status Unsupported(std::string_view what, std::string_view pattern) {
  return absl::UnimplementedError(absl::StrCat(
      "regex construct ", ToAbsl(what), " is not supported (pattern \"", ToAbsl(pattern), "\")"));
}

bool IsHex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// Splits `pattern` at its top-level '|' (outside groups and classes).
std::vector<std::string_view> TopLevelAlternatives(std::string_view pattern) {
  std::vector<std::string_view> out;
  int depth = 0;
  bool in_class = false;
  size_t start = 0;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\') {
      ++i;
    } else if (in_class) {
      if (c == ']') in_class = false;
    } else if (c == '[') {
      in_class = true;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') ++i;
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') ++i;  // leading ']' is literal
    } else if (c == '(') {
      ++depth;
    } else if (c == ')') {
      --depth;
    } else if (c == '|' && depth == 0) {
      out.push_back(pattern.substr(start, i - start));
      start = i + 1;
    }
  }
  out.push_back(pattern.substr(start));
  return out;
}

// Translates one Oniguruma fragment (Ruby syntax) to RE2 syntax. Every group becomes
// non-capturing so that the only capture group is the lookahead emulation's.
// *top_level_flags is set when the fragment has a group-less "(?i)", whose effect runs on
// into the following alternatives.
absl::StatusOr<std::string> TranslateFragment(std::string_view p, bool* top_level_flags) {
  std::string out;
  int depth = 0;
  bool in_class = false;
  bool class_start = false;  // just after '[' or '[^'
  size_t i = 0;
  while (i < p.size()) {
    const char c = p[i];
    if (c == '\\') {
      if (i + 1 >= p.size())
        return absl::InvalidArgumentError(
            absl::StrCat("regex \"", ToAbsl(p), "\" ends with a lone backslash"));
      const char e = p[i + 1];
      i += 2;
      class_start = false;
      switch (e) {
        case 's':
        case 'S':
          AppendUClass(UClass::kSpace, e == 'S', in_class, &out);
          break;
        case 'd':
        case 'D':
          AppendUClass(UClass::kDigit, e == 'D', in_class, &out);
          break;
        case 'w':
        case 'W':
          AppendUClass(UClass::kWord, e == 'W', in_class, &out);
          break;
        case 'p':
        case 'P': {
          // \pL, \p{L}, \p{^L}, \P{L}; only L and N are spelled out, other properties are
          // left to RE2's tables.
          std::string_view name;
          if (i < p.size() && p[i] == '{') {
            const size_t close = p.find('}', i);
            if (close == std::string_view::npos) return Unsupported("unterminated \\p{", p);
            name = p.substr(i + 1, close - i - 1);
            i = close + 1;
          } else if (i < p.size()) {
            name = p.substr(i, 1);
            ++i;
          } else {
            return Unsupported("\\p without a name", p);
          }
          bool negate = e == 'P';
          if (name.starts_with('^')) {
            negate = !negate;
            name.remove_prefix(1);
          }
          if (name == "L" || name == "Letter") {
            AppendUClass(UClass::kLetter, negate, in_class, &out);
          } else if (name == "N" || name == "Number") {
            AppendUClass(UClass::kNumber, negate, in_class, &out);
          } else {
            absl::StrAppend(&out, negate ? "\\P{" : "\\p{", ToAbsl(name), "}");
          }
          break;
        }
        case 'h':
          out += in_class ? "0-9a-fA-F" : "[0-9a-fA-F]";
          break;
        case 'H':
          if (in_class) return Unsupported("\\H inside []", p);
          out += "[^0-9a-fA-F]";
          break;
        case 'e':
          out += "\\x1B";
          break;
        case 'u': {
          if (i + 4 > p.size() || !IsHex(p[i]) || !IsHex(p[i + 1]) || !IsHex(p[i + 2]) ||
              !IsHex(p[i + 3])) {
            return Unsupported("\\u without 4 hex digits", p);
          }
          absl::StrAppend(&out, "\\x{", ToAbsl(p.substr(i, 4)), "}");
          i += 4;
          break;
        }
        case 'b':
        case 'B':
        case 'G':
        case 'Z':
        case 'K':
        case 'R':
        case 'X':
        case 'k':
        case 'g':
        case 'y':
        case 'Y':
        case 'N':
        case 'O':
          return Unsupported(absl::StrCat("\\", std::string(1, e)), p);
        case 'x':
          // \xHH or \x{HHHH}: same syntax in RE2; copy the braces along.
          out += "\\x";
          if (i < p.size() && p[i] == '{') {
            const size_t close = p.find('}', i);
            if (close == std::string_view::npos) return Unsupported("unterminated \\x{", p);
            out.append(p.substr(i, close + 1 - i));
            i = close + 1;
          }
          break;
        default:
          if (e >= '1' && e <= '9') return Unsupported("backreference", p);
          out.push_back('\\');
          out.push_back(e);
      }
      continue;
    }
    if (in_class) {
      if (c == '[') return Unsupported("nested [] or POSIX bracket", p);
      if (c == '&' && i + 1 < p.size() && p[i + 1] == '&') return Unsupported("&& in []", p);
      if (c == '^' && class_start && out.back() == '[') {
        out.push_back('^');
        ++i;
        continue;  // a ']' right after "[^" is still literal
      }
      if (c == ']' && !class_start) in_class = false;
      class_start = false;
      out.push_back(c);
      ++i;
      continue;
    }
    switch (c) {
      case '[':
        in_class = true;
        class_start = true;
        out.push_back('[');
        ++i;
        break;
      case ')':
        --depth;
        out.push_back(c);
        ++i;
        break;
      case '(': {
        ++depth;
        if (i + 1 >= p.size() || p[i + 1] != '?') {
          out += "(?:";
          ++i;
          break;
        }
        const std::string_view rest = p.substr(i + 2);
        if (rest.starts_with(":")) {
          out += "(?:";
          i += 3;
        } else if (rest.starts_with("=") || rest.starts_with("!") || rest.starts_with("<=") ||
                   rest.starts_with("<!")) {
          return Unsupported("lookaround", p);
        } else if (rest.starts_with("<") || rest.starts_with("P<")) {
          const size_t close = p.find('>', i);
          if (close == std::string_view::npos) return Unsupported("unterminated group name", p);
          out += "(?:";
          i = close + 1;
        } else if (rest.starts_with("#")) {
          const size_t close = p.find(')', i);
          if (close == std::string_view::npos) return Unsupported("unterminated comment", p);
          i = close + 1;
          --depth;
        } else {
          // Option flags: Ruby's (?m) is dot-matches-newline, RE2's (?s).
          size_t j = i + 2;
          std::string flags;
          while (j < p.size() && (p[j] == 'i' || p[j] == 'm' || p[j] == '-')) {
            flags.push_back(p[j] == 'm' ? 's' : p[j]);
            ++j;
          }
          if (j >= p.size() || (p[j] != ')' && p[j] != ':')) {
            return Unsupported(absl::StrCat("group \"", ToAbsl(p.substr(i, 4)), "\""), p);
          }
          if (p[j] == ':') {
            absl::StrAppend(&out, "(?", flags, ":");
          } else {
            --depth;  // "(?i)" opens no group
            if (!flags.empty() && flags != "-") absl::StrAppend(&out, "(?", flags, ")");
            if (depth == 0) *top_level_flags = true;
          }
          i = j + 1;
        }
        break;
      }
      case '$':
        out += "(?m:$)";
        ++i;
        break;
      case '^':
        out += "(?m:^)";
        ++i;
        break;
      case '*':
      case '+':
      case '?':
        if (i + 1 < p.size() && p[i + 1] == '+') return Unsupported("possessive quantifier", p);
        out.push_back(c);
        ++i;
        break;
      case '{':
        if (i + 1 < p.size() && p[i + 1] == ',') {  // Ruby's {,n} is {0,n}
          out += "{0";
        } else {
          out.push_back(c);
        }
        ++i;
        break;
      default:
        out.push_back(c);
        ++i;
    }
  }
  if (in_class)
    return absl::InvalidArgumentError(absl::StrCat("regex \"", ToAbsl(p), "\": missing ]"));
  return out;
}

std::unique_ptr<re2::RE2> NewRe2(const std::string& pattern) {
  re2::RE2::Options options;
  options.set_log_errors(false);
  options.set_max_mem(64 << 20);
  return std::make_unique<re2::RE2>(pattern, options);
}

// ----------------------------------------------------------------------------- splitting
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

// ----------------------------------------------------------------------------- JSON
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

// ----------------------------------------------------------------------------- OnigRegex
absl::StatusOr<TranslatedRegex> TranslateOnigRegex(std::string_view pattern) {
  constexpr std::string_view kLookahead = R"(\s+(?!\S))";
  const std::vector<std::string_view> alternatives = TopLevelAlternatives(pattern);
  TranslatedRegex out;
  std::vector<std::string> translated;
  int lookahead_index = -1;
  bool top_level_flags = false;
  for (size_t k = 0; k < alternatives.size(); ++k) {
    if (alternatives[k] == kLookahead) {
      if (lookahead_index >= 0) return Unsupported("two \\s+(?!\\S) alternatives", pattern);
      lookahead_index = static_cast<int>(k);
      translated.push_back(absl::StrCat("([", UClassBody(UClass::kSpace, false), "]+)"));
      continue;
    }
    absl::StatusOr<std::string> t = TranslateFragment(alternatives[k], &top_level_flags);
    if (!t.ok()) {
      return absl::Status(t.status().code(),
                          absl::StrCat(t.status().message(), " in \"", ToAbsl(pattern), "\""));
    }
    translated.push_back(*std::move(t));
  }
  if (lookahead_index >= 0 && top_level_flags) {
    // `rest` is compiled on its own and would lose the flags.
    return Unsupported("\\s+(?!\\S) together with a group-less (?flags)", pattern);
  }
  for (size_t k = 0; k < translated.size(); ++k) {
    if (k > 0) out.re2 += "|";
    out.re2 += translated[k];
    if (lookahead_index >= 0 && static_cast<int>(k) > lookahead_index) {
      if (!out.rest.empty()) out.rest += "|";
      out.rest += translated[k];
    }
  }
  out.has_lookahead_alternative = lookahead_index >= 0;
  return out;
}

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

// ----------------------------------------------------------------------------- PreTokenizer
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

absl::Status AddSteps(const json& config, const std::string& where,
                      std::vector<std::unique_ptr<PreTokenizer::Step>>* steps) {
  if (!config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(where, " is not an object"));
  }
  absl::StatusOr<std::string> type = JsonString(config, "type", where);
  if (!type.ok()) return type.status();
  if (*type == "Sequence") {
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
  if (*type == "Split") {
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
      return absl::Status(regex.status().code(),
                          absl::StrCat(where, ": ", regex.status().message()));
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
  if (*type == "Digits") {
    absl::StatusOr<bool> individual = JsonBool(config, "individual_digits", false, where);
    if (!individual.ok()) return individual.status();
    steps->push_back(std::make_unique<DigitsStep>(*individual));
    return absl::OkStatus();
  }
  if (*type == "ByteLevel") {
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

// ----------------------------------------------------------------------------- BpeModel
absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const json& config) {
  constexpr std::string_view kWhere = "model";
  if (!config.is_object()) return absl::InvalidArgumentError("model is not an object");
  if (const json* type = JsonMember(config, "type"); type != nullptr && *type != "BPE") {
    return absl::UnimplementedError(
        absl::StrCat("model type ", type->dump(), " is not supported (only BPE)"));
  }
  if (const json* dropout = JsonMember(config, "dropout");
      dropout != nullptr && !dropout->is_null() &&
      !(dropout->is_number() && dropout->get<double>() == 0.0)) {
    return absl::UnimplementedError("model.dropout is not supported");
  }
  absl::StatusOr<bool> byte_fallback = JsonBool(config, "byte_fallback", false, kWhere);
  if (!byte_fallback.ok()) return byte_fallback.status();
  if (*byte_fallback) return absl::UnimplementedError("model.byte_fallback is not supported");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json* v = JsonMember(config, key);
    if (v != nullptr && !v->is_null() && !(v->is_string() && v->get<std::string>().empty())) {
      return absl::UnimplementedError(absl::StrCat("model.", key, " is not supported"));
    }
  }

  std::unique_ptr<BpeModel> model(new BpeModel());
  absl::StatusOr<bool> fuse_unk = JsonBool(config, "fuse_unk", false, kWhere);
  if (!fuse_unk.ok()) return fuse_unk.status();
  model->fuse_unk_ = *fuse_unk;
  absl::StatusOr<bool> ignore_merges = JsonBool(config, "ignore_merges", false, kWhere);
  if (!ignore_merges.ok()) return ignore_merges.status();
  model->ignore_merges_ = *ignore_merges;

  const json* vocab = JsonMember(config, "vocab");
  if (vocab == nullptr || !vocab->is_object()) {
    return absl::InvalidArgumentError("model.vocab is missing or not an object");
  }
  // Ids index dense per-id tables; a vocabulary this large is certainly corrupt.
  constexpr int64_t kMaxId = 1 << 24;
  model->vocab_.reserve(vocab->size());
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() >= kMaxId) {
      return absl::InvalidArgumentError(absl::StrCat("model.vocab[\"", it.key(),
                                                     "\"] = ", it.value().dump(),
                                                     " is not an id in [0, ", kMaxId, ")"));
    }
    const int32_t id = it.value().get<int32_t>();
    model->vocab_[it.key()] = id;
    if (static_cast<size_t>(id) >= model->id_to_token_.size()) {
      model->id_to_token_.resize(id + 1);
      model->has_id_.resize(id + 1, false);
    }
    model->id_to_token_[id] = it.key();
    model->has_id_[id] = true;
  }

  const json* merges = JsonMember(config, "merges");
  if (merges == nullptr || !merges->is_array()) {
    return absl::InvalidArgumentError("model.merges is missing or not an array");
  }
  model->merges_.reserve(merges->size());
  for (size_t rank = 0; rank < merges->size(); ++rank) {
    const json& m = (*merges)[rank];
    std::string left;
    std::string right;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("model.merges[", rank, "] = \"", s, "\" is not \"left right\""));
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("model.merges[", rank, "] = ", m.dump(), " is not a merge"));
    }
    const auto l = model->vocab_.find(left);
    const auto r = model->vocab_.find(right);
    const auto merged = model->vocab_.find(left + right);
    if (l == model->vocab_.end() || r == model->vocab_.end() || merged == model->vocab_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.merges[", rank, "] (\"", left, "\", \"", right,
                       "\"): a token or the merged token is not in the vocabulary"));
    }
    const uint64_t key =
        (static_cast<uint64_t>(l->second) << 32) | static_cast<uint32_t>(r->second);
    // Later duplicates win, as when tokenizers collects the merges into a HashMap.
    model->merges_[key] = Merge{static_cast<int32_t>(rank), merged->second};
  }

  for (int b = 0; b < 256; ++b) {
    std::string ch;
    uni::AppendUtf8(uni::ByteToUnicode(static_cast<uint8_t>(b)), &ch);
    const auto it = model->vocab_.find(ch);
    model->byte_ids_[b] = it == model->vocab_.end() ? -1 : it->second;
  }

  if (const json* unk = JsonMember(config, "unk_token"); unk != nullptr && !unk->is_null()) {
    if (!unk->is_string()) return absl::InvalidArgumentError("model.unk_token is not a string");
    const auto it = model->vocab_.find(unk->get<std::string>());
    if (it == model->vocab_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("model.unk_token \"", unk->get<std::string>(),
                                                     "\" is not in the vocabulary"));
    }
    model->unk_id_ = it->second;
  }
  return model;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  const auto it = vocab_.find(ToAbsl(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

void BpeModel::Tokenize(std::string_view piece, std::vector<int32_t>* ids) const {
  if (piece.empty()) return;
  const bool cacheable = piece.size() < kMaxCachedPieceBytes;
  if (cacheable) {
    absl::ReaderMutexLock lock(&mu_);
    const auto it = cache_.find(ToAbsl(piece));
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> word;
  MergeWord(piece, &word);
  ids->insert(ids->end(), word.begin(), word.end());
  if (cacheable) {
    absl::MutexLock lock(&mu_);
    if (cache_.size() >= kCacheEntries) cache_.clear();
    cache_.emplace(std::string(piece), std::move(word));
  }
}

// tokenizers' BPE::merge_word + Word::merge_all (without dropout): a linked list of
// symbols and a min-heap of candidate merges ordered by (rank, position); stale heap
// entries are recognised because the pair no longer merges into the same id.
void BpeModel::MergeWord(std::string_view piece, std::vector<int32_t>* ids) const {
  if (ignore_merges_) {
    std::string token;
    for (char b : piece) uni::AppendUtf8(uni::ByteToUnicode(static_cast<uint8_t>(b)), &token);
    if (const auto it = vocab_.find(ToAbsl(token)); it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(piece.size());
  auto add = [&symbols](int32_t id) {
    const int32_t n = static_cast<int32_t>(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back({id, n - 1, -1, true});
  };
  bool pending_unk = false;  // an unknown run not yet added (only with unk_token)
  for (char ch : piece) {
    const int32_t id = byte_ids_[static_cast<uint8_t>(ch)];
    if (id >= 0) {
      if (pending_unk) add(*unk_id_);
      pending_unk = false;
      add(id);
    } else if (unk_id_.has_value()) {
      if (pending_unk && !fuse_unk_) add(*unk_id_);
      pending_unk = true;
    }
    // Without unk_token, characters missing from the vocabulary are dropped.
  }
  if (pending_unk) add(*unk_id_);

  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
  };
  auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> queue(later);
  auto find_merge = [this](int32_t left, int32_t right) -> const Merge* {
    const auto it =
        merges_.find((static_cast<uint64_t>(left) << 32) | static_cast<uint32_t>(right));
    return it == merges_.end() ? nullptr : &it->second;
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const Merge* m = find_merge(symbols[i].id, symbols[i + 1].id)) {
      queue.push({m->rank, static_cast<int32_t>(i), m->new_id});
    }
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    const int32_t right_pos = left.next;
    const Symbol right = symbols[right_pos];
    const Merge* current = find_merge(left.id, right.id);
    if (current == nullptr || current->new_id != top.new_id) continue;  // stale entry
    left.id = top.new_id;
    left.next = right.next;
    symbols[right_pos].alive = false;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const Merge* m = find_merge(symbols[left.prev].id, left.id)) {
        queue.push({m->rank, left.prev, m->new_id});
      }
    }
    if (left.next >= 0) {
      if (const Merge* m = find_merge(left.id, symbols[left.next].id)) {
        queue.push({m->rank, top.pos, m->new_id});
      }
    }
  }
  for (const Symbol& s : symbols) {
    if (s.alive) ids->push_back(s.id);
  }
}

// ----------------------------------------------------------------------------- AddedVocabulary
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
