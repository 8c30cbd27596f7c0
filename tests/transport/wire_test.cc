#include "transport/wire.h"

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace dsv2::transport {
namespace {

WireHeader RequestHeader(uint32_t num_rows, uint32_t hidden, WireDType dtype) {
  WireHeader h;
  h.request_id = 0x1122334455667788ull;
  h.layer = 7;
  h.micro_batch = 1;
  h.dtype = static_cast<uint16_t>(dtype);
  h.num_rows = num_rows;
  h.hidden = hidden;
  h.placement_version = (uint64_t{1} << 40) + 42;  // 64-bit: above 2^32
  return h;
}

std::vector<std::byte> Pattern(size_t n, int seed) {
  std::vector<std::byte> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<std::byte>((i * 31 + seed) & 0xFF);
  return out;
}

// 3 rows x 4 hidden f32, 4 assignments.
std::vector<std::byte> GoodRequest() {
  const WireHeader h = RequestHeader(3, 4, WireDType::kF32);
  const std::vector<WireAssignment> a = {{0, 5}, {0, 9}, {1, 0}, {2, 63}};
  return EncodeRequest(h, a, Pattern(3 * 4 * 4, 1));
}

std::vector<std::byte> GoodReply() {
  WireHeader request = RequestHeader(3, 4, WireDType::kF32);
  request.num_assignments = 4;
  return EncodeReply(request, Pattern(4 * 4 * 4, 2));
}

WireHeader GetHeader(const std::vector<std::byte>& m) {
  WireHeader h;
  std::memcpy(&h, m.data(), sizeof(h));
  return h;
}
void SetHeader(std::vector<std::byte>& m, const WireHeader& h) {
  std::memcpy(m.data(), &h, sizeof(h));
}
std::vector<std::byte> WithHeader(std::vector<std::byte> m,
                                  const std::function<void(WireHeader&)>& edit) {
  WireHeader h = GetHeader(m);
  edit(h);
  SetHeader(m, h);
  return m;
}
void SetAssignment(std::vector<std::byte>& m, size_t i, WireAssignment a) {
  std::memcpy(m.data() + sizeof(WireHeader) + i * sizeof(WireAssignment), &a, sizeof(a));
}

TEST(WireTest, DTypeSizes) {
  EXPECT_EQ(WireDTypeSize(static_cast<uint16_t>(WireDType::kF32)), 4u);
  EXPECT_EQ(WireDTypeSize(static_cast<uint16_t>(WireDType::kBf16)), 2u);
  EXPECT_EQ(WireDTypeSize(0), 0u);
  EXPECT_EQ(WireDTypeSize(3), 0u);
}

TEST(WireTest, RequestRoundTripKeepsEveryField) {
  const WireHeader h = RequestHeader(3, 8, WireDType::kBf16);
  const std::vector<WireAssignment> a = {{2, 1}, {0, 159}, {1, 3}};
  const std::vector<std::byte> activations = Pattern(3 * 8 * 2, 3);
  const std::vector<std::byte> m = EncodeRequest(h, a, activations);
  ASSERT_EQ(m.size(), sizeof(WireHeader) + 3 * sizeof(WireAssignment) + activations.size());

  absl::StatusOr<RequestView> v = ParseRequest(m);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->header.magic, kWireMagic);
  EXPECT_EQ(v->header.version, kWireVersion);
  EXPECT_EQ(v->header.kind, static_cast<uint16_t>(WireKind::kRequest));
  EXPECT_EQ(v->header.request_id, h.request_id);
  EXPECT_EQ(v->header.layer, 7u);
  EXPECT_EQ(v->header.micro_batch, 1u);
  EXPECT_EQ(v->header.dtype, static_cast<uint16_t>(WireDType::kBf16));
  EXPECT_EQ(v->header.num_rows, 3u);
  EXPECT_EQ(v->header.hidden, 8u);
  EXPECT_EQ(v->header.num_assignments, 3u);
  EXPECT_EQ(v->header.placement_version, (uint64_t{1} << 40) + 42);
  ASSERT_EQ(v->assignments.size(), 3u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(v->assignments[i].row, a[i].row);
    EXPECT_EQ(v->assignments[i].expert, a[i].expert);
  }
  ASSERT_EQ(v->activations.size(), activations.size());
  EXPECT_EQ(std::memcmp(v->activations.data(), activations.data(), activations.size()), 0);
  // The views alias the message.
  EXPECT_EQ(static_cast<const void*>(v->activations.data()),
            static_cast<const void*>(m.data() + sizeof(WireHeader) + 3 * sizeof(WireAssignment)));
}

TEST(WireTest, EncodeRequestSetsProtocolFields) {
  WireHeader h = RequestHeader(1, 1, WireDType::kF32);
  h.magic = 0;
  h.version = 9;
  h.kind = 2;
  h.status = 3;
  h.error_bytes = 5;
  h.num_assignments = 1000;
  const std::vector<WireAssignment> a = {{0, 0}};
  const std::vector<std::byte> m = EncodeRequest(h, a, Pattern(4, 0));
  absl::StatusOr<RequestView> v = ParseRequest(m);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->header.num_assignments, 1u);
  EXPECT_EQ(v->header.status, 0);
  EXPECT_EQ(v->header.error_bytes, 0u);
}

