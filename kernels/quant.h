// Group-wise quantized weight formats (issue 13): the byte layout of record,
// the deterministic quantizer that writes it and the dequantizer. QGemm in
// cpu.h computes over these weights.
//
// Both formats are symmetric with one scale per group of kQuantGroupSize
// (32) consecutive elements along a row (the reduction dimension K of a
// linear weight [N, K]). When K is not a multiple of 32, the last group of
// each row is short: it covers elements [32 * (G - 1), K) and its scale is
// computed from those elements only.
//
// Byte layout, per row n of an [N, K] weight (G = ceil(K / 32) groups):
//   kInt8 (llama.cpp Q8_0's information, 8.5 bits per weight):
//     element k is byte k of the row: int8_t q in [-127, 127], two's
//     complement. K bytes, no padding between groups or at the end.
//   kInt4 (llama.cpp Q4_0's nibble order, 4.5 bits per weight):
//     group g occupies bytes [16 g, 16 g + 16) (one QuantInt4Group); byte j
//     holds element 32 g + j in its low nibble and element 32 g + 16 + j in
//     its high nibble, so one AND and one shift give the group's two halves
//     in element order. A nibble stores q + 8 for q in [-8, 7]. Elements
//     past K in a short last group are stored as q = 0 (nibble 8). 16 G
//     bytes per row.
//   Scales (both formats): one IEEE binary16 value per (row, group), stored
//     as its raw uint16_t bits in a separate row-major [N, G] array. A zero
//     scale is always +0 (0x0000).
// Rows are placed at a byte stride ldq >= QuantRowBytes(format, K), scale
// rows at a stride lds >= G (in scales); bytes and scales between a row's
// end and the next row's start are never read or written.
//
// Value of element k of row n: w = F16ToF32(scale[n][k / 32]) * q[n][k].
//
// Quantizer (the reference for the tests and for `dsv2 quantize`), per
// group, in f32 arithmetic (f16 conversions round to nearest even):
//   kInt8: d = max_k |w_k| / 127.
//   kInt4: m = the element with the largest |w_k| (the first one on ties),
//          d = m / -8, so m maps to q = -8 exactly (as Q4_0).
//   d16 = F32ToF16(d) (+0 when it rounds to +-0); dq = F16ToF32(d16);
//   q_k = clamp(round_half_away_from_zero(w_k / dq), qmin, qmax), with
//   [qmin, qmax] = [-127, 127] (kInt8) or [-8, 7] (kInt4); q_k = 0 when
//   dq == 0.
// Round trip, for scales in f16's normal range (|d| >= 2^-14): |w - the
// dequantized w| <= |dq| / 2 (plus the f32 division's rounding), except
// kInt4 values with w_k / dq > 7.5 (the opposite sign to m, clamped to 7
// as in Q4_0), where it is at most |dq| (1 + 2^-8). Smaller scales lose
// relative precision in f16's subnormal range (and flush to 0 below 2^-25).
//
// All functions are pure and thread-safe.
#ifndef DSV2_KERNELS_QUANT_H_
#define DSV2_KERNELS_QUANT_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dsv2::kernels {

enum class QuantFormat : uint8_t { kInt8 = 1, kInt4 = 2 };

// "int8", "int4" ("?" for any other value).
const char* QuantFormatName(QuantFormat format);
// Accepts the names above; InvalidArgument otherwise.
absl::StatusOr<QuantFormat> ParseQuantFormat(std::string_view name);

// Elements per group (and per scale).
constexpr size_t kQuantGroupSize = 32;

// One kInt4 group: 32 elements in 16 bytes (see the layout above).
struct QuantInt4Group {
  uint8_t nibbles[16];  // byte j: element j (bits 0-3), element 16 + j (bits 4-7)
};
static_assert(sizeof(QuantInt4Group) == kQuantGroupSize / 2, "32 nibbles = 16 bytes");

// ceil(K / 32): groups (= scales) per row.
constexpr size_t QuantGroupsPerRow(size_t K) { return (K + kQuantGroupSize - 1) / kQuantGroupSize; }

// Bytes of one row of quantized values (scales not included): K for kInt8,
// 16 * ceil(K / 32) for kInt4. Aborts on an unknown format (a caller bug).
size_t QuantRowBytes(QuantFormat format, size_t K);

// Storage per weight of an [N, K] matrix at minimum strides, values and
// scales together: (8 * QuantRowBytes + 16 * groups) / K. For K a multiple
// of 32: 8.5 (kInt8), 4.5 (kInt4).
double QuantBitsPerWeight(QuantFormat format, size_t K);

// The integer q of element k (< 16 * groups for kInt4) of a quantized row.
inline int QuantValueAt(QuantFormat format, const void* q_row, size_t k) {
  const auto* bytes = static_cast<const uint8_t*>(q_row);
  if (format == QuantFormat::kInt8) return static_cast<int8_t>(bytes[k]);
  const size_t g = k / kQuantGroupSize;
  const size_t j = k % kQuantGroupSize;
  const uint8_t byte = bytes[g * (kQuantGroupSize / 2) + j % (kQuantGroupSize / 2)];
  return (j < kQuantGroupSize / 2 ? (byte & 0x0f) : (byte >> 4)) - 8;
}

// A borrowed view of a quantized [N, K] weight, as the kernels take it.
// The caller owns the memory and keeps it alive during each call.
struct QuantizedWeights {
  QuantFormat format = QuantFormat::kInt8;
  const void* q = nullptr;           // row n at q + n * ldq (bytes)
  size_t ldq = 0;                    // bytes per row, >= QuantRowBytes(format, K)
  const uint16_t* scales = nullptr;  // f16 bits; row n at scales + n * lds
  size_t lds = 0;                    // scales per row, >= QuantGroupsPerRow(K)
};

// Quantizes the [N, K] f32 matrix w (row stride ldw elements) into q (row
// stride ldq_bytes) and scales (row stride lds) as described above.
// Deterministic: the same input gives the same bytes on every machine.
// InvalidArgument, naming the row (and element or group), for a non-finite
// weight, for a group whose |d| exceeds 65504 (f16's largest finite value),
// for an unknown format and for a stride below its minimum (checked when
// N > 1) or a null pointer; q and scales are then left partly written.
absl::Status QuantizeRows(QuantFormat format, const float* w, size_t ldw, size_t N, size_t K,
                          void* q, size_t ldq_bytes, uint16_t* scales, size_t lds);

// out[k] = F16ToF32(scale_row[k / 32]) * q[k] for k < K (exact: an f16
// times an integer of at most 8 bits fits f32's 24-bit significand).
void DequantizeRow(QuantFormat format, const void* q_row, const uint16_t* scale_row, size_t K,
                   float* out);

}  // namespace dsv2::kernels

#endif  // DSV2_KERNELS_QUANT_H_
