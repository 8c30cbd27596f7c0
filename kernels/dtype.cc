#include "kernels/dtype.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace dsv2 {

const char* DTypeName(DType t) {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kBF16: return "bf16";
    case DType::kF16: return "f16";
    case DType::kI8: return "i8";
    case DType::kU8: return "u8";
  }
  return "?";
}

float F16ToF32(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      do { ++e; mant <<= 1; } while ((mant & 0x400u) == 0);
      bits = sign | uint32_t(127 - 15 - e) << 23 | (mant & 0x3ffu) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  return std::bit_cast<float>(bits);
}

uint16_t F32ToF16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // NaN
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 (or inf): inf
  if (a >= 0x38800000u) {
    // Normal f16 (>= 2^-14): rebias the exponent (127 -> 15), round the 13
    // dropped mantissa bits to nearest even; a carry into the exponent is
    // the correct next binade (65504 is the largest reachable, as a < 65520).
    const uint32_t r = a - (uint32_t{127 - 15} << 23);
    return static_cast<uint16_t>(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
  }
  if (a < 0x33000000u) return sign;  // < 2^-25 (half the smallest subnormal; a tie goes to 0)
  // Subnormal f16 result: units of 2^-24. f = mant * 2^(exp - 150), so the
  // result is mant * 2^(exp - 126) = mant >> shift with shift in [14, 24].
  const uint32_t exp = a >> 23;
  const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - exp;
  uint32_t r = mant >> shift;
  const uint32_t rem = mant & ((uint32_t{1} << shift) - 1);
  const uint32_t half = uint32_t{1} << (shift - 1);
  if (rem > half || (rem == half && (r & 1u) != 0)) ++r;  // may become 0x400: the smallest normal
  return static_cast<uint16_t>(sign | r);
}

void RoundInPlace(float* x, size_t n, DType dtype) {
  if (dtype != DType::kBF16) return;
  for (size_t i = 0; i < n; ++i) x[i] = RoundToBf16(x[i]);
}

void ToF32(const void* src, DType dtype, size_t n, float* dst) {
  switch (dtype) {
    case DType::kF32: std::memcpy(dst, src, n * 4); return;
    case DType::kBF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = Bf16ToF32(s[i]);
      return;
    }
    case DType::kF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = F16ToF32(s[i]);
      return;
    }
    case DType::kI8:
    case DType::kU8:
      break;
  }
  std::fprintf(stderr, "ToF32: %s is not a float dtype\n", DTypeName(dtype));
  std::abort();
}

void FromF32(const float* src, size_t n, DType dtype, void* dst) {
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    std::fprintf(stderr, "FromF32: %s is not a target dtype\n", DTypeName(dtype));
    std::abort();
  }
  if (dtype == DType::kF32) {
    std::memcpy(dst, src, n * 4);
    return;
  }
  auto* d = static_cast<uint16_t*>(dst);
  for (size_t i = 0; i < n; ++i) d[i] = F32ToBf16(src[i]);
}

}  // namespace dsv2
