// The public face of unicode_internal::IsValidUtf8, which the tokenizer uses too, so that
// the coordinator and the tokenizer cannot disagree on what valid UTF-8 is.
#include "model/utf8.h"

#include "model/unicode_internal.h"

namespace dsv2 {

bool IsValidUtf8(std::string_view bytes) { return unicode_internal::IsValidUtf8(bytes); }

}  // namespace dsv2
