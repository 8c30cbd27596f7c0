// libFuzzer target: tokenizer.json and tokenizer_config.json loading
// (arbitrary JSON text) and the shipped demo tokenizer's encode and decode
// on arbitrary text and ids. The first byte picks the mode; the rest is the
// input.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer.h"

namespace {

const dsv2::Tokenizer& DemoTokenizer() {
  static const dsv2::Tokenizer* tok = [] {
    auto t = dsv2::Tokenizer::FromDir(DSV2_SOURCE_DIR "/model/data/demo-stories");
    if (!t.ok()) std::abort();
    return t->release();
  }();
  return *tok;
}

// A small byte-level BPE tokenizer.json (loading the demo's 2,256-token one
// takes milliseconds: too slow to fuzz its config beside it).
constexpr std::string_view kSmallTokenizerJson = R"({
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [{"id": 0, "content": "<s>", "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true},
                   {"id": 1, "content": "</s>", "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true}],
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                    "use_regex": true},
  "post_processor": null,
  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
              "use_regex": true},
  "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "vocab": {"<s>": 0, "</s>": 1, "a": 2, "b": 3, "ab": 4,
            "\u0120": 5, "\u0120b": 6}, "merges": ["a b", "\u0120 b"]}})";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  const dsv2::Tokenizer& demo = DemoTokenizer();
  switch (data[0] % 4) {
    case 0: {  // a tokenizer.json of its own
      auto t = dsv2::Tokenizer::FromJsonText(rest, "");
      if (t.ok()) (void)(*t)->Encode("Once upon a time", true);
      break;
    }
    case 1: {  // encode, then decode what came out
      const std::vector<int32_t> ids = demo.Encode(rest, data[0] & 4);
      (void)demo.Decode(ids, data[0] & 8);
      break;
    }
    case 2: {  // decode arbitrary ids, in and out of the vocabulary
      std::vector<int32_t> ids(rest.size() / 4);
      if (!ids.empty()) std::memcpy(ids.data(), rest.data(), ids.size() * 4);
      (void)demo.Decode(ids, data[0] & 8);
      break;
    }
    case 3: {  // a tokenizer_config.json beside a small tokenizer.json
      auto t = dsv2::Tokenizer::FromJsonText(kSmallTokenizerJson, rest);
      if (t.ok()) (void)(*t)->Encode("abab ba", true);
      break;
    }
  }
  return 0;
}
