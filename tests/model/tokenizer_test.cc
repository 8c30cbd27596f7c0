// Tests model/tokenizer.h against HuggingFace `tokenizers` on the DeepSeek-V2 tokenizer:
// tests/data/tokenizer_cases.json is written by tests/conformance/gen_tokenizer_cases.py.
#include "model/tokenizer.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "model/tokenizer_internal.h"
#include "model/unicode_internal.h"

namespace dsv2 {
namespace {

using ::nlohmann::json;
namespace ti = ::dsv2::tokenizer_internal;
namespace uni = ::dsv2::unicode_internal;

const std::string kTokenizerDir = std::string(DSV2_SOURCE_DIR) + "/model/data/deepseek-v2";
const std::string kCasesPath = std::string(DSV2_SOURCE_DIR) + "/tests/data/tokenizer_cases.json";

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string WriteTempFile(const std::string& name, const std::string& contents) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path, std::ios::binary) << contents;
  return path;
}

// gtest only (the model_test binary does not link gmock).
::testing::AssertionResult Contains(const std::string& haystack, const std::string& needle) {
  if (haystack.find(needle) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << haystack << "\" lacks \"" << needle << "\"";
}

// Printable form of a test input for failure messages.
std::string Quote(const std::string& s) { return json(s).dump().substr(0, 200); }

std::vector<int32_t> Ids(const json& j) { return j.get<std::vector<int32_t>>(); }

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cases_ = new json(json::parse(ReadFileOrDie(kCasesPath)));
    tokenizer_json_ = new std::string(ReadFileOrDie(kTokenizerDir + "/tokenizer.json"));
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromDir(kTokenizerDir);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = tok->release();
  }
  static void TearDownTestSuite() {
    delete cases_;
    delete tokenizer_json_;
    delete tokenizer_;
  }

  static const json& cases() { return *cases_; }
  static const Tokenizer& tok() { return *tokenizer_; }

  // Every Push result is whole UTF-8 and the concatenation equals `expected`.
  static void ExpectStreamingDecode(const Tokenizer& t, const std::vector<int32_t>& ids,
                                    bool skip_special, const std::string& expected,
                                    const std::string& label) {
    StreamingDecoder decoder(t, skip_special);
    std::string all;
    for (int32_t id : ids) {
      const std::string part = decoder.Push(id);
      ASSERT_TRUE(uni::IsValidUtf8(part)) << label << ": partial UTF-8 after id " << id;
      all += part;
    }
    const std::string rest = decoder.Finish();
    ASSERT_TRUE(uni::IsValidUtf8(rest)) << label;
    all += rest;
    EXPECT_EQ(all, expected) << label << " skip_special=" << skip_special;
  }

  static json* cases_;
  static std::string* tokenizer_json_;
  static Tokenizer* tokenizer_;
};

json* TokenizerTest::cases_ = nullptr;
std::string* TokenizerTest::tokenizer_json_ = nullptr;
Tokenizer* TokenizerTest::tokenizer_ = nullptr;

TEST_F(TokenizerTest, CasesFileHasEnoughCases) {
  EXPECT_GE(cases()["encode_cases"].size(), 200u);
  EXPECT_GE(cases()["decode_cases"].size(), 50u);
  EXPECT_EQ(cases()["meta"]["num_ids"].get<int32_t>(), tok().num_ids());
}

TEST_F(TokenizerTest, EncodeMatchesHuggingFaceOnEveryCase) {
  int failures = 0;
  for (const json& c : cases()["encode_cases"]) {
    const std::string text = c["text"];
    const std::vector<int32_t> plain = tok().Encode(text, /*add_special_tokens=*/false);
    const std::vector<int32_t> special = tok().Encode(text, /*add_special_tokens=*/true);
    EXPECT_EQ(plain, Ids(c["ids"])) << "text " << Quote(text);
    EXPECT_EQ(special, Ids(c["ids_special"])) << "text " << Quote(text);
    failures += plain != Ids(c["ids"]);
    ASSERT_LT(failures, 10) << "stopping after 10 failing cases";
  }
}

