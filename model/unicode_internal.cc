// Character tables and UTF-8 helpers; see unicode_internal.h for what each set
// reproduces. The range tables are measured on HuggingFace `tokenizers` itself and
// generated into unicode_tables.inc by model/gen_unicode_tables.py (the command is at
// the top of that file); tests/model/tokenizer_test.cc checks them against
// tests/data/tokenizer_cases.json.
#include "model/unicode_internal.h"

#include <algorithm>
#include <array>

namespace dsv2::unicode_internal {
namespace {

// kWhitespaceRanges, kNumericRanges, kWordRanges, kOnig{Letter,Number,Word,Digit}Ranges.
#include "model/unicode_tables.inc"

bool InRanges(absl::Span<const CodepointRange> ranges, char32_t c) {
  auto it = std::upper_bound(ranges.begin(), ranges.end(), c,
                             [](char32_t v, const CodepointRange& r) { return v < r.lo; });
  return it != ranges.begin() && c <= (it - 1)->hi;
}

struct ByteLevelAlphabet {
  std::array<char32_t, 256> byte_to_char{};
  std::array<int16_t, 512> char_to_byte{};  // every alphabet character is below U+0200

  ByteLevelAlphabet() {
    char_to_byte.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      byte_to_char[b] = printable ? static_cast<char32_t>(b) : next++;
      char_to_byte[byte_to_char[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteLevelAlphabet& Alphabet() {
  static const ByteLevelAlphabet* const alphabet = new ByteLevelAlphabet();
  return *alphabet;
}

bool IsContinuation(std::string_view s, size_t i) {
  return i < s.size() && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80;
}

bool InByteRange(std::string_view s, size_t i, uint8_t lo, uint8_t hi) {
  if (i >= s.size()) return false;
  const uint8_t b = static_cast<uint8_t>(s[i]);
  return b >= lo && b <= hi;
}

}  // namespace

bool IsWhitespace(char32_t c) { return InRanges(kWhitespaceRanges, c); }
bool IsNumeric(char32_t c) { return InRanges(kNumericRanges, c); }
bool IsWordChar(char32_t c) { return InRanges(kWordRanges, c); }

absl::Span<const CodepointRange> WhitespaceRanges() { return kWhitespaceRanges; }
absl::Span<const CodepointRange> NumericRanges() { return kNumericRanges; }
absl::Span<const CodepointRange> WordRanges() { return kWordRanges; }
absl::Span<const CodepointRange> OnigLetterRanges() { return kOnigLetterRanges; }
absl::Span<const CodepointRange> OnigNumberRanges() { return kOnigNumberRanges; }
absl::Span<const CodepointRange> OnigWordRanges() { return kOnigWordRanges; }
absl::Span<const CodepointRange> OnigDigitRanges() { return kOnigDigitRanges; }

size_t Utf8SequenceLength(uint8_t lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 1;
}

char32_t DecodeUtf8(std::string_view text, size_t* pos) {
  const uint8_t lead = static_cast<uint8_t>(text[*pos]);
  const size_t len = Utf8SequenceLength(lead);
  if (len == 1) {
    ++*pos;
    return lead;
  }
  char32_t c = lead & (0x7F >> len);
  for (size_t i = 1; i < len; ++i) {
    c = (c << 6) | (static_cast<uint8_t>(text[*pos + i]) & 0x3F);
  }
  *pos += len;
  return c;
}

char32_t LastCodepoint(std::string_view text) {
  if (text.empty()) return 0;
  size_t start = text.size() - 1;
  while (start > 0 && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
  return DecodeUtf8(text, &start);
}

void AppendUtf8(char32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

bool IsValidUtf8(std::string_view bytes) {
  std::string scratch;
  size_t i = 0;
  while (i < bytes.size() && static_cast<uint8_t>(bytes[i]) < 0x80) ++i;  // ASCII fast path
  if (i == bytes.size()) return true;
  // Valid iff the lossy conversion copies every byte unchanged.
  scratch.reserve(bytes.size() - i);
  AppendUtf8Lossy(bytes.substr(i), /*at_end=*/true, &scratch);
  return scratch == bytes.substr(i);
}

// Mirrors core::str::lossy::Utf8Chunks (Rust 1.7x+): the lead byte fixes the width and
// the allowed range of the second byte (no overlongs, surrogates or > U+10FFFF); the
// invalid chunk ends before the first byte that does not fit.
size_t AppendUtf8Lossy(std::string_view in, bool at_end, std::string* out) {
  static constexpr char kReplacement[] = "\xEF\xBF\xBD";
  const size_t n = in.size();
  size_t i = 0;
  while (i < n) {
    const size_t start = i;
    const uint8_t lead = static_cast<uint8_t>(in[i++]);
    if (lead < 0x80) {
      out->push_back(static_cast<char>(lead));
      continue;
    }
    bool ok = false;
    bool width_known = true;
    if (lead >= 0xC2 && lead <= 0xDF) {
      if (IsContinuation(in, i)) {
        ++i;
        ok = true;
      }
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      const bool second_ok = lead == 0xE0   ? InByteRange(in, i, 0xA0, 0xBF)
                             : lead == 0xED ? InByteRange(in, i, 0x80, 0x9F)
                                            : InByteRange(in, i, 0x80, 0xBF);
      if (second_ok) {
        ++i;
        if (IsContinuation(in, i)) {
          ++i;
          ok = true;
        }
      }
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      const bool second_ok = lead == 0xF0   ? InByteRange(in, i, 0x90, 0xBF)
                             : lead == 0xF4 ? InByteRange(in, i, 0x80, 0x8F)
                                            : InByteRange(in, i, 0x80, 0xBF);
      if (second_ok) {
        ++i;
        if (IsContinuation(in, i)) {
          ++i;
          if (IsContinuation(in, i)) {
            ++i;
            ok = true;
          }
        }
      }
    } else {
      width_known = false;
    }
    if (ok) {
      out->append(in.substr(start, i - start));
      continue;
    }
    // The sequence failed at byte i. If i is the end of the input, more bytes could still
    // complete it.
    if (!at_end && width_known && i == n) return start;
    out->append(kReplacement);
  }
  return n;
}

char32_t ByteToUnicode(uint8_t b) { return Alphabet().byte_to_char[b]; }

int UnicodeToByte(char32_t c) {
  if (c >= Alphabet().char_to_byte.size()) return -1;
  return Alphabet().char_to_byte[c];
}

}  // namespace dsv2::unicode_internal
