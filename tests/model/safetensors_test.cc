#include "model/safetensors.h"

#include <stdlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/dtype.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

using Names = std::vector<std::string>;
using Shape = std::vector<int64_t>;
using Floats = std::vector<float>;

// gmock is not linked into the test binaries; this stands in for HasSubstr.
::testing::AssertionResult HasSubstr(const std::string& text, const std::string& needle) {
  if (text.find(needle) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not contain '" << needle << "'";
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string LengthPrefix(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
  return s;
}

// A file with the given header text (unpadded) followed by `data_bytes` bytes.
std::string RawFile(const std::string& header, size_t data_bytes) {
  return LengthPrefix(header.size()) + header + std::string(data_bytes, '\x5a');
}

template <typename T>
std::string Bytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

TensorToWrite F32(std::string name, std::vector<int64_t> shape, const std::vector<float>& v) {
  return {std::move(name), DType::kF32, std::move(shape), Bytes(v)};
}
TensorToWrite Bf16(std::string name, std::vector<int64_t> shape, const std::vector<float>& v) {
  std::vector<uint16_t> bits;
  for (float f : v) bits.push_back(F32ToBf16(f));
  return {std::move(name), DType::kBF16, std::move(shape), Bytes(bits)};
}
TensorToWrite F16Bits(std::string name, std::vector<int64_t> shape,
                      const std::vector<uint16_t>& bits) {
  return {std::move(name), DType::kF16, std::move(shape), Bytes(bits)};
}

std::vector<float> AsF32(const TensorView& v) {
  std::vector<float> out(static_cast<size_t>(v.num_elements()));
  ToF32(v.data, v.dtype, out.size(), out.data());
  return out;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/safetensors_test_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // Writes `bytes` as dir_/name and opens it.
  absl::StatusOr<std::unique_ptr<Checkpoint>> OpenRaw(const std::string& bytes,
                                                      const std::string& name = "bad.safetensors") {
    WriteAll(Path(name), bytes);
    return Checkpoint::OpenFile(Path(name));
  }

  // Writes shards a (tensors x, y) and b (tensor z) plus an index listing them.
  void WriteTwoShards() {
    ASSERT_TRUE(WriteSafetensors(Path("model-00001-of-00002.safetensors"),
                                 {F32("x", {2}, {1.5f, -2.0f}), Bf16("y", {1, 2}, {3.0f, 0.25f})})
                    .ok());
    ASSERT_TRUE(WriteSafetensors(Path("model-00002-of-00002.safetensors"),
                                 {F16Bits("z", {3}, {0x3c00, 0xc000, 0x0001})})
                    .ok());
    WriteAll(Path("model.safetensors.index.json"), R"({
      "metadata": {"total_size": 18},
      "weight_map": {"x": "model-00001-of-00002.safetensors",
                     "y": "model-00001-of-00002.safetensors",
                     "z": "model-00002-of-00002.safetensors"}})");
  }

  std::string dir_;
};

void ExpectError(const absl::StatusOr<std::unique_ptr<Checkpoint>>& c, absl::StatusCode code,
                 const std::string& substring) {
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), code) << c.status();
  EXPECT_TRUE(HasSubstr(std::string(c.status().message()), substring));
}

// ---------------------------------------------------------------------------
// Round trips.

// The weights fingerprint: the same tensors agree, one file or sharded;
// a changed leading value, shape, dtype or name changes it.
TEST_F(SafetensorsTest, FingerprintNamesTheCheckpointNotItsSharding) {
  WriteTwoShards();
  auto sharded = Checkpoint::OpenDir(dir_);
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  const std::string fp = (*sharded)->Fingerprint();
  EXPECT_EQ(fp.size(), 16u);
  EXPECT_EQ((*sharded)->Fingerprint(), fp);  // stable (and the released pages read back)
  const auto one_file = [&](std::vector<TensorToWrite> tensors) {
    std::filesystem::remove(Path("one.safetensors"));
    EXPECT_TRUE(WriteSafetensors(Path("one.safetensors"), tensors).ok());
    auto c = Checkpoint::OpenFile(Path("one.safetensors"));
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? (*c)->Fingerprint() : std::string();
  };
  const std::vector<TensorToWrite> same = {F32("x", {2}, {1.5f, -2.0f}),
                                           Bf16("y", {1, 2}, {3.0f, 0.25f}),
                                           F16Bits("z", {3}, {0x3c00, 0xc000, 0x0001})};
  EXPECT_EQ(one_file(same), fp);
  EXPECT_NE(one_file({F32("x", {2}, {1.5f, -2.5f}), same[1], same[2]}), fp);     // a value
  EXPECT_NE(one_file({F32("x", {1, 2}, {1.5f, -2.0f}), same[1], same[2]}), fp);  // a shape
  EXPECT_NE(one_file({F32("x", {2}, {1.5f, -2.0f}), F32("y", {1, 2}, {3.0f, 0.25f}), same[2]}),
            fp);                                                              // a dtype
  EXPECT_NE(one_file({F32("w", {2}, {1.5f, -2.0f}), same[1], same[2]}), fp);  // a name
}

