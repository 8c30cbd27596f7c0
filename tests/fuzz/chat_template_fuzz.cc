// libFuzzer target: the chat template parser and renderer. The first byte
// picks the mode: parse arbitrary template source and render a fixed
// conversation with it, or render the shipped demo model's template (the
// DeepSeek-V2 one) over a conversation made of the input.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "model/chat_template.h"
#include "model/tokenizer.h"

namespace {

const dsv2::ChatTemplate& DemoTemplate() {
  static const dsv2::ChatTemplate* t = [] {
    auto tok = dsv2::Tokenizer::FromDir(DSV2_SOURCE_DIR "/model/data/demo-stories");
    if (!tok.ok() || !(*tok)->chat_template()) std::abort();
    auto parsed = dsv2::ChatTemplate::Parse(*(*tok)->chat_template());
    if (!parsed.ok()) std::abort();
    return new dsv2::ChatTemplate(*std::move(parsed));
  }();
  return *t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  dsv2::ChatTemplateInputs inputs;
  inputs.bos_token = "<bos>";
  inputs.eos_token = "<eos>";
  inputs.add_generation_prompt = data[0] & 2;
  if (data[0] & 1) {
    auto t = dsv2::ChatTemplate::Parse(rest);
    if (!t.ok()) return 0;
    inputs.messages = {{"system", "Be kind."},
                       {"user", "Hi"},
                       {"assistant", "Hello!"},
                       {"user", "Tell me a story."}};
    (void)t->Render(inputs);
  } else {
    // Messages split at NUL bytes; roles cycle through the valid ones and
    // one that is not.
    static const char* kRoles[] = {"system", "user", "assistant", "tool"};
    size_t start = 0, i = 0;
    while (start <= rest.size() && i < 16) {
      size_t end = rest.find('\0', start);
      if (end == std::string_view::npos) end = rest.size();
      inputs.messages.push_back(
          {kRoles[(data[0] >> 2) + i & 3], std::string(rest.substr(start, end - start))});
      start = end + 1;
      ++i;
    }
    (void)DemoTemplate().Render(inputs);
    (void)dsv2::RenderFallbackChat(inputs);
  }
  return 0;
}
