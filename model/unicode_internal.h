// Unicode and UTF-8 helpers of the tokenizer (model/tokenizer.h); not a public API.
//
// The character sets reproduce exactly what HuggingFace `tokenizers` (0.23.3, see
// tests/data/tokenizer_cases.json "unicode") uses, because the tokenizer must produce
// the same ids and text, not "a reasonable" Unicode classification:
//   IsWhitespace  Oniguruma `\s` (pre-tokenizer regexes), Rust char::is_whitespace and
//                 the Rust regex crate's `\s` (added-token lstrip/rstrip): all three are
//                 the Unicode White_Space property (25 code points).
//   IsNumeric     Rust char::is_numeric (general categories Nd, Nl, No): the Digits
//                 pre-tokenizer.
//   IsWordChar    the Rust regex crate's `\w` (Alphabetic, M, Nd, Pc, Join_Control):
//                 added tokens with single_word.
//
// Thread-safety: stateless functions over constant tables; safe for concurrent use.
#ifndef DSV2_MODEL_UNICODE_INTERNAL_H_
#define DSV2_MODEL_UNICODE_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/types/span.h"

namespace dsv2::unicode_internal {

// Inclusive range of code points.
struct CodepointRange {
  char32_t lo;
  char32_t hi;
};

bool IsWhitespace(char32_t c);
bool IsNumeric(char32_t c);
bool IsWordChar(char32_t c);

// The sorted, disjoint tables behind the predicates above (for tests and for building
// regex character classes).
absl::Span<const CodepointRange> WhitespaceRanges();
absl::Span<const CodepointRange> NumericRanges();
absl::Span<const CodepointRange> WordRanges();

// Oniguruma's `\p{L}`, `\p{N}`, `\w` and `\d` as compiled into `tokenizers` (its Unicode
// version, not RE2's): the regex translation spells these classes out as ranges.
absl::Span<const CodepointRange> OnigLetterRanges();
absl::Span<const CodepointRange> OnigNumberRanges();
absl::Span<const CodepointRange> OnigWordRanges();
absl::Span<const CodepointRange> OnigDigitRanges();

// Length in bytes of the UTF-8 sequence that starts with `lead`, 1 for bytes that
// cannot start one (so that scanning always advances).
size_t Utf8SequenceLength(uint8_t lead);

// Decodes the character at text[*pos] and advances *pos past it.
// REQUIRES: text is valid UTF-8 and *pos < text.size() is on a character boundary.
char32_t DecodeUtf8(std::string_view text, size_t* pos);

// The last character of `text`, or U+0000 for an empty text. REQUIRES: valid UTF-8.
char32_t LastCodepoint(std::string_view text);

void AppendUtf8(char32_t c, std::string* out);

// Strict UTF-8 validity; exported to other modules as dsv2::IsValidUtf8 (model/utf8.h).
bool IsValidUtf8(std::string_view bytes);

// Rust's String::from_utf8_lossy, which the ByteLevel decoder of `tokenizers` applies to
// the concatenated token bytes: valid characters are copied; each maximal prefix of an
// invalid sequence (Unicode "substitution of maximal subparts") becomes one U+FFFD.
// With at_end == false a trailing sequence that is incomplete but could still become
// valid is left unconsumed (streaming); with at_end == true it becomes one U+FFFD.
// Returns the number of bytes consumed; everything before it is final.
size_t AppendUtf8Lossy(std::string_view bytes, bool at_end, std::string* out);

// GPT-2's bytes_to_unicode(): the printable character that stands for each byte in
// byte-level BPE vocabularies, and its inverse (-1 for characters outside the alphabet).
char32_t ByteToUnicode(uint8_t b);
int UnicodeToByte(char32_t c);

}  // namespace dsv2::unicode_internal

#endif  // DSV2_MODEL_UNICODE_INTERNAL_H_
