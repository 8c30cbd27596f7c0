#include "kernels/quant.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "kernels/dtype.h"

namespace dsv2::kernels {
namespace {

constexpr size_t kInt4GroupBytes = sizeof(QuantInt4Group);

[[noreturn]] void UnknownFormat(const char* fn, QuantFormat format) {
  std::fprintf(stderr, "%s: unknown quantized format %d\n", fn, static_cast<int>(format));
  std::abort();
}

bool KnownFormat(QuantFormat format) {
  return format == QuantFormat::kInt8 || format == QuantFormat::kInt4;
}

// The group's scale d (before f16 rounding), in f32 as quant.h specifies.
float GroupScale(QuantFormat format, const float* w, size_t n) {
  if (format == QuantFormat::kInt8) {
    float amax = 0.0f;
    for (size_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(w[i]));
    return amax / 127.0f;
  }
  float m = w[0];
  for (size_t i = 1; i < n; ++i) {
    if (std::fabs(w[i]) > std::fabs(m)) m = w[i];
  }
  return m / -8.0f;
}

// round_half_away_from_zero(w / dq) clamped to [lo, hi]; dq != 0.
int QuantizeValue(float w, float dq, int lo, int hi) {
  const float r = std::round(w / dq);  // std::round: halves away from zero
  return static_cast<int>(std::clamp(r, static_cast<float>(lo), static_cast<float>(hi)));
}

}  // namespace

const char* QuantFormatName(QuantFormat format) {
  switch (format) {
    case QuantFormat::kInt8:
      return "int8";
    case QuantFormat::kInt4:
      return "int4";
  }
  return "?";
}

absl::StatusOr<QuantFormat> ParseQuantFormat(std::string_view name) {
  for (QuantFormat f : {QuantFormat::kInt8, QuantFormat::kInt4}) {
    if (name == QuantFormatName(f)) return f;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown quantized weight format \"",
                                                 absl::string_view(name.data(), name.size()),
                                                 "\"; expected int8 or int4"));
}

size_t QuantRowBytes(QuantFormat format, size_t K) {
  switch (format) {
    case QuantFormat::kInt8:
      return K;
    case QuantFormat::kInt4:
      return kInt4GroupBytes * QuantGroupsPerRow(K);
  }
  UnknownFormat("QuantRowBytes", format);
}

double QuantBitsPerWeight(QuantFormat format, size_t K) {
  if (K == 0) return 0.0;
  const double bits = 8.0 * static_cast<double>(QuantRowBytes(format, K)) +
                      16.0 * static_cast<double>(QuantGroupsPerRow(K));
  return bits / static_cast<double>(K);
}

absl::Status QuantizeRows(QuantFormat format, const float* w, size_t ldw, size_t N, size_t K,
                          void* q, size_t ldq_bytes, uint16_t* scales, size_t lds) {
  if (!KnownFormat(format)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown quantized weight format ", static_cast<int>(format)));
  }
  if (N == 0 || K == 0) return absl::OkStatus();
  const size_t groups = QuantGroupsPerRow(K);
  const size_t row_bytes = QuantRowBytes(format, K);
  if (N > 1 && ldw < K) {
    return absl::InvalidArgumentError(absl::StrCat("QuantizeRows: ldw ", ldw, " < K ", K));
  }
  if (N > 1 && ldq_bytes < row_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("QuantizeRows: ldq_bytes ", ldq_bytes, " < ",
                                                   row_bytes, " bytes per ",
                                                   QuantFormatName(format), " row of K ", K));
  }
  if (N > 1 && lds < groups) {
    return absl::InvalidArgumentError(
        absl::StrCat("QuantizeRows: lds ", lds, " < ", groups, " groups per row of K ", K));
  }
  if (w == nullptr || q == nullptr || scales == nullptr) {
    return absl::InvalidArgumentError("QuantizeRows: null w, q or scales");
  }
  const bool int8 = format == QuantFormat::kInt8;
  const int q_lo = int8 ? -127 : -8;
  const int q_hi = int8 ? 127 : 7;
  int q_group[kQuantGroupSize];
  for (size_t n = 0; n < N; ++n) {
    const float* wr = w + n * ldw;
    for (size_t k = 0; k < K; ++k) {
      if (!std::isfinite(wr[k])) {
        return absl::InvalidArgumentError(absl::StrCat("QuantizeRows: row ", n, " element ", k,
                                                       " is ", wr[k], "; weights must be finite"));
      }
    }
    uint8_t* qr = static_cast<uint8_t*>(q) + n * ldq_bytes;
    for (size_t g = 0; g < groups; ++g) {
      const size_t begin = g * kQuantGroupSize;
      const size_t len = std::min(K - begin, kQuantGroupSize);
      const float d = GroupScale(format, wr + begin, len);
      if (!(std::fabs(d) <= 65504.0f)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "QuantizeRows: row ", n, " group ", g, " needs scale ", d,
            ", beyond f16's largest finite value 65504 (", QuantFormatName(format), ")"));
      }
      uint16_t d16 = F32ToF16(d);
      const float dq = F16ToF32(d16);
      if (dq == 0.0f) d16 = 0;  // one zero: +0
      for (size_t i = 0; i < kQuantGroupSize; ++i) {
        q_group[i] = i < len && dq != 0.0f ? QuantizeValue(wr[begin + i], dq, q_lo, q_hi) : 0;
      }
      scales[n * lds + g] = d16;
      if (int8) {
        for (size_t i = 0; i < len; ++i) qr[begin + i] = static_cast<uint8_t>(q_group[i]);
      } else {
        uint8_t* out = qr + g * kInt4GroupBytes;
        for (size_t j = 0; j < kInt4GroupBytes; ++j) {
          out[j] = static_cast<uint8_t>((q_group[j] + 8) | (q_group[j + kInt4GroupBytes] + 8) << 4);
        }
      }
    }
  }
  return absl::OkStatus();
}

void DequantizeRow(QuantFormat format, const void* q_row, const uint16_t* scale_row, size_t K,
                   float* out) {
  if (!KnownFormat(format)) UnknownFormat("DequantizeRow", format);
  for (size_t k = 0; k < K; ++k) {
    out[k] = F16ToF32(scale_row[k / kQuantGroupSize]) *
             static_cast<float>(QuantValueAt(format, q_row, k));
  }
}

}  // namespace dsv2::kernels