TEST_F(TokenizerTest, DecodeMatchesHuggingFaceOnEveryEncodeCase) {
  for (const json& c : cases()["encode_cases"]) {
    const std::vector<int32_t> ids = Ids(c["ids_special"]);
    EXPECT_EQ(tok().Decode(ids, false), c["decoded"].get<std::string>()) << Quote(c["text"]);
    EXPECT_EQ(tok().Decode(ids, true), c["decoded_skip"].get<std::string>()) << Quote(c["text"]);
  }
}

TEST_F(TokenizerTest, DecodeMatchesHuggingFaceOnInvalidUtf8AndUnknownIds) {
  for (const json& c : cases()["decode_cases"]) {
    const std::vector<int32_t> ids = Ids(c["ids"]);
    EXPECT_EQ(tok().Decode(ids, false), c["decoded"].get<std::string>()) << c["ids"].dump();
    EXPECT_EQ(tok().Decode(ids, true), c["decoded_skip"].get<std::string>()) << c["ids"].dump();
  }
}

TEST_F(TokenizerTest, StreamingDecoderEqualsDecodeOnEveryCase) {
  for (const json& c : cases()["encode_cases"]) {
    const std::vector<int32_t> ids = Ids(c["ids_special"]);
    ExpectStreamingDecode(tok(), ids, false, c["decoded"], Quote(c["text"]));
    ExpectStreamingDecode(tok(), ids, true, c["decoded_skip"], Quote(c["text"]));
  }
  for (const json& c : cases()["decode_cases"]) {
    const std::vector<int32_t> ids = Ids(c["ids"]);
    ExpectStreamingDecode(tok(), ids, false, c["decoded"], c["ids"].dump());
    ExpectStreamingDecode(tok(), ids, true, c["decoded_skip"], c["ids"].dump());
  }
}

TEST_F(TokenizerTest, StreamingDecoderHoldsIncompleteCharacters) {
  // 你 = E4 BD A0, pushed as three single-byte tokens.
  const int32_t e4 = *tok().TokenToId("ä");
  const int32_t bd = *tok().TokenToId("½");
  const int32_t a0 = *tok().TokenToId("ł");
  StreamingDecoder decoder(tok(), /*skip_special_tokens=*/false);
  EXPECT_EQ(decoder.Push(e4), "");
  EXPECT_EQ(decoder.Push(bd), "");
  EXPECT_EQ(decoder.Push(a0), "你");
  EXPECT_EQ(decoder.Finish(), "");
  // A truncated character is flushed as one U+FFFD, and an invalid byte is final at once.
  EXPECT_EQ(decoder.Push(e4), "");
  EXPECT_EQ(decoder.Push(bd), "");
  EXPECT_EQ(decoder.Finish(), "\xEF\xBF\xBD");
  EXPECT_EQ(decoder.Push(e4), "");
  EXPECT_EQ(decoder.Push(*tok().TokenToId("a")),
            "\xEF\xBF\xBD"
            "a");
  // Skipped and unknown ids produce nothing.
  StreamingDecoder skipping(tok(), /*skip_special_tokens=*/true);
  EXPECT_EQ(skipping.Push(100000), "");
  EXPECT_EQ(skipping.Push(-5), "");
  EXPECT_EQ(skipping.Push(100015), "");
  EXPECT_EQ(skipping.Finish(), "");
}