TEST_F(SafetensorsTest, SingleFileRoundTripIsExact) {
  const std::vector<float> f32 = {1.0f, -0.0f, 3.14159274f, 1e-40f, -65504.0f, 7.0f};
  const std::vector<float> bf16 = {1.0f, -2.5f, 0.0078125f, 0x1.fep127f};
  const std::vector<uint16_t> f16 = {0x3c00, 0x0001, 0x7bff,
                                     0xfc00};  // 1, min subnormal, max, -inf
  ASSERT_TRUE(WriteSafetensors(Path("model.safetensors"),
                               {F32("w.f32", {2, 3}, f32), Bf16("w.bf16", {4}, bf16),
                                F16Bits("w.f16", {2, 2}, f16), F32("scalar", {}, {42.0f}),
                                F32("empty", {0, 5}, {})})
                  .ok());
  auto c = Checkpoint::OpenFile(Path("model.safetensors"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->Names(), (Names{"empty", "scalar", "w.bf16", "w.f16", "w.f32"}));
  EXPECT_EQ((*c)->mapped_bytes(), std::filesystem::file_size(Path("model.safetensors")));

  const TensorView* t = (*c)->Find("w.f32");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->file, "model.safetensors");
  EXPECT_EQ(t->dtype, DType::kF32);
  EXPECT_EQ(t->shape, (Shape{2, 3}));
  EXPECT_EQ(t->num_elements(), 6);
  ASSERT_EQ(t->num_bytes, 24u);
  EXPECT_EQ(std::memcmp(t->data, f32.data(), 24), 0);  // bit-exact, incl. -0 and subnormal

  t = (*c)->Find("w.bf16");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, DType::kBF16);
  EXPECT_EQ(AsF32(*t), bf16);  // every value is representable in bf16

  t = (*c)->Find("w.f16");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, DType::kF16);
  EXPECT_EQ(t->shape, (Shape{2, 2}));
  const std::vector<float> f16_values = AsF32(*t);
  EXPECT_EQ(f16_values,
            (Floats{1.0f, 0x1p-24f, 65504.0f, -std::numeric_limits<float>::infinity()}));

  t = (*c)->Find("scalar");
  ASSERT_NE(t, nullptr);
  EXPECT_TRUE(t->shape.empty());
  EXPECT_EQ(t->num_elements(), 1);
  EXPECT_EQ(AsF32(*t), std::vector<float>{42.0f});

  t = (*c)->Find("empty");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->num_elements(), 0);
  EXPECT_EQ(t->num_bytes, 0u);

  EXPECT_EQ((*c)->Find("nope"), nullptr);
}

