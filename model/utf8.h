// UTF-8 validity, for modules that accept text from users (e.g. the coordinator's stop
// strings) and must refuse exactly what the tokenizer would not keep byte for byte.
//
// IsValidUtf8(bytes) is true iff `bytes` is well-formed UTF-8 in the strict sense of the
// Unicode standard (table 3-7) and of Rust's / Python's decoders: no overlong forms, no
// surrogates (U+D800..U+DFFF), nothing above U+10FFFF, no truncated sequence at the end.
// The empty string is valid. It agrees with the tokenizer's lossy conversion: a string is
// valid iff that conversion leaves it unchanged (model/unicode_internal.h AppendUtf8Lossy).
//
// Thread-safety: a pure function; safe for concurrent use. It does not keep `bytes`.
#ifndef DSV2_MODEL_UTF8_H_
#define DSV2_MODEL_UTF8_H_

#include <string_view>

namespace dsv2 {

bool IsValidUtf8(std::string_view bytes);

}  // namespace dsv2

#endif  // DSV2_MODEL_UTF8_H_