TEST_F(TokenizerTest, VariantsMatchHuggingFace) {
  json base = json::parse(*tokenizer_json_);
  for (const json& v : cases()["variants"]) {
    const std::string name = v["name"];
    SCOPED_TRACE(name);
    // The variant's parts are swapped into `base` and swapped back afterwards: copying the
    // 100K-entry vocabulary for every variant would dominate the test's time.
    struct Saved {
      json* object;
      std::string key;
      std::optional<json> value;  // nullopt: the key did not exist
    };
    std::vector<Saved> saved;
    auto apply = [&saved](json& object, const json& replacements) {
      for (auto it = replacements.begin(); it != replacements.end(); ++it) {
        saved.push_back({&object, it.key(), std::nullopt});
        if (object.contains(it.key())) saved.back().value = std::move(object[it.key()]);
        object[it.key()] = it.value();
      }
    };
    apply(base, v["override"]);
    if (v.contains("model_override")) apply(base["model"], v["model_override"]);
    absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::FromJson(base, nullptr);
    const json pre_tokenizer = base["pre_tokenizer"];
    for (auto it = saved.rbegin(); it != saved.rend(); ++it) {
      if (it->value.has_value()) {
        (*it->object)[it->key] = *std::move(it->value);
      } else {
        it->object->erase(it->key);
      }
    }
    ASSERT_TRUE(t.ok()) << t.status();
    absl::StatusOr<std::unique_ptr<ti::PreTokenizer>> pre =
        ti::PreTokenizer::FromJson(pre_tokenizer);
    ASSERT_TRUE(pre.ok()) << pre.status();
    for (const json& c : v["cases"]) {
      const std::string text = c["text"];
      std::vector<std::string> pieces;
      (*pre)->PreTokenize(text, &pieces);
      EXPECT_EQ(pieces, c["pieces"].get<std::vector<std::string>>()) << Quote(text);
      EXPECT_EQ((*t)->Encode(text, false), Ids(c["ids"])) << Quote(text);
      EXPECT_EQ((*t)->Encode(text, true), Ids(c["ids_special"])) << Quote(text);
      if (c.contains("decoded")) {
        EXPECT_EQ((*t)->Decode(Ids(c["ids_special"]), false), c["decoded"].get<std::string>());
        EXPECT_EQ((*t)->Decode(Ids(c["ids_special"]), true), c["decoded_skip"].get<std::string>());
      }
    }
    if (v.contains("token_ids")) {
      for (auto it = v["token_ids"].begin(); it != v["token_ids"].end(); ++it) {
        EXPECT_EQ((*t)->TokenToId(it.key()), it.value().get<int32_t>()) << it.key();
      }
      EXPECT_EQ((*t)->num_ids(), v["num_ids"].get<int32_t>());
    }
  }
}

std::vector<uni::CodepointRange> ToRanges(const json& pairs) {
  std::vector<uni::CodepointRange> out;
  for (const json& p : pairs) out.push_back({p[0].get<char32_t>(), p[1].get<char32_t>()});
  return out;
}

bool SameRanges(absl::Span<const uni::CodepointRange> a,
                const std::vector<uni::CodepointRange>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].lo != b[i].lo || a[i].hi != b[i].hi) return false;
  }
  return true;
}

TEST_F(TokenizerTest, UnicodeTablesMatchHuggingFace) {
  const json& u = cases()["unicode"];
  std::vector<char32_t> ws;
  for (const auto& r : uni::WhitespaceRanges()) {
    for (char32_t c = r.lo; c <= r.hi; ++c) ws.push_back(c);
  }
  EXPECT_EQ(ws, u["whitespace"].get<std::vector<char32_t>>());
  EXPECT_TRUE(SameRanges(uni::NumericRanges(), ToRanges(u["numeric_ranges"])))
      << "regenerate with model/gen_unicode_tables.py";
  EXPECT_TRUE(SameRanges(uni::WordRanges(), ToRanges(u["word_ranges"])))
      << "regenerate with model/gen_unicode_tables.py";
  EXPECT_TRUE(SameRanges(uni::OnigLetterRanges(), ToRanges(u["onig_letter_ranges"])));
  EXPECT_TRUE(SameRanges(uni::OnigNumberRanges(), ToRanges(u["onig_number_ranges"])));
  EXPECT_TRUE(SameRanges(uni::OnigWordRanges(), ToRanges(u["onig_word_ranges"])));
  EXPECT_TRUE(SameRanges(uni::OnigDigitRanges(), ToRanges(u["onig_digit_ranges"])));
}