TEST_F(SafetensorsTest, WriterPadsHeaderToMultipleOf8AndKeepsGivenOrder) {
  ASSERT_TRUE(WriteSafetensors(Path("m.safetensors"),
                               {F32("zeta", {1}, {1.0f}), Bf16("alpha", {3}, {1.0f, 2.0f, 3.0f}),
                                F32("mid", {2}, {4.0f, 5.0f})})
                  .ok());
  const std::string file = ReadAll(Path("m.safetensors"));
  ASSERT_GE(file.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | static_cast<uint8_t>(file[i]);
  EXPECT_EQ(n % 8, 0u);
  ASSERT_EQ(file.size(), 8 + n + 4 + 6 + 8);
  const std::string header = file.substr(8, n);
  EXPECT_TRUE(HasSubstr(header, "\"__metadata__\":{\"format\":\"pt\"}"));
  EXPECT_TRUE(
      HasSubstr(header, "\"zeta\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}"));
  EXPECT_TRUE(
      HasSubstr(header, "\"alpha\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[4,10]}"));
  EXPECT_TRUE(
      HasSubstr(header, "\"mid\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[10,18]}"));
  EXPECT_LT(header.find("zeta"), header.find("alpha"));
  EXPECT_LT(header.find("alpha"), header.find("mid"));
  EXPECT_EQ(header.find_first_not_of(' ', header.find_last_of('}') + 1), std::string::npos);

  auto c = Checkpoint::OpenFile(Path("m.safetensors"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(AsF32(*(*c)->Find("mid")), (std::vector<float>{4.0f, 5.0f}));
}

TEST_F(SafetensorsTest, WriterRejectsByteCountNotMatchingShape) {
  TensorToWrite t = F32("w", {2, 2}, {1.0f, 2.0f, 3.0f});
  absl::Status s = WriteSafetensors(Path("m.safetensors"), {t});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(HasSubstr(std::string(s.message()), "has 12 bytes; shape [2, 2] x F32 needs 16"));
  EXPECT_FALSE(std::filesystem::exists(Path("m.safetensors")));
}

TEST_F(SafetensorsTest, WriterRejectsDuplicateNames) {
  absl::Status s =
      WriteSafetensors(Path("m.safetensors"), {F32("w", {1}, {1.0f}), F32("w", {1}, {2.0f})});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(HasSubstr(std::string(s.message()), "duplicate"));
}

TEST_F(SafetensorsTest, FileWriterStreamsTensorsInSpecOrder) {
  auto w = SafetensorsFileWriter::Create(Path("s.safetensors"),
                                         {{"a", DType::kI8, {2, 2}}, {"b", DType::kF16, {3}}});
  ASSERT_TRUE(w.ok()) << w.status();
  // Out of order, wrong size, early finish: refused, nothing lost.
  EXPECT_EQ((*w)->Append("b", std::string(6, '\0')).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*w)->Append("a", "abc").code(), absl::StatusCode::kInvalidArgument);
  const absl::Status early = (*w)->Finish();
  EXPECT_EQ(early.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(HasSubstr(std::string(early.message()), "the next is 'a'")) << early;
  EXPECT_FALSE(std::filesystem::exists(Path("s.safetensors")));
  ASSERT_TRUE((*w)->Append("a", "\x01\x02\xff\x80").ok());
  ASSERT_TRUE((*w)->Append("b", std::string("\x00\x3c\x00\xc0\x01\x00", 6)).ok());
  EXPECT_EQ((*w)->Append("c", "x").code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE((*w)->Finish().ok());
  auto c = Checkpoint::OpenFile(Path("s.safetensors"));
  ASSERT_TRUE(c.ok()) << c.status();
  const TensorView* a = (*c)->Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(a->data), 4), "\x01\x02\xff\x80");
  EXPECT_EQ(AsF32(*(*c)->Find("b")), (std::vector<float>{1.0f, -2.0f, 0x1p-24f}));
}

TEST_F(SafetensorsTest, AbandonedFileWriterLeavesNothing) {
  {
    auto w = SafetensorsFileWriter::Create(Path("gone.safetensors"), {{"a", DType::kF32, {1}}});
    ASSERT_TRUE(w.ok());
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir_));
}

TEST_F(SafetensorsTest, CheckpointWriterShardsAndIndexes) {
  // 8-byte tensors, at most 20 bytes per shard: [a b] [c d] [big] [e].
  std::vector<TensorSpec> specs = {{"a", DType::kF32, {2}},   {"b", DType::kF32, {2}},
                                   {"c", DType::kF32, {2}},   {"d", DType::kF32, {2}},
                                   {"big", DType::kF32, {8}}, {"e", DType::kBF16, {4}}};
  auto w = CheckpointWriter::Create(dir_, specs, 20);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->total_bytes(), 72u);
  for (const TensorSpec& s : specs) {
    const size_t n = s.name == "big" ? 32 : 8;
    ASSERT_TRUE((*w)->Append(s.name, std::string(n, s.name[0])).ok()) << s.name;
    // Nothing is findable before the index is written.
    EXPECT_FALSE(Checkpoint::OpenDir(dir_).ok());
  }
  ASSERT_TRUE((*w)->Finish().ok());
  for (int i = 1; i <= 4; ++i) {
    EXPECT_TRUE(
        std::filesystem::exists(Path(absl::StrCat("model-0000", i, "-of-00004.safetensors"))));
  }
  const nlohmann::json index = nlohmann::json::parse(ReadAll(Path("model.safetensors.index.json")));
  EXPECT_EQ(index["metadata"]["total_size"], 72);
  EXPECT_EQ(index["weight_map"]["b"], "model-00001-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["c"], "model-00002-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["big"], "model-00003-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["e"], "model-00004-of-00004.safetensors");
  auto c = Checkpoint::OpenDir(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->Names().size(), 6u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>((*c)->Find("e")->data), 8), "eeeeeeee");
}

