// Encoding and validation of the data-plane wire format (transport/wire.h).
//
// Sizes are computed in uint64_t: the limits bound a request to
// 56 + 8 * 2^28 + 2^20 * 2^16 * 4 bytes (< 2^39), so no sum overflows.
#include "transport/wire.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace dsv2::transport {
namespace {

constexpr size_t kHeaderBytes = sizeof(WireHeader);

WireHeader ReadHeader(std::span<const std::byte> message) {
  // memcpy: the message may not be aligned for a WireHeader.
  WireHeader header;
  std::memcpy(&header, message.data(), kHeaderBytes);
  return header;
}

// The message `header` + `parts`, allocated once at its final size.
std::vector<std::byte> Concat(const WireHeader& header,
                              std::initializer_list<std::span<const std::byte>> parts) {
  size_t total = kHeaderBytes;
  for (std::span<const std::byte> part : parts) total += part.size();
  std::vector<std::byte> out;
  out.reserve(total);
  // The header is assigned, not inserted: for an insert into the empty
  // vector GCC 12 at -O3 follows insert's reallocation path, cannot see that
  // there is no tail to move, and reports a (false) -Wstringop-overflow.
  const auto* h = reinterpret_cast<const std::byte*>(&header);
  out.assign(h, h + kHeaderBytes);
  for (std::span<const std::byte> part : parts) out.insert(out.end(), part.begin(), part.end());
  return out;
}

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

// Checks that hold for every message: length, magic, version, kind.
absl::Status CheckCommon(const WireHeader& header, WireKind want_kind) {
  if (header.magic != kWireMagic) {
    return Invalid(absl::StrCat("wire magic is 0x", absl::Hex(header.magic), "; expected 0x",
                                absl::Hex(kWireMagic)));
  }
  if (header.version != kWireVersion) {
    return Invalid(
        absl::StrCat("wire version is ", header.version, "; this build speaks ", kWireVersion));
  }
  if (header.reserved != 0) {
    return Invalid(absl::StrCat("wire reserved field is ", header.reserved, "; must be 0"));
  }
  if (header.kind != static_cast<uint16_t>(want_kind)) {
    return Invalid(absl::StrCat("wire kind is ", header.kind, "; expected ",
                                static_cast<uint16_t>(want_kind),
                                want_kind == WireKind::kRequest ? " (request)" : " (reply)"));
  }
  return absl::OkStatus();
}

// Checks of the shape fields a request carries and an OK reply echoes:
// dtype, hidden, num_rows, num_assignments, micro_batch.
absl::Status CheckShape(const WireHeader& header) {
  if (WireDTypeSize(header.dtype) == 0) {
    return Invalid(
        absl::StrCat("wire dtype code ", header.dtype, " is unknown (1 = f32, 2 = bf16)"));
  }
  if (header.hidden < 1 || header.hidden > kMaxWireHidden) {
    return Invalid(
        absl::StrCat("wire hidden is ", header.hidden, "; must be in [1, ", kMaxWireHidden, "]"));
  }
  if (header.num_rows < 1 || header.num_rows > kMaxWireRows) {
    return Invalid(
        absl::StrCat("wire num_rows is ", header.num_rows, "; must be in [1, ", kMaxWireRows, "]"));
  }
  const uint64_t max_assignments =
      static_cast<uint64_t>(header.num_rows) * kMaxWireAssignmentsPerRow;
  if (header.num_assignments < 1 || header.num_assignments > max_assignments) {
    return Invalid(absl::StrCat("wire num_assignments is ", header.num_assignments,
                                "; must be in [1, ", max_assignments, "] for ", header.num_rows,
                                " rows"));
  }
  if (header.micro_batch > 1) {
    return Invalid(absl::StrCat("wire micro_batch is ", header.micro_batch, "; must be 0 or 1"));
  }
  return absl::OkStatus();
}

absl::Status CheckSize(std::span<const std::byte> message, uint64_t expected,
                       const std::string& layout) {
  if (message.size() != expected) {
    return Invalid(absl::StrCat("wire message has ", message.size(), " bytes; its header says ",
                                expected, " (", layout, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckLength(std::span<const std::byte> message) {
  if (message.size() < kHeaderBytes) {
    return Invalid(absl::StrCat("wire message has ", message.size(), " bytes; the header alone is ",
                                kHeaderBytes));
  }
  return absl::OkStatus();
}

}  // namespace

size_t WireDTypeSize(uint16_t dtype) {
  switch (static_cast<WireDType>(dtype)) {
    case WireDType::kF32:
      return 4;
    case WireDType::kBf16:
      return 2;
  }
  return 0;
}

std::vector<std::byte> EncodeRequest(const WireHeader& header,
                                     std::span<const WireAssignment> assignments,
                                     std::span<const std::byte> activations) {
  WireHeader h = header;
  h.magic = kWireMagic;
  h.version = kWireVersion;
  h.kind = static_cast<uint16_t>(WireKind::kRequest);
  h.num_assignments = static_cast<uint32_t>(assignments.size());
  h.status = 0;
  h.error_bytes = 0;
  return Concat(h, {std::as_bytes(assignments), activations});
}

std::vector<std::byte> EncodeReply(const WireHeader& request, std::span<const std::byte> outputs) {
  WireHeader h = request;
  h.magic = kWireMagic;
  h.version = kWireVersion;
  h.kind = static_cast<uint16_t>(WireKind::kReply);
  h.status = static_cast<int32_t>(WireStatus::kOk);
  h.error_bytes = 0;
  return Concat(h, {outputs});
}

std::vector<std::byte> EncodeErrorReply(const WireHeader& request, WireStatus status,
                                        std::string_view message) {
  if (message.size() > kMaxWireErrorBytes) {
    size_t n = kMaxWireErrorBytes;
    // Cut at a UTF-8 character boundary: back off over continuation bytes
    // (10xxxxxx) so the text stays valid UTF-8.
    while (n > 0 && (static_cast<unsigned char>(message[n]) & 0xC0) == 0x80) --n;
    message = message.substr(0, n);
  }
  WireHeader h = request;
  h.magic = kWireMagic;
  h.version = kWireVersion;
  h.kind = static_cast<uint16_t>(WireKind::kReply);
  // kOk is not an error; a caller passing it is mistaken, and the receiver
  // must still see an error reply.
  h.status = static_cast<int32_t>(status == WireStatus::kOk ? WireStatus::kInternal : status);
  h.error_bytes = static_cast<uint32_t>(message.size());
  return Concat(h, {std::as_bytes(std::span<const char>(message))});
}

absl::StatusOr<RequestView> ParseRequest(std::span<const std::byte> message) {
  if (absl::Status s = CheckLength(message); !s.ok()) return s;
  const WireHeader h = ReadHeader(message);
  if (absl::Status s = CheckCommon(h, WireKind::kRequest); !s.ok()) return s;
  if (absl::Status s = CheckShape(h); !s.ok()) return s;
  if (h.status != 0) {
    return Invalid(absl::StrCat("wire status is ", h.status, " in a request; must be 0"));
  }
  if (h.error_bytes != 0) {
    return Invalid(absl::StrCat("wire error_bytes is ", h.error_bytes, " in a request; must be 0"));
  }
  const uint64_t value_bytes = WireDTypeSize(h.dtype);
  const uint64_t assignment_bytes = uint64_t{h.num_assignments} * sizeof(WireAssignment);
  const uint64_t activation_bytes = uint64_t{h.num_rows} * h.hidden * value_bytes;
  if (absl::Status s =
          CheckSize(message, kHeaderBytes + assignment_bytes + activation_bytes,
                    absl::StrCat(kHeaderBytes, " header + ", h.num_assignments, " assignments x ",
                                 sizeof(WireAssignment), " + ", h.num_rows, " rows x ", h.hidden,
                                 " x ", value_bytes));
      !s.ok()) {
    return s;
  }
  // The assignments span aliases the message, so it must be aligned for
  // WireAssignment (the header is at offset 0 and 56 % 4 == 0).
  if (reinterpret_cast<uintptr_t>(message.data()) % alignof(WireAssignment) != 0) {
    return Invalid(absl::StrCat("wire message at address 0x",
                                absl::Hex(reinterpret_cast<uintptr_t>(message.data())), " is not ",
                                alignof(WireAssignment), "-byte aligned"));
  }
  RequestView view;
  view.header = h;
  view.assignments = std::span<const WireAssignment>(
      reinterpret_cast<const WireAssignment*>(message.data() + kHeaderBytes), h.num_assignments);
  view.activations = message.subspan(kHeaderBytes + assignment_bytes, activation_bytes);
  for (size_t i = 0; i < view.assignments.size(); ++i) {
    const WireAssignment& a = view.assignments[i];
    if (a.row < 0 || static_cast<uint32_t>(a.row) >= h.num_rows) {
      return Invalid(absl::StrCat("wire assignment ", i, " has row ", a.row, "; must be in [0, ",
                                  h.num_rows, ")"));
    }
    if (a.expert < 0) {
      return Invalid(
          absl::StrCat("wire assignment ", i, " has expert ", a.expert, "; must be >= 0"));
    }
  }
  return view;
}

absl::StatusOr<ReplyView> ParseReply(std::span<const std::byte> message) {
  if (absl::Status s = CheckLength(message); !s.ok()) return s;
  const WireHeader h = ReadHeader(message);
  if (absl::Status s = CheckCommon(h, WireKind::kReply); !s.ok()) return s;
  ReplyView view;
  view.header = h;
  if (h.status == static_cast<int32_t>(WireStatus::kOk)) {
    if (absl::Status s = CheckShape(h); !s.ok()) return s;
    if (h.error_bytes != 0) {
      return Invalid(
          absl::StrCat("wire error_bytes is ", h.error_bytes, " in an OK reply; must be 0"));
    }
    const uint64_t value_bytes = WireDTypeSize(h.dtype);
    const uint64_t output_bytes = uint64_t{h.num_assignments} * h.hidden * value_bytes;
    if (absl::Status s = CheckSize(message, kHeaderBytes + output_bytes,
                                   absl::StrCat(kHeaderBytes, " header + ", h.num_assignments,
                                                " output rows x ", h.hidden, " x ", value_bytes));
        !s.ok()) {
      return s;
    }
    view.outputs = message.subspan(kHeaderBytes, output_bytes);
    return view;
  }
  // An error reply echoes the ids of a request that may itself have been
  // malformed, so its shape fields are not checked; only the error text is.
  if (h.status < static_cast<int32_t>(WireStatus::kMalformed) ||
      h.status > static_cast<int32_t>(WireStatus::kInternal)) {
    return Invalid(absl::StrCat("wire status is ", h.status, "; known codes are 0 to ",
                                static_cast<int32_t>(WireStatus::kInternal)));
  }
  if (h.error_bytes > kMaxWireErrorBytes) {
    return Invalid(
        absl::StrCat("wire error_bytes is ", h.error_bytes, "; max is ", kMaxWireErrorBytes));
  }
  if (absl::Status s = CheckSize(
          message, kHeaderBytes + uint64_t{h.error_bytes},
          absl::StrCat(kHeaderBytes, " header + ", h.error_bytes, " error bytes and no outputs"));
      !s.ok()) {
    return s;
  }
  view.error =
      std::string_view(reinterpret_cast<const char*>(message.data() + kHeaderBytes), h.error_bytes);
  return view;
}

WireHeader PeekHeader(std::span<const std::byte> message) {
  std::byte bytes[kHeaderBytes] = {};  // zeros where the message is short
  if (!message.empty()) {
    std::memcpy(bytes, message.data(), std::min(message.size(), kHeaderBytes));
  }
  WireHeader header;
  std::memcpy(&header, bytes, kHeaderBytes);
  return header;
}

}  // namespace dsv2::transport