TEST_F(TokenizerTest, ReadsDeepSeekV2SpecialTokensAndConfig) {
  EXPECT_EQ(tok().bos_token(), "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(tok().eos_token(), "<｜end▁of▁sentence｜>");
  EXPECT_EQ(tok().bos_id(), 100000);
  EXPECT_EQ(tok().eos_id(), 100001);
  EXPECT_TRUE(tok().add_bos_token());
  EXPECT_EQ(tok().num_ids(), 100015);
  ASSERT_TRUE(tok().chat_template().has_value());
  EXPECT_TRUE(Contains(std::string(*tok().chat_template()), "'User: ' + message['content']"));
  EXPECT_EQ(tok().TokenToId("ü"), 100014);
  EXPECT_EQ(tok().TokenToId("Ġworld"), 1843);
  EXPECT_EQ(tok().TokenToId("no such token"), std::nullopt);
  EXPECT_EQ(tok().IdToToken(1843), "Ġworld");
  EXPECT_EQ(tok().IdToToken(100000), "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(tok().IdToToken(100015), std::nullopt);
}

TEST_F(TokenizerTest, LiteralAddedCharacterEncodesToAddedIdAndDecodesToReplacement) {
  EXPECT_EQ(tok().Encode("ü", false), std::vector<int32_t>{100014});
  EXPECT_EQ(tok().Encode("ü", true), (std::vector<int32_t>{100000, 100014}));
  // tokenizers' ByteLevel decoder turns "ü" into the byte 0xFC: invalid UTF-8.
  EXPECT_EQ(tok().Decode({100014}, false), "\xEF\xBF\xBD");
}

TEST_F(TokenizerTest, DecodeSkipsUnknownAndNegativeIds) {
  const std::vector<int32_t> ids = {3, -1, 100015, 102399, 4, INT32_MAX, INT32_MIN};
  EXPECT_EQ(tok().Decode(ids, false), "$%");
}

TEST_F(TokenizerTest, InvalidUtf8InputIsEncodedAsReplacementCharacters) {
  // Each maximal invalid subpart becomes U+FFFD, as Python's errors="replace" does.
  EXPECT_EQ(tok().Encode("a\xFF"
                         "b",
                         false),
            tok().Encode("a\xEF\xBF\xBD"
                         "b",
                         false));
  EXPECT_EQ(tok().Encode("\xE4\xBD", false), tok().Encode("\xEF\xBF\xBD", false));
  EXPECT_EQ(tok().Encode("\xED\xA0\x80", false),
            tok().Encode("\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD", false));
}

TEST_F(TokenizerTest, LongTextRoundTripsAndConcurrentEncodesAgree) {
  std::string text;
  const std::vector<std::string> parts = {"The quick brown fox jumps over the lazy dog. ",
                                          "你好世界，今天天气很好。",
                                          "12345 67890\n",
                                          "def f(x):\n    return x * 2\n",
                                          "Привет, мир! ",
                                          "😀👍🏽 ",
                                          "\t\u00a0\u3000 ",
                                          "don't stop "};
  for (int i = 0; text.size() < 100 * 1024; ++i) text += parts[(i * 7 + i / 3) % parts.size()];
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tok().Encode(text, false);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("encoded %zu bytes into %zu ids in %.1f ms\n", text.size(), ids.size(),
              seconds * 1e3);
  EXPECT_EQ(tok().Decode(ids, false), text);

  std::vector<std::vector<int32_t>> results(4);
  std::vector<std::thread> threads;
  for (auto& r : results) {
    threads.emplace_back([&r, &text] { r = TokenizerTest::tok().Encode(text, true); });
  }
  for (auto& t : threads) t.join();
  for (const auto& r : results) {
    ASSERT_EQ(r.size(), ids.size() + 1);
    EXPECT_TRUE(std::equal(ids.begin(), ids.end(), r.begin() + 1));
  }
}

TEST(TokenizerLoadTest, MissingDirectoryIsNotFoundNamingTheFile) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::FromDir("/nonexistent/dsv2_tok");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(std::string(t.status().message()), "/nonexistent/dsv2_tok/tokenizer.json"));
}