TEST_F(SafetensorsTest, CheckpointWriterWritesOneFileWhenItFits) {
  auto w = CheckpointWriter::Create(dir_, {{"a", DType::kF32, {1}}}, 1 << 20);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Append("a", "abcd").ok());
  ASSERT_TRUE((*w)->Finish().ok());
  EXPECT_TRUE(std::filesystem::exists(Path("model.safetensors")));
  EXPECT_FALSE(std::filesystem::exists(Path("model.safetensors.index.json")));
  EXPECT_TRUE(Checkpoint::OpenDir(dir_).ok());
}

TEST_F(SafetensorsTest, OpenDirUsesSingleFileWithoutIndex) {
  ASSERT_TRUE(WriteSafetensors(Path("model.safetensors"), {F32("a", {1}, {9.0f})}).ok());
  auto c = Checkpoint::OpenDir(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->Names(), (Names{"a"}));
}

TEST_F(SafetensorsTest, OpenDirReadsTwoShardIndex) {
  WriteTwoShards();
  auto c = Checkpoint::OpenDir(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->Names(), (Names{"x", "y", "z"}));
  EXPECT_EQ((*c)->mapped_bytes(),
            std::filesystem::file_size(Path("model-00001-of-00002.safetensors")) +
                std::filesystem::file_size(Path("model-00002-of-00002.safetensors")));
  EXPECT_EQ((*c)->Find("x")->file, "model-00001-of-00002.safetensors");
  EXPECT_EQ((*c)->Find("z")->file, "model-00002-of-00002.safetensors");
  EXPECT_EQ(AsF32(*(*c)->Find("x")), (std::vector<float>{1.5f, -2.0f}));
  EXPECT_EQ(AsF32(*(*c)->Find("y")), (std::vector<float>{3.0f, 0.25f}));
  EXPECT_EQ(AsF32(*(*c)->Find("z")), (Floats{1.0f, -2.0f, 0x1p-24f}));
}

TEST_F(SafetensorsTest, OpenDirPrefersIndexOverSingleFile) {
  WriteTwoShards();
  ASSERT_TRUE(WriteSafetensors(Path("model.safetensors"), {F32("single", {1}, {1.0f})}).ok());
  auto c = Checkpoint::OpenDir(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->Names(), (Names{"x", "y", "z"}));
}

TEST_F(SafetensorsTest, OpenDirAcceptsTrailingSlash) {
  WriteTwoShards();
  auto c = Checkpoint::OpenDir(dir_ + "/");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->Names().size(), 3u);
}

TEST_F(SafetensorsTest, OpenDirOnEmptyDirIsNotFound) {
  ExpectError(Checkpoint::OpenDir(dir_), absl::StatusCode::kNotFound, "neither");
}

TEST_F(SafetensorsTest, OpenFileMissingIsNotFound) {
  auto c = Checkpoint::OpenFile(Path("absent.safetensors"));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound) << c.status();
}

TEST_F(SafetensorsTest, OpenFileOnDirectoryIsError) {
  ExpectError(Checkpoint::OpenFile(dir_), absl::StatusCode::kInvalidArgument, "not a regular file");
}

TEST_F(SafetensorsTest, TensorInShardButNotInIndexIsKept) {
  WriteTwoShards();
  ASSERT_TRUE(WriteSafetensors(Path("model-00002-of-00002.safetensors"),
                               {F16Bits("z", {1}, {0x3c00}), F32("extra", {1}, {2.0f})})
                  .ok());
  auto c = Checkpoint::OpenDir(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->Names(), (Names{"extra", "x", "y", "z"}));
}

// ---------------------------------------------------------------------------
// Get().

TEST_F(SafetensorsTest, GetChecksShape) {
  ASSERT_TRUE(
      WriteSafetensors(Path("model.safetensors"), {F32("w", {2, 3}, std::vector<float>(6, 1.0f))})
          .ok());
  auto c = Checkpoint::OpenDir(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  auto ok = (*c)->Get("w", {2, 3});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)->name, "w");

  auto wrong = (*c)->Get("w", {3, 2});
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(wrong.status().message(),
            "model.safetensors: tensor 'w' has shape [2, 3]; expected [3, 2]");
}