TEST(WireTest, ReplyRoundTrip) {
  const std::vector<std::byte> m = GoodReply();
  absl::StatusOr<ReplyView> v = ParseReply(m);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->header.kind, static_cast<uint16_t>(WireKind::kReply));
  EXPECT_EQ(v->header.status, 0);
  EXPECT_EQ(v->header.request_id, 0x1122334455667788ull);
  EXPECT_EQ(v->header.layer, 7u);
  EXPECT_EQ(v->header.placement_version, (uint64_t{1} << 40) + 42);
  const std::vector<std::byte> outputs = Pattern(4 * 4 * 4, 2);
  ASSERT_EQ(v->outputs.size(), outputs.size());
  EXPECT_EQ(std::memcmp(v->outputs.data(), outputs.data(), outputs.size()), 0);
  EXPECT_TRUE(v->error.empty());
}

TEST(WireTest, ErrorReplyRoundTrip) {
  const WireHeader request = RequestHeader(3, 4, WireDType::kF32);
  const std::vector<std::byte> m =
      EncodeErrorReply(request, WireStatus::kPlacementMismatch, "placement 42 is stale; have 43");
  absl::StatusOr<ReplyView> v = ParseReply(m);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->header.status, static_cast<int32_t>(WireStatus::kPlacementMismatch));
  EXPECT_EQ(v->header.request_id, request.request_id);
  EXPECT_EQ(v->error, "placement 42 is stale; have 43");
  EXPECT_TRUE(v->outputs.empty());
}

TEST(WireTest, ErrorReplyToZeroedHeaderParses) {
  // What a shard sends for a message too short to have a header.
  const std::vector<std::byte> junk(5, std::byte{0x7F});
  const WireHeader peeked = PeekHeader(junk);
  const std::vector<std::byte> m =
      EncodeErrorReply(PeekHeader({}), WireStatus::kMalformed, "short");
  absl::StatusOr<ReplyView> v = ParseReply(m);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->header.request_id, 0u);
  EXPECT_EQ(v->error, "short");
  EXPECT_EQ(peeked.num_rows, 0u);
  EXPECT_EQ(peeked.magic, 0x7F7F7F7Fu);  // the bytes that were there
  EXPECT_EQ(peeked.version, 0x007Fu);    // half present, the rest zeroed
}

TEST(WireTest, PeekHeaderReadsAFullHeader) {
  const std::vector<std::byte> m = GoodRequest();
  const WireHeader h = PeekHeader(m);
  EXPECT_EQ(h.request_id, 0x1122334455667788ull);
  EXPECT_EQ(h.num_rows, 3u);
}

TEST(WireTest, ErrorTextIsTruncatedAtACharacterBoundary) {
  // 2-byte UTF-8 characters, so the limit falls inside one of them.
  std::string text = "x";
  while (text.size() <= kMaxWireErrorBytes + 10) text += "\xC3\xA9";  // e-acute
  const std::vector<std::byte> m =
      EncodeErrorReply(RequestHeader(1, 1, WireDType::kF32), WireStatus::kInternal, text);
  absl::StatusOr<ReplyView> v = ParseReply(m);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_LE(v->error.size(), kMaxWireErrorBytes);
  EXPECT_GE(v->error.size(), kMaxWireErrorBytes - 1);
  EXPECT_EQ(v->error.size() % 2, 1u);  // "x" + whole characters
}

TEST(WireTest, ErrorReplyWithOkStatusBecomesInternal) {
  const std::vector<std::byte> m =
      EncodeErrorReply(RequestHeader(1, 1, WireDType::kF32), WireStatus::kOk, "oops");
  absl::StatusOr<ReplyView> v = ParseReply(m);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->header.status, static_cast<int32_t>(WireStatus::kInternal));
}

TEST(WireTest, LargestLimitsAreAccepted) {
  WireHeader h = RequestHeader(1, kMaxWireHidden, WireDType::kBf16);
  std::vector<WireAssignment> a(kMaxWireAssignmentsPerRow, WireAssignment{0, 1});
  const std::vector<std::byte> m = EncodeRequest(h, a, Pattern(kMaxWireHidden * 2, 4));
  absl::StatusOr<RequestView> v = ParseRequest(m);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->assignments.size(), kMaxWireAssignmentsPerRow);
}

