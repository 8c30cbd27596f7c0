#include "coordinator/generate_request.h"

#include <memory>
#include <string>

#include "gtest/gtest.h"

namespace dsv2::coordinator {
namespace {

class GenerateRequestTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto t = Tokenizer::FromDir(std::string(DSV2_SOURCE_DIR) + "/model/data/deepseek-v2");
    ASSERT_TRUE(t.ok()) << t.status();
    tokenizer_ = t->release();
    auto tmpl = ChatTemplate::Parse(*tokenizer_->chat_template());
    ASSERT_TRUE(tmpl.ok()) << tmpl.status();
    template_ = new ChatTemplate(*std::move(tmpl));
  }
  static void TearDownTestSuite() {
    delete template_;
    delete tokenizer_;
  }
  ServedModel Model() const {
    ServedModel m;
    m.context_tokens = 1000;
    m.vocab_size = 102400;
    m.eos_token_ids = {100001};
    m.tokenizer = tokenizer_;
    m.chat_template = template_;
    return m;
  }
  // The status code and whether the message names `field`.
  static void ExpectInvalid(const v1::GenerateRequest& r, const ServedModel& m,
                            const std::string& field) {
    absl::StatusOr<PreparedGenerate> p = PrepareGenerate(r, m);
    ASSERT_FALSE(p.ok()) << field;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << p.status();
    EXPECT_NE(std::string(p.status().message()).find(field), std::string::npos)
        << p.status() << " should name " << field;
  }
  static Tokenizer* tokenizer_;
  static ChatTemplate* template_;
};
Tokenizer* GenerateRequestTest::tokenizer_ = nullptr;
ChatTemplate* GenerateRequestTest::template_ = nullptr;

TEST_F(GenerateRequestTest, EveryBadFieldIsInvalidArgumentNamingIt) {
  const ServedModel m = Model();
  v1::GenerateRequest none;
  ExpectInvalid(none, m, "prompt");
  v1::GenerateRequest two;
  two.set_prompt("a");
  two.add_prompt_ids(1);
  ExpectInvalid(two, m, "prompt");
  v1::GenerateRequest role;
  auto* msg = role.add_messages();
  msg->set_role("wizard");
  msg->set_content("hi");
  ExpectInvalid(role, m, "messages");
  v1::GenerateRequest base;
  base.set_prompt("hello");
  auto with = [&](auto f) {
    v1::GenerateRequest r = base;
    f(r);
    return r;
  };
  ExpectInvalid(with([](auto& r) { r.set_temperature(-0.5f); }), m, "temperature");
  ExpectInvalid(with([](auto& r) { r.set_top_p(0.0f); }), m, "top_p");
  ExpectInvalid(with([](auto& r) { r.set_top_p(1.5f); }), m, "top_p");
  ExpectInvalid(with([](auto& r) { r.set_top_k(-1); }), m, "top_k");
  ExpectInvalid(with([](auto& r) { r.set_logprobs(21); }), m, "logprobs");
  ExpectInvalid(with([](auto& r) { r.set_logprobs(-1); }), m, "logprobs");
  ExpectInvalid(with([](auto& r) { r.set_max_tokens(0); }), m, "max_tokens");
  ExpectInvalid(with([](auto& r) { r.add_stop(""); }), m, "stop");
  ExpectInvalid(with([](auto& r) { r.add_stop(std::string("\xff", 1)); }), m, "stop");
  ExpectInvalid(with([](auto& r) { r.add_stop_token_ids(102400); }), m, "stop_token_ids");
  v1::GenerateRequest ids;
  ids.add_prompt_ids(5);
  ids.add_prompt_ids(-3);
  ExpectInvalid(ids, m, "prompt_ids");
  // Edges that are fine.
  EXPECT_TRUE(PrepareGenerate(with([](auto& r) { r.set_top_p(1.0f); }), m).ok());
  EXPECT_TRUE(PrepareGenerate(with([](auto& r) { r.set_logprobs(20); }), m).ok());
  EXPECT_TRUE(PrepareGenerate(with([](auto& r) { r.set_temperature(0.0f); }), m).ok());
}