TEST_F(SafetensorsTest, GetMissingTensorIsNotFound) {
  ASSERT_TRUE(WriteSafetensors(Path("model.safetensors"), {F32("w", {1}, {1.0f})}).ok());
  auto c = Checkpoint::OpenDir(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  auto missing = (*c)->Get("model.norm.weight", {1});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(), "model.norm.weight: tensor missing from checkpoint");
}

// ---------------------------------------------------------------------------
// Bad single files. Each names the file and (where there is one) the tensor.

TEST_F(SafetensorsTest, EmptyFileIsRejected) {
  ExpectError(OpenRaw(""), absl::StatusCode::kInvalidArgument, "bad.safetensors: file is 0 bytes");
}

TEST_F(SafetensorsTest, TruncatedFileIsRejected) {
  ExpectError(OpenRaw(std::string("\x10\0\0\0\0", 5), "short.safetensors"),
              absl::StatusCode::kInvalidArgument,
              "short.safetensors: file is 5 bytes; a safetensors file starts with an 8-byte");
}

TEST_F(SafetensorsTest, HeaderLengthPastEndOfFileIsRejected) {
  ExpectError(OpenRaw(LengthPrefix(100) + "{}"), absl::StatusCode::kInvalidArgument,
              "bad.safetensors: header length 100 runs past the end of the file (10 bytes)");
}

TEST_F(SafetensorsTest, HugeHeaderLengthIsRejected) {
  ExpectError(OpenRaw(LengthPrefix(~uint64_t{0}) + "{}"), absl::StatusCode::kInvalidArgument,
              "runs past the end of the file");
}

TEST_F(SafetensorsTest, HeaderLongerThan100MiBIsRejected) {
  // A sparse file big enough to hold the claimed header: the limit, not EOF, trips.
  const uint64_t header_bytes = (100ull << 20) + 1;
  WriteAll(Path("big.safetensors"), LengthPrefix(header_bytes) + "{");
  std::filesystem::resize_file(Path("big.safetensors"), 8 + header_bytes + 16);
  ExpectError(Checkpoint::OpenFile(Path("big.safetensors")), absl::StatusCode::kInvalidArgument,
              "big.safetensors: header length 104857601 exceeds the limit of 104857600");
}

TEST_F(SafetensorsTest, TruncatedHeaderJsonIsRejected) {
  // The length claims the JSON is shorter than it is: the parser must stop at N.
  ExpectError(OpenRaw(LengthPrefix(5) + "{\"a\":{\"dtype\":\"F32\"}}"),
              absl::StatusCode::kInvalidArgument, "bad.safetensors: malformed JSON header");
}

TEST_F(SafetensorsTest, BadJsonIsRejected) {
  ExpectError(OpenRaw(RawFile("{\"w\": {\"dtype\": \"F32\",", 0)),
              absl::StatusCode::kInvalidArgument, "bad.safetensors: malformed JSON header");
}

TEST_F(SafetensorsTest, TrailingGarbageAfterJsonIsRejected) {
  ExpectError(OpenRaw(RawFile("{} x", 0)), absl::StatusCode::kInvalidArgument,
              "malformed JSON header");
}

TEST_F(SafetensorsTest, DeeplyNestedJsonIsRejected) {
  ExpectError(
      OpenRaw(RawFile("{\"w\":" + std::string(100000, '[') + std::string(100000, ']') + "}", 0)),
      absl::StatusCode::kInvalidArgument, "nested deeper than");
}

TEST_F(SafetensorsTest, DuplicateKeyInHeaderIsRejected) {
  ExpectError(OpenRaw(RawFile(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                              R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                              8)),
              absl::StatusCode::kInvalidArgument, "duplicate key 'w'");
}

TEST_F(SafetensorsTest, JsonThatIsNotAnObjectIsRejected) {
  ExpectError(OpenRaw(RawFile("[1, 2]", 0)), absl::StatusCode::kInvalidArgument,
              "bad.safetensors: header is a JSON array, not an object");
}

TEST_F(SafetensorsTest, EntryThatIsNotAnObjectIsRejected) {
  ExpectError(OpenRaw(RawFile(R"({"w": [1, 2]})", 0)), absl::StatusCode::kInvalidArgument,
              "bad.safetensors: tensor 'w': entry is a JSON array, not an object");
}