TEST(TokenizerLoadTest, MalformedJsonIsInvalidArgumentNamingTheFile) {
  const std::string path = WriteTempFile("bad_tokenizer.json", "{\"model\": {\"vocab\": ");
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::FromFiles(path, "");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(std::string(t.status().message()), path));
  EXPECT_TRUE(Contains(std::string(t.status().message()), "malformed JSON"));
}

TEST(TokenizerLoadTest, MalformedConfigIsInvalidArgumentNamingTheConfigFile) {
  const std::string config = WriteTempFile("bad_tokenizer_config.json", "{\"bos_token\": [}");
  absl::StatusOr<std::unique_ptr<Tokenizer>> t =
      Tokenizer::FromFiles(kTokenizerDir + "/tokenizer.json", config);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(std::string(t.status().message()), config));
}

// Loads a small valid tokenizer.json with one part replaced.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTiny(const std::string& key, const json& value) {
  json j = {
      {"model",
       {{"type", "BPE"},
        {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}, {"Ġ", 3}}},
        {"merges", json::array({"a b"})}}},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"added_tokens", json::array()},
  };
  if (!key.empty()) j[key] = value;
  return Tokenizer::FromJsonText(j.dump(), "");
}

TEST(TokenizerLoadTest, TinyTokenizerWorks) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = LoadTiny("", nullptr);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->Encode("ab ab", true), (std::vector<int32_t>{2, 3, 2}));
  EXPECT_EQ((*t)->Encode("abc", false), (std::vector<int32_t>{2}));  // "c" is not in the vocab
  EXPECT_EQ((*t)->Decode({2, 3, 0}, false), "ab a");
  EXPECT_EQ((*t)->bos_id(), std::nullopt);
  EXPECT_FALSE((*t)->add_bos_token());
  EXPECT_FALSE((*t)->chat_template().has_value());
}

TEST(TokenizerLoadTest, UnsupportedComponentsAreUnimplemented) {
  const json lookbehind = {{"type", "Split"},
                           {"pattern", {{"Regex", "(?<=a)b"}}},
                           {"behavior", "Isolated"},
                           {"invert", false}};
  const std::vector<std::pair<std::string, json>> cases = {
      {"pre_tokenizer", {{"type", "Metaspace"}}}, {"pre_tokenizer", lookbehind},
      {"normalizer", {{"type", "NFC"}}},          {"decoder", {{"type", "Metaspace"}}},
      {"post_processor", {{"type", "Unknown"}}},
  };
  for (const auto& [key, value] : cases) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> t = LoadTiny(key, value);
    ASSERT_FALSE(t.ok()) << key << " " << value.dump();
    EXPECT_EQ(t.status().code(), absl::StatusCode::kUnimplemented) << t.status();
    EXPECT_TRUE(Contains(std::string(t.status().message()), "tokenizer.json"));
  }
}