TEST_F(GenerateRequestTest, DefaultsAndTokenization) {
  const ServedModel m = Model();
  v1::GenerateRequest r;
  r.set_prompt("Hello world");
  absl::StatusOr<PreparedGenerate> p = PrepareGenerate(r, m);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->prompt_ids, tokenizer_->Encode("Hello world", true));
  EXPECT_EQ(p->prompt_ids.front(), 100000);  // BOS
  EXPECT_FLOAT_EQ(p->sampling.temperature, 1.0f);
  EXPECT_FLOAT_EQ(p->sampling.top_p, 1.0f);
  EXPECT_EQ(p->logprobs, -1);
  EXPECT_FALSE(p->max_tokens.has_value());
  r.set_add_special_tokens(false);
  r.set_seed(42);
  p = PrepareGenerate(r, m);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->prompt_ids, tokenizer_->Encode("Hello world", false));
  EXPECT_EQ(p->sampling.seed, 42u);
  // prompt_ids verbatim.
  v1::GenerateRequest ids;
  for (int32_t id : {7, 8, 9}) ids.add_prompt_ids(id);
  p = PrepareGenerate(ids, m);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->prompt_ids, (std::vector<int32_t>{7, 8, 9}));
}

TEST_F(GenerateRequestTest, MessagesUseTheChatTemplateWithOneBos) {
  const ServedModel m = Model();
  v1::GenerateRequest r;
  auto* sys = r.add_messages();
  sys->set_role("system");
  sys->set_content("Be brief.");
  auto* user = r.add_messages();
  user->set_role("user");
  user->set_content("Hi there");
  absl::StatusOr<PreparedGenerate> p = PrepareGenerate(r, m);
  ASSERT_TRUE(p.ok()) << p.status();
  ChatTemplateInputs in;
  in.messages = {{"system", "Be brief."}, {"user", "Hi there"}};
  in.bos_token = tokenizer_->bos_token();
  in.eos_token = tokenizer_->eos_token();
  const std::string rendered = *template_->Render(in);
  EXPECT_EQ(p->prompt_ids, tokenizer_->Encode(rendered, false));
  EXPECT_EQ(std::count(p->prompt_ids.begin(), p->prompt_ids.end(), 100000), 1);
}

TEST_F(GenerateRequestTest, LimitsNameBothNumbers) {
  const ServedModel m = Model();  // context 1000
  v1::GenerateRequest r;
  for (int i = 0; i < 10; ++i) r.add_prompt_ids(5);
  // Unset max_tokens: 256, or what fits.
  absl::StatusOr<PreparedGenerate> p = PrepareGenerate(r, m);
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(ApplyLimits(m, 5000, *p).ok());
  EXPECT_EQ(*p->max_tokens, 256);
  p = PrepareGenerate(r, m);
  ASSERT_TRUE(ApplyLimits(m, 100, *p).ok());
  EXPECT_EQ(*p->max_tokens, 90);
  // Set: over the context -> both numbers.
  r.set_max_tokens(995);
  p = PrepareGenerate(r, m);
  absl::Status st = ApplyLimits(m, 5000, *p);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(st.message()).find("1000"), std::string::npos) << st;
  EXPECT_NE(std::string(st.message()).find("1005"), std::string::npos) << st;
  // Over the largest node's cache.
  r.set_max_tokens(300);
  p = PrepareGenerate(r, m);
  st = ApplyLimits(m, 256, *p);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(st.message()).find("256"), std::string::npos) << st;
  EXPECT_NE(std::string(st.message()).find("310"), std::string::npos) << st;
  // Exactly fitting is fine.
  r.set_max_tokens(990);
  p = PrepareGenerate(r, m);
  EXPECT_TRUE(ApplyLimits(m, 5000, *p).ok());
  // A prompt that fills the context leaves nothing.
  v1::GenerateRequest full;
  for (int i = 0; i < 1000; ++i) full.add_prompt_ids(5);
  p = PrepareGenerate(full, m);
  EXPECT_EQ(ApplyLimits(m, 5000, *p).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(GenerateRequestTest, TextNeedsATokenizer) {
  ServedModel m = Model();
  m.tokenizer = nullptr;
  m.chat_template = nullptr;
  v1::GenerateRequest r;
  r.set_prompt("hi");
  ExpectInvalid(r, m, "tokenizer");
  v1::GenerateRequest ids;
  ids.add_prompt_ids(1);
  EXPECT_TRUE(PrepareGenerate(ids, m).ok());
}

}  // namespace
}  // namespace dsv2::coordinator