TEST_F(SafetensorsTest, UnknownDtypeIsRejected) {
  ExpectError(OpenRaw(RawFile(R"({"w":{"dtype":"Q8","shape":[1],"data_offsets":[0,1]}})", 1)),
              absl::StatusCode::kInvalidArgument,
              "bad.safetensors: tensor 'w': unknown dtype 'Q8'");
}

TEST_F(SafetensorsTest, UnsupportedDtypeIsRejected) {
  ExpectError(OpenRaw(RawFile(R"({"ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", 8)),
              absl::StatusCode::kInvalidArgument,
              "bad.safetensors: tensor 'ids': unsupported dtype 'I64'");
}

TEST_F(SafetensorsTest, Int8AndUint8AreRead) {
  auto c = OpenRaw(RawFile(R"({"q":{"dtype":"I8","shape":[2,3],"data_offsets":[0,6]},)"
                           R"("p":{"dtype":"U8","shape":[4],"data_offsets":[6,10]}})",
                           10));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->Find("q")->dtype, DType::kI8);
  EXPECT_EQ((*c)->Find("q")->num_bytes, 6u);
  EXPECT_EQ((*c)->Find("p")->dtype, DType::kU8);
  EXPECT_EQ((*c)->Find("p")->num_bytes, 4u);
}

TEST_F(SafetensorsTest, MissingDtypeIsRejected) {
  ExpectError(OpenRaw(RawFile(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", 4)),
              absl::StatusCode::kInvalidArgument, "tensor 'w': missing \"dtype\"");
}

TEST_F(SafetensorsTest, NegativeShapeIsRejected) {
  ExpectError(OpenRaw(RawFile(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4)),
              absl::StatusCode::kInvalidArgument,
              "tensor 'w': shape [-1] is not an array of non-negative integers");
}

TEST_F(SafetensorsTest, FractionalShapeIsRejected) {
  ExpectError(OpenRaw(RawFile(R"({"w":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}})", 4)),
              absl::StatusCode::kInvalidArgument, "is not an array of non-negative integers");
}

TEST_F(SafetensorsTest, ShapeProductOverflowIsRejected) {
  ExpectError(
      OpenRaw(RawFile(
          R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0)),
      absl::StatusCode::kInvalidArgument, "tensor 'w': shape [4294967296, 4294967296] overflows");
}

TEST_F(SafetensorsTest, ShapeTimesDtypeNotMatchingRangeIsRejected) {
  ExpectError(OpenRaw(RawFile(R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,24]}})", 24)),
              absl::StatusCode::kInvalidArgument,
              "bad.safetensors: tensor 'w': data_offsets [0, 24] spans 24 bytes but shape [2, 3] "
              "x BF16 needs 12");
}

TEST_F(SafetensorsTest, MalformedDataOffsetsAreRejected) {
  ExpectError(OpenRaw(RawFile(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", 8)),
              absl::StatusCode::kInvalidArgument, "tensor 'w': data_offsets [0,4,8] is not");
}

TEST_F(SafetensorsTest, DataOffsetsBeginAfterEndAreRejected) {
  ExpectError(OpenRaw(RawFile(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 8)),
              absl::StatusCode::kInvalidArgument, "data_offsets [8, 4] has begin > end");
}

TEST_F(SafetensorsTest, RangePastEndOfDataIsRejected) {
  ExpectError(
      OpenRaw(RawFile(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[4,20]}})", 16),
              "model-00001-of-00002.safetensors"),
      absl::StatusCode::kInvalidArgument,
      "model-00001-of-00002.safetensors: tensor 'w': data_offsets [4, 20] end past the data "
      "section (16 bytes)");
}

TEST_F(SafetensorsTest, OverlappingRangesAreRejected) {
  ExpectError(OpenRaw(RawFile(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                              R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
                              20)),
              absl::StatusCode::kInvalidArgument,
              "bad.safetensors: tensor 'b': data_offsets [12, 20] overlap tensor 'a' [0, 16]");
}

TEST_F(SafetensorsTest, IdenticalRangesAreRejectedAsOverlap) {
  ExpectError(OpenRaw(RawFile(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                              R"("b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                              4)),
              absl::StatusCode::kInvalidArgument, "overlap");
}

TEST_F(SafetensorsTest, EmptyTensorsAndGapsAreAccepted) {
  auto c = OpenRaw(RawFile(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                           R"("e":{"dtype":"F32","shape":[0],"data_offsets":[2,2]},)"
                           R"("b":{"dtype":"F16","shape":[1],"data_offsets":[6,8]}})",
                           8));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->Names(), (Names{"a", "b", "e"}));
}

