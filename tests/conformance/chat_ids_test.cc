// Chat rendering + encoding equals transformers' apply_chat_template ids
// (tokenize=True) on the shipped DeepSeek-V2 tokenizer: the template renders
// BOS itself and encoding adds no second one.
#include <fstream>

#include "gtest/gtest.h"
#include "model/chat_template.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

TEST(ChatIdsTest, RenderedAndEncodedIdsEqualApplyChatTemplate) {
  std::ifstream in(std::string(DSV2_SOURCE_DIR) + "/tests/data/chat_cases.json");
  const nlohmann::json data = nlohmann::json::parse(in);
  auto tok = Tokenizer::FromDir(std::string(DSV2_SOURCE_DIR) + "/model/data/deepseek-v2");
  ASSERT_TRUE(tok.ok()) << tok.status();
  int checked = 0;
  for (const auto& c : data.at("cases")) {
    if (!c.contains("expected_ids") || c.at("expected_ids").is_null()) continue;
    const std::string source =
        data.at("templates").at(c.at("template").get<std::string>()).at("source");
    auto tmpl = ChatTemplate::Parse(source);
    ASSERT_TRUE(tmpl.ok()) << tmpl.status();
    ChatTemplateInputs in;
    for (const auto& m : c.at("messages")) {
      in.messages.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
    }
    in.add_generation_prompt = c.at("add_generation_prompt").get<bool>();
    in.bos_token = c.at("bos").get<std::string>();
    in.eos_token = c.at("eos").get<std::string>();
    auto text = tmpl->Render(in);
    ASSERT_TRUE(text.ok()) << c.at("name") << ": " << text.status();
    const std::vector<int32_t> ids = (*tok)->Encode(*text, /*add_special_tokens=*/false);
    EXPECT_EQ(ids, c.at("expected_ids").get<std::vector<int32_t>>()) << c.at("name");
    ++checked;
  }
  EXPECT_GT(checked, 100);
}

}  // namespace
}  // namespace dsv2