TEST(TokenizerLoadTest, BadModelIsInvalidArgumentNamingTheKey) {
  const std::vector<std::pair<json, std::string>> cases = {
      {{{"type", "BPE"}, {"vocab", {{"a", 0}}}, {"merges", json::array({"a b"})}}, "merges[0]"},
      {{{"type", "BPE"}, {"vocab", {{"a", -3}}}, {"merges", json::array()}}, "vocab"},
      {{{"type", "BPE"}, {"vocab", {{"a", 0}}}, {"merges", json::array({"ab"})}}, "merges[0]"},
      {{{"type", "BPE"}, {"vocab", json::array()}, {"merges", json::array()}}, "vocab"},
      {{{"type", "BPE"}, {"vocab", {{"a", 0}}}, {"merges", json::array()}, {"unk_token", "?"}},
       "unk_token"},
  };
  for (const auto& [model, what] : cases) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> t = LoadTiny("model", model);
    ASSERT_FALSE(t.ok()) << model.dump();
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << t.status();
    EXPECT_TRUE(Contains(std::string(t.status().message()), what));
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> t =
      LoadTiny("added_tokens", json::array({json{{"id", 5}}}));
  ASSERT_FALSE(t.ok());
  EXPECT_TRUE(Contains(std::string(t.status().message()), "added_tokens[0].content"));
}

TEST(OnigRegexTest, TranslatesUnicodeClassesAndAnchors) {
  absl::StatusOr<ti::TranslatedRegex> t = ti::TranslateOnigRegex(R"(\s+$)");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(Contains(std::string(t->re2), "\\x{3000}"));
  EXPECT_TRUE(Contains(std::string(t->re2), "(?m:$)"));
  EXPECT_FALSE(t->has_lookahead_alternative);

  t = ti::TranslateOnigRegex(R"(a|\s+(?!\S)|\s+)");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->has_lookahead_alternative);
  EXPECT_FALSE(t->rest.empty());

  for (const char* bad : {R"((?=a)b)", R"(\bword)", R"((a)\1)", R"((?>a))", R"(a++)", "[a[b]]",
                          R"((?i)x|\s+(?!\S)|y)", R"((?x)a)"}) {
    t = ti::TranslateOnigRegex(bad);
    EXPECT_EQ(t.status().code(), absl::StatusCode::kUnimplemented) << bad;
  }
}

TEST(OnigRegexTest, LookaheadEmulationGivesBackTheLastSpace) {
  absl::StatusOr<std::unique_ptr<ti::OnigRegex>> re = ti::OnigRegex::Compile(R"(\s+(?!\S)|\s+)");
  ASSERT_TRUE(re.ok()) << re.status();
  std::vector<ti::ByteRange> m;
  (*re)->FindAll("a   b c  ", &m);
  // "  " (the third space goes with "b" in a pre-tokenizer), " " by the second
  // alternative, " " before "c" likewise, and the trailing run whole.
  const std::vector<std::pair<size_t, size_t>> expected = {{1, 3}, {3, 4}, {5, 6}, {7, 9}};
  ASSERT_EQ(m.size(), expected.size());
  for (size_t i = 0; i < m.size(); ++i) {
    EXPECT_EQ(m[i].begin, expected[i].first) << i;
    EXPECT_EQ(m[i].end, expected[i].second) << i;
  }
}

TEST(Utf8LossyTest, MatchesRustFromUtf8Lossy) {
  auto lossy = [](std::string_view in) {
    std::string out;
    uni::AppendUtf8Lossy(in, true, &out);
    return out;
  };
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(lossy("a\x80"
                  "b"),
            "a" + r + "b");
  EXPECT_EQ(lossy("\xE4\xBD"
                  "a"),
            r + "a");
  EXPECT_EQ(lossy("\xED\xA0\x80"), r + r + r);          // surrogate: 3 maximal subparts
  EXPECT_EQ(lossy("\xF4\x90\x80\x80"), r + r + r + r);  // above U+10FFFF
  EXPECT_EQ(lossy("\xC0\xAF"), r + r);                  // overlong
  EXPECT_EQ(lossy("\xF0\x9F\x98"), r);                  // truncated at the end
  std::string out;
  EXPECT_EQ(uni::AppendUtf8Lossy("ab\xF0\x9F\x98", false, &out), 2u);
  EXPECT_EQ(out, "ab");
}

}  // namespace
}  // namespace dsv2