struct MalformedCase {
  std::string name;
  std::function<std::vector<std::byte>()> make;
  std::string mentions;  // the field the error message must name
};

void PrintTo(const MalformedCase& c, std::ostream* os) { *os << c.name; }

class MalformedRequestTest : public testing::TestWithParam<MalformedCase> {};

TEST_P(MalformedRequestTest, IsInvalidArgumentNamingTheField) {
  const std::vector<std::byte> m = GetParam().make();
  absl::StatusOr<RequestView> v = ParseRequest(m);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument) << v.status();
  EXPECT_NE(v.status().message().find(GetParam().mentions), std::string::npos) << v.status();
}

std::vector<MalformedCase> MalformedRequests() {
  auto edit = [](std::function<void(WireHeader&)> f) {
    return [f] { return WithHeader(GoodRequest(), f); };
  };
  return {
      {"Empty", [] { return std::vector<std::byte>(); }, "bytes"},
      {"ShorterThanHeader", [] { return std::vector<std::byte>(47); }, "bytes"},
      {"BadMagic", edit([](WireHeader& h) { h.magic = 0x12345678; }), "magic"},
      {"BadVersion", edit([](WireHeader& h) { h.version = 3; }), "version"},
      // Version 1 (32-bit placement versions) is not spoken any more.
      {"OldVersion", edit([](WireHeader& h) { h.version = 1; }), "version"},
      {"ReservedSet", edit([](WireHeader& h) { h.reserved = 1; }), "reserved"},
      {"ReplyKind", edit([](WireHeader& h) { h.kind = 2; }), "kind"},
      {"UnknownKind", edit([](WireHeader& h) { h.kind = 7; }), "kind"},
      {"DTypeZero", edit([](WireHeader& h) { h.dtype = 0; }), "dtype"},
      {"DTypeUnknown", edit([](WireHeader& h) { h.dtype = 3; }), "dtype"},
      {"HiddenZero", edit([](WireHeader& h) { h.hidden = 0; }), "hidden"},
      {"HiddenTooLarge", edit([](WireHeader& h) { h.hidden = kMaxWireHidden + 1; }), "hidden"},
      {"RowsZero", edit([](WireHeader& h) { h.num_rows = 0; }), "num_rows"},
      {"RowsTooMany", edit([](WireHeader& h) { h.num_rows = kMaxWireRows + 1; }), "num_rows"},
      {"AssignmentsZero", edit([](WireHeader& h) { h.num_assignments = 0; }), "num_assignments"},
      {"AssignmentsTooMany",
       edit([](WireHeader& h) { h.num_assignments = 3 * kMaxWireAssignmentsPerRow + 1; }),
       "num_assignments"},
      {"MicroBatchTwo", edit([](WireHeader& h) { h.micro_batch = 2; }), "micro_batch"},
      {"StatusSet", edit([](WireHeader& h) { h.status = 1; }), "status"},
      {"ErrorBytesSet", edit([](WireHeader& h) { h.error_bytes = 4; }), "error_bytes"},
      {"AssignmentCountDisagreesWithSize", edit([](WireHeader& h) { h.num_assignments = 5; }),
       "bytes"},
      {"RowsDisagreeWithSize", edit([](WireHeader& h) { h.num_rows = 4; }), "bytes"},
      {"HiddenDisagreesWithSize", edit([](WireHeader& h) { h.hidden = 5; }), "bytes"},
      {"DTypeDisagreesWithSize",
       edit([](WireHeader& h) { h.dtype = static_cast<uint16_t>(WireDType::kBf16); }), "bytes"},
      {"TruncatedByOneByte",
       [] {
         std::vector<std::byte> m = GoodRequest();
         m.pop_back();
         return m;
       },
       "bytes"},
      {"TruncatedToHeader",
       [] {
         std::vector<std::byte> m = GoodRequest();
         m.resize(sizeof(WireHeader));
         return m;
       },
       "bytes"},
      {"ExtraByte",
       [] {
         std::vector<std::byte> m = GoodRequest();
         m.push_back(std::byte{0});
         return m;
       },
       "bytes"},
      {"RowNegative",
       [] {
         std::vector<std::byte> m = GoodRequest();
         SetAssignment(m, 2, {-1, 0});
         return m;
       },
       "row"},
      {"RowEqualsNumRows",
       [] {
         std::vector<std::byte> m = GoodRequest();
         SetAssignment(m, 3, {3, 0});
         return m;
       },
       "row"},
      {"ExpertNegative",
       [] {
         std::vector<std::byte> m = GoodRequest();
         SetAssignment(m, 1, {0, -5});
         return m;
       },
       "expert"},
  };
}