TEST_F(SafetensorsTest, MetadataIsSkipped) {
  auto c = OpenRaw(RawFile(R"({"__metadata__":{"format":"pt"},)"
                           R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                           4));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->Names(), (Names{"a"}));
}

TEST_F(SafetensorsTest, MetadataWithNonStringValueIsRejected) {
  ExpectError(OpenRaw(RawFile(R"({"__metadata__":{"format":1}})", 0)),
              absl::StatusCode::kInvalidArgument, "\"__metadata__\" value for 'format'");
}

// ---------------------------------------------------------------------------
// Bad sharded checkpoints.

TEST_F(SafetensorsTest, DuplicateTensorAcrossShardsIsRejected) {
  WriteTwoShards();
  ASSERT_TRUE(WriteSafetensors(Path("model-00002-of-00002.safetensors"),
                               {F16Bits("z", {1}, {0x3c00}), F32("x", {1}, {2.0f})})
                  .ok());
  ExpectError(Checkpoint::OpenDir(dir_), absl::StatusCode::kInvalidArgument,
              "model-00002-of-00002.safetensors: tensor 'x' is also in "
              "model-00001-of-00002.safetensors");
}

TEST_F(SafetensorsTest, IndexNamingMissingShardIsNotFound) {
  WriteTwoShards();
  std::filesystem::remove(Path("model-00002-of-00002.safetensors"));
  ExpectError(Checkpoint::OpenDir(dir_), absl::StatusCode::kNotFound,
              "model.safetensors.index.json: shard 'model-00002-of-00002.safetensors' (holding "
              "tensor 'z') does not exist");
}

TEST_F(SafetensorsTest, IndexNamingTensorAbsentFromItsShardIsRejected) {
  WriteTwoShards();
  ASSERT_TRUE(
      WriteSafetensors(Path("model-00002-of-00002.safetensors"), {F16Bits("other", {1}, {0x3c00})})
          .ok());
  ExpectError(Checkpoint::OpenDir(dir_), absl::StatusCode::kInvalidArgument,
              "model.safetensors.index.json: tensor 'z' is mapped to "
              "model-00002-of-00002.safetensors but that shard does not contain it");
}

TEST_F(SafetensorsTest, IndexNamingWrongShardIsRejected) {
  WriteTwoShards();
  WriteAll(Path("model.safetensors.index.json"), R"({"weight_map": {
      "x": "model-00002-of-00002.safetensors", "y": "model-00001-of-00002.safetensors",
      "z": "model-00002-of-00002.safetensors"}})");
  ExpectError(Checkpoint::OpenDir(dir_), absl::StatusCode::kInvalidArgument,
              "tensor 'x' is mapped to model-00002-of-00002.safetensors but it is in "
              "model-00001-of-00002.safetensors");
}

TEST_F(SafetensorsTest, MalformedIndexJsonIsRejected) {
  WriteTwoShards();
  WriteAll(Path("model.safetensors.index.json"), R"({"weight_map": {"x": )");
  ExpectError(Checkpoint::OpenDir(dir_), absl::StatusCode::kInvalidArgument,
              "model.safetensors.index.json: malformed JSON");
}

TEST_F(SafetensorsTest, IndexWithoutWeightMapIsRejected) {
  WriteTwoShards();
  WriteAll(Path("model.safetensors.index.json"), R"({"metadata": {}})");
  ExpectError(Checkpoint::OpenDir(dir_), absl::StatusCode::kInvalidArgument,
              "model.safetensors.index.json: missing \"weight_map\"");
}

TEST_F(SafetensorsTest, IndexWithEmptyWeightMapIsRejected) {
  WriteTwoShards();
  WriteAll(Path("model.safetensors.index.json"), R"({"weight_map": {}})");
  ExpectError(Checkpoint::OpenDir(dir_), absl::StatusCode::kInvalidArgument,
              "\"weight_map\" is empty");
}

TEST_F(SafetensorsTest, IndexWithNonStringShardIsRejected) {
  WriteTwoShards();
  WriteAll(Path("model.safetensors.index.json"), R"({"weight_map": {"x": 1}})");
  ExpectError(Checkpoint::OpenDir(dir_), absl::StatusCode::kInvalidArgument,
              "weight_map['x'] is not a string");
}

