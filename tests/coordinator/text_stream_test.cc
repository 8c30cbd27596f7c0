#include "coordinator/text_stream.h"

#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/tokenizer.h"

namespace dsv2::coordinator {
namespace {

class TextStreamTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto t = Tokenizer::FromDir(std::string(DSV2_SOURCE_DIR) + "/model/data/deepseek-v2");
    ASSERT_TRUE(t.ok()) << t.status();
    tokenizer_ = t->release();
  }
  static void TearDownTestSuite() { delete tokenizer_; }

  // Streams `ids` one at a time; returns the chunks and whether it stopped.
  static std::vector<std::string> Stream(const std::vector<int32_t>& ids,
                                         const std::vector<std::string>& stop, bool* stopped,
                                         size_t* consumed = nullptr) {
    TextStream ts(tokenizer_, stop);
    std::vector<std::string> chunks;
    size_t i = 0;
    for (; i < ids.size(); ++i) {
      TextStream::Chunk c = ts.Push(ids[i], true);
      chunks.push_back(c.text);
      if (c.stopped) {
        ++i;
        break;
      }
    }
    if (!ts.stopped()) chunks.push_back(ts.Finish().text);
    *stopped = ts.stopped();
    if (consumed) *consumed = i;
    std::string all;
    for (const std::string& c : chunks) all += c;
    EXPECT_EQ(all, ts.text());
    return chunks;
  }

  static std::string Join(const std::vector<std::string>& v) {
    std::string s;
    for (const std::string& x : v) s += x;
    return s;
  }

  static Tokenizer* tokenizer_;
};

Tokenizer* TextStreamTest::tokenizer_ = nullptr;

TEST_F(TextStreamTest, WithoutStopStringsEqualsDecode) {
  const std::string text = "Hello, world! Ünïcödé 你好 🙂 end.";
  const std::vector<int32_t> ids = tokenizer_->Encode(text, false);
  bool stopped = true;
  const std::vector<std::string> chunks = Stream(ids, {}, &stopped);
  EXPECT_FALSE(stopped);
  EXPECT_EQ(Join(chunks), tokenizer_->Decode(ids, true));
  // (Not always `text`: DeepSeek-V2's added byte-level tokens, e.g. a literal
  // "ö", decode to U+FFFD exactly as in HF tokenizers.)
}

TEST_F(TextStreamTest, StopStringAcrossTokenBoundariesIsCutAndNotReturned) {
  const std::string text = "The answer is forty-two. Next question please.";
  const std::vector<int32_t> ids = tokenizer_->Encode(text, false);
  // Stop strings that straddle token boundaries in different ways.
  for (const std::string& stop : {std::string("two. Next"), std::string("y-t"),
                                  std::string(" question"), std::string("."),
                                  std::string("ase.")}) {
    bool stopped = false;
    size_t consumed = 0;
    const std::string out = Join(Stream(ids, {stop}, &stopped, &consumed));
    EXPECT_TRUE(stopped) << stop;
    EXPECT_EQ(out, text.substr(0, text.find(stop))) << stop;
    // It stopped at the token that completed the stop string, not later.
    const std::string decoded_before =
        tokenizer_->Decode(std::vector<int32_t>(ids.begin(), ids.begin() + consumed - 1), true);
    EXPECT_EQ(decoded_before.find(stop), std::string::npos) << stop;
  }
}

TEST_F(TextStreamTest, EarliestOfSeveralStopStringsWins) {
  const std::vector<int32_t> ids = tokenizer_->Encode("alpha beta gamma delta", false);
  bool stopped = false;
  EXPECT_EQ(Join(Stream(ids, {"delta", "beta", "gamma"}, &stopped)), "alpha ");
  EXPECT_TRUE(stopped);
}

TEST_F(TextStreamTest, PossibleStopPrefixIsHeldBackUntilDecided) {
  // "ab" could start the stop string "abc": held; "abd" rules it out.
  TextStream ts(tokenizer_, {"abc"});
  const std::vector<int32_t> x = tokenizer_->Encode("x", false);
  const std::vector<int32_t> ab = tokenizer_->Encode("ab", false);
  const std::vector<int32_t> d = tokenizer_->Encode("d", false);
  ASSERT_EQ(x.size(), 1u);
  ASSERT_EQ(ab.size(), 1u);
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(ts.Push(x[0], true).text, "x");
  EXPECT_EQ(ts.Push(ab[0], true).text, "");
  EXPECT_EQ(ts.Push(d[0], true).text, "abd");
  EXPECT_EQ(ts.Push(ab[0], true).text, "");
  // Generation ends (length) with "ab" held: it is returned by Finish.
  TextStream::Chunk end = ts.Finish();
  EXPECT_EQ(end.text, "ab");
  EXPECT_FALSE(end.stopped);
  EXPECT_EQ(ts.text(), "xabdab");
}

TEST_F(TextStreamTest, NeverReturnsHalfACharacter) {
  // Emoji are split over several byte-level tokens.
  const std::string text = "🙂🙃😀";
  const std::vector<int32_t> ids = tokenizer_->Encode(text, false);
  ASSERT_GT(ids.size(), 3u);
  bool stopped = false;
  for (const std::string& chunk : Stream(ids, {"🙃"}, &stopped)) {
    // Every chunk is whole characters: decoding it alone round-trips.
    EXPECT_EQ(tokenizer_->Decode(tokenizer_->Encode(chunk, false), true), chunk);
  }
  EXPECT_TRUE(stopped);
  EXPECT_EQ(Join(Stream(ids, {"🙃"}, &stopped)), "🙂");
}

TEST_F(TextStreamTest, UnrenderedTokensAddNoText) {
  TextStream ts(tokenizer_, {});
  const std::vector<int32_t> ids = tokenizer_->Encode("hi", false);
  EXPECT_EQ(ts.Push(ids[0], false).text, "");
  EXPECT_EQ(ts.Finish().text, "");
}

TEST(TextStreamNoTokenizer, ProducesNoText) {
  TextStream ts(nullptr, {});
  EXPECT_EQ(ts.Push(5, true).text, "");
  EXPECT_FALSE(ts.Finish().stopped);
}

}  // namespace
}  // namespace dsv2::coordinator