INSTANTIATE_TEST_SUITE_P(All, MalformedRequestTest, testing::ValuesIn(MalformedRequests()),
                         [](const testing::TestParamInfo<MalformedCase>& i) {
                           return i.param.name;
                         });

TEST(WireTest, MisalignedRequestIsRejected) {
  const std::vector<std::byte> m = GoodRequest();
  std::vector<std::byte> buffer(m.size() + 1);
  std::memcpy(buffer.data() + 1, m.data(), m.size());
  absl::StatusOr<RequestView> v = ParseRequest(std::span(buffer).subspan(1));
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(v.status().message().find("aligned"), std::string::npos) << v.status();
}

TEST(WireTest, UnalignedHeaderIsReadForPeek) {
  const std::vector<std::byte> m = GoodRequest();
  std::vector<std::byte> buffer(m.size() + 3);
  std::memcpy(buffer.data() + 3, m.data(), m.size());
  EXPECT_EQ(PeekHeader(std::span(buffer).subspan(3)).request_id, 0x1122334455667788ull);
}

class MalformedReplyTest : public testing::TestWithParam<MalformedCase> {};

TEST_P(MalformedReplyTest, IsInvalidArgumentNamingTheField) {
  const std::vector<std::byte> m = GetParam().make();
  absl::StatusOr<ReplyView> v = ParseReply(m);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument) << v.status();
  EXPECT_NE(v.status().message().find(GetParam().mentions), std::string::npos) << v.status();
}

std::vector<std::byte> ErrorReply(const std::string& text) {
  return EncodeErrorReply(RequestHeader(3, 4, WireDType::kF32), WireStatus::kNotFound, text);
}

std::vector<MalformedCase> MalformedReplies() {
  auto edit = [](std::function<void(WireHeader&)> f) {
    return [f] { return WithHeader(GoodReply(), f); };
  };
  auto edit_error = [](std::function<void(WireHeader&)> f) {
    return [f] { return WithHeader(ErrorReply("no expert 9"), f); };
  };
  return {
      {"Empty", [] { return std::vector<std::byte>(); }, "bytes"},
      {"ShorterThanHeader", [] { return std::vector<std::byte>(20); }, "bytes"},
      {"BadMagic", edit([](WireHeader& h) { h.magic = 0; }), "magic"},
      {"BadVersion", edit([](WireHeader& h) { h.version = 0; }), "version"},
      {"RequestKind", edit([](WireHeader& h) { h.kind = 1; }), "kind"},
      {"DTypeUnknown", edit([](WireHeader& h) { h.dtype = 9; }), "dtype"},
      {"HiddenZero", edit([](WireHeader& h) { h.hidden = 0; }), "hidden"},
      {"HiddenTooLarge", edit([](WireHeader& h) { h.hidden = kMaxWireHidden + 1; }), "hidden"},
      {"RowsZero", edit([](WireHeader& h) { h.num_rows = 0; }), "num_rows"},
      {"AssignmentsZero", edit([](WireHeader& h) { h.num_assignments = 0; }), "num_assignments"},
      {"AssignmentsTooMany",
       edit([](WireHeader& h) { h.num_assignments = 3 * kMaxWireAssignmentsPerRow + 1; }),
       "num_assignments"},
      {"OkWithErrorBytes", edit([](WireHeader& h) { h.error_bytes = 3; }), "error_bytes"},
      {"OkOutputsTruncated",
       [] {
         std::vector<std::byte> m = GoodReply();
         m.pop_back();
         return m;
       },
       "bytes"},
      {"OkOutputsExtra",
       [] {
         std::vector<std::byte> m = GoodReply();
         m.push_back(std::byte{1});
         return m;
       },
       "bytes"},
      {"UnknownStatus", edit_error([](WireHeader& h) { h.status = 9; }), "status"},
      {"NegativeStatus", edit_error([](WireHeader& h) { h.status = -1; }), "status"},
      {"ErrorBytesTooMany",
       edit_error([](WireHeader& h) { h.error_bytes = kMaxWireErrorBytes + 1; }), "error_bytes"},
      {"ErrorBytesMismatch", edit_error([](WireHeader& h) { h.error_bytes = 3; }), "bytes"},
      {"ErrorWithOutputs",
       [] {
         std::vector<std::byte> m = ErrorReply("bad");
         const std::vector<std::byte> outputs = Pattern(64, 5);
         m.insert(m.end(), outputs.begin(), outputs.end());
         return m;
       },
       "bytes"},
  };
}

INSTANTIATE_TEST_SUITE_P(All, MalformedReplyTest, testing::ValuesIn(MalformedReplies()),
                         [](const testing::TestParamInfo<MalformedCase>& i) {
                           return i.param.name;
                         });

}  // namespace
}  // namespace dsv2::transport