TEST_F(SafetensorsTest, IndexShardOutsideDirectoryIsRejected) {
  WriteTwoShards();
  WriteAll(Path("model.safetensors.index.json"),
           R"({"weight_map": {"x": "../model-00001-of-00002.safetensors"}})");
  ExpectError(Checkpoint::OpenDir(dir_), absl::StatusCode::kInvalidArgument,
              "is not a file name in the checkpoint directory");
}

TEST_F(SafetensorsTest, BadShardErrorNamesTheShard) {
  WriteTwoShards();
  WriteAll(Path("model-00002-of-00002.safetensors"), RawFile("{", 0));
  ExpectError(Checkpoint::OpenDir(dir_), absl::StatusCode::kInvalidArgument,
              "model-00002-of-00002.safetensors: malformed JSON header");
}

// ---------------------------------------------------------------------------
// Mutations of a valid file never crash or expose out-of-range data.

TEST_F(SafetensorsTest, RandomMutationsReturnStatusNeverCrash) {
  const std::string good_path = Path("good.safetensors");
  ASSERT_TRUE(WriteSafetensors(good_path, {F32("model.a", {2, 3}, {1, 2, 3, 4, 5, 6}),
                                           Bf16("model.b", {5}, {1, 2, 3, 4, 5}),
                                           F16Bits("model.c", {1, 2}, {0x3c00, 0x4000}),
                                           F32("model.scalar", {}, {7})})
                  .ok());
  const std::string good = ReadAll(good_path);
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = header_bytes << 8 | static_cast<uint8_t>(good[i]);
  const size_t header_end = 8 + header_bytes;
  ASSERT_LT(header_end, good.size());
  static constexpr char kInteresting[] = "{}[]\",:0123456789-e. \\";

  std::mt19937_64 rng(20240601);
  const std::string path = Path("mutant.safetensors");
  int num_ok = 0, num_err = 0;
  uint64_t total_checksum = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    std::string m = good;
    const int kind = static_cast<int>(rng() % 5);
    const int flips = 1 + static_cast<int>(rng() % 4);
    switch (kind) {
      case 0:  // random bytes anywhere in the header (incl. its length)
        for (int i = 0; i < flips; ++i) m[rng() % header_end] = static_cast<char>(rng());
        break;
      case 1:  // JSON-significant characters in the header text
        for (int i = 0; i < flips; ++i) {
          m[8 + rng() % (header_end - 8)] = kInteresting[rng() % (sizeof(kInteresting) - 1)];
        }
        break;
      case 2:  // truncation
        m.resize(rng() % m.size());
        break;
      case 3:  // header length field only
        m[rng() % 8] = static_cast<char>(rng());
        break;
      case 4:  // digit changes (offsets and shapes)
        for (int i = 0; i < flips; ++i) {
          const size_t pos = 8 + rng() % (header_end - 8);
          if (m[pos] >= '0' && m[pos] <= '9') m[pos] = static_cast<char>('0' + rng() % 10);
        }
        break;
    }
    WriteAll(path, m);
    auto c = Checkpoint::OpenFile(path);
    if (!c.ok()) {
      ++num_err;
      EXPECT_TRUE(HasSubstr(std::string(c.status().message()), "mutant.safetensors")) << c.status();
      continue;
    }
    ++num_ok;
    uint64_t checksum = 0;
    for (const std::string& name : (*c)->Names()) {
      const TensorView* t = (*c)->Find(name);
      ASSERT_NE(t, nullptr);
      EXPECT_EQ(t->num_bytes, static_cast<size_t>(t->num_elements()) * DTypeSize(t->dtype));
      // Touch every byte: under valgrind/ASan any view outside the mapping shows up.
      for (size_t i = 0; i < t->num_bytes; ++i) checksum += std::to_integer<uint8_t>(t->data[i]);
    }
    total_checksum += checksum;
  }
  // Keeps the byte reads observable so they are not optimised away.
  RecordProperty("data_checksum", static_cast<int>(total_checksum % 1000000));
  RecordProperty("num_ok", num_ok);
  RecordProperty("num_err", num_err);
  EXPECT_GT(num_err, 500);
  EXPECT_GT(num_ok, 50);
}

}  // namespace
}  // namespace dsv2
