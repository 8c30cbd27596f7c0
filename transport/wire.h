// The data-plane wire format between attention nodes and expert shards
// (DESIGN.md section 4). One request per (step, layer, micro-batch, shard):
//
//   request: WireHeader | WireAssignment x num_assignments |
//            activations: num_rows x hidden values of `dtype`
//   reply:   WireHeader (kind = kReply, same ids, status) |
//            status == kOk: num_assignments x hidden values of `dtype`, one
//              unweighted expert output row per assignment, in request order
//            otherwise: error_bytes of UTF-8 error text
//
// All integers little-endian (x86-64 and aarch64 hosts; checked at compile
// time). transport/ depends on nothing of ours: dtypes are wire codes here,
// mapped to dsv2::DType by the services.
//
// Thread-safety: pure functions.
#ifndef DSV2_TRANSPORT_WIRE_H_
#define DSV2_TRANSPORT_WIRE_H_

#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv2::transport {

static_assert(std::endian::native == std::endian::little, "the wire format is little-endian");

inline constexpr uint32_t kWireMagic = 0x32565344;  // "DSV2" read as little-endian bytes
// 2: placement_version is 64-bit (was 32 at offset 36; the header grew to
// 56 bytes). A peer speaking another version is refused as malformed.
inline constexpr uint16_t kWireVersion = 2;

// Limits every receiver enforces (a message over them is malformed).
inline constexpr uint32_t kMaxWireRows = 1u << 20;
inline constexpr uint32_t kMaxWireHidden = 1u << 16;
inline constexpr uint32_t kMaxWireAssignmentsPerRow = 256;
inline constexpr uint32_t kMaxWireErrorBytes = 4096;

enum class WireKind : uint16_t { kRequest = 1, kReply = 2 };
enum class WireDType : uint16_t { kF32 = 1, kBf16 = 2 };

// Reply status. kPlacementMismatch is distinct so the sender re-plans.
enum class WireStatus : int32_t {
  kOk = 0,
  kMalformed = 1,          // a field failed validation
  kPlacementMismatch = 2,  // the dispatch's placement version is stale here
  kNotFound = 3,           // an assigned expert is not held by this shard
  kInternal = 4,           // the shard failed to compute
};

struct WireHeader {
  uint32_t magic = kWireMagic;
  uint16_t version = kWireVersion;
  uint16_t kind = static_cast<uint16_t>(WireKind::kRequest);
  uint64_t request_id = 0;         // sender-chosen; the reply echoes it
  uint32_t layer = 0;              // decoder layer index
  uint16_t micro_batch = 0;        // 0 or 1 (ping-pong)
  uint16_t dtype = static_cast<uint16_t>(WireDType::kF32);  // activation dtype
  uint32_t num_rows = 0;           // activation rows in the request
  uint32_t hidden = 0;             // values per row
  uint32_t num_assignments = 0;    // (row, expert) pairs; reply rows
  int32_t status = 0;              // WireStatus (replies; 0 in requests)
  uint64_t placement_version = 0;  // placement the sender planned with
  uint32_t error_bytes = 0;        // replies with status != kOk
  uint32_t reserved = 0;           // must be 0
};
static_assert(sizeof(WireHeader) == 56);
static_assert(offsetof(WireHeader, request_id) == 8);
static_assert(offsetof(WireHeader, layer) == 16);
static_assert(offsetof(WireHeader, dtype) == 22);
static_assert(offsetof(WireHeader, num_assignments) == 32);
static_assert(offsetof(WireHeader, status) == 36);
static_assert(offsetof(WireHeader, placement_version) == 40);
static_assert(offsetof(WireHeader, error_bytes) == 48);

struct WireAssignment {
  int32_t row = 0;     // in [0, num_rows)
  int32_t expert = 0;  // routed expert id, >= 0
};
static_assert(sizeof(WireAssignment) == 8);

// Bytes per value of a wire dtype; 0 for an unknown code.
size_t WireDTypeSize(uint16_t dtype);

// Views into a validated message (they alias its bytes).
struct RequestView {
  WireHeader header;
  std::span<const WireAssignment> assignments;
  std::span<const std::byte> activations;
};
struct ReplyView {
  WireHeader header;
  std::span<const std::byte> outputs;  // status == kOk
  std::string_view error;              // status != kOk
};

// The encoders set magic, version, kind, status and error_bytes themselves
// (EncodeRequest also num_assignments = assignments.size()); every other
// field is the caller's (replies echo the request's).
std::vector<std::byte> EncodeRequest(const WireHeader& header,
                                     std::span<const WireAssignment> assignments,
                                     std::span<const std::byte> activations);
// An OK reply to `request` (ids copied) carrying `outputs`.
std::vector<std::byte> EncodeReply(const WireHeader& request, std::span<const std::byte> outputs);
// An error reply to `request` (ids copied; a header that could not be parsed
// may be passed zeroed); `message` is truncated to kMaxWireErrorBytes.
std::vector<std::byte> EncodeErrorReply(const WireHeader& request, WireStatus status,
                                        std::string_view message);

// Validates every field (magic, version, kind, dtype, limits, byte counts,
// each assignment's row and expert) and returns views. InvalidArgument
// naming the field otherwise. `message` must be 4-byte aligned (a
// std::vector<std::byte> is); a misaligned request is InvalidArgument. An
// error reply's shape fields are not checked: they echo a request that may
// have been malformed (EncodeErrorReply of a zeroed PeekHeader).
absl::StatusOr<RequestView> ParseRequest(std::span<const std::byte> message);
absl::StatusOr<ReplyView> ParseReply(std::span<const std::byte> message);
// The header of a message that failed ParseRequest, for its error reply
// (zeroed where the message is shorter than a header).
WireHeader PeekHeader(std::span<const std::byte> message);

}  // namespace dsv2::transport

#endif  // DSV2_TRANSPORT_WIRE_H_
