// Element types of tensors in checkpoints, activations, the latent cache and
// the wire, and exact conversions between them.
//
// bf16 is stored as its raw uint16_t bit pattern (the top half of an IEEE
// f32). f32 -> bf16 rounds to nearest even (NaN stays NaN), matching
// PyTorch's `tensor.to(torch.bfloat16)`. f16 is IEEE half; it appears in
// checkpoints (converted to f32 at load, DESIGN.md section 7) and as the
// scales of quantized weights (quant.h).
// All functions are pure and thread-safe.
#ifndef DSV2_KERNELS_DTYPE_H_
#define DSV2_KERNELS_DTYPE_H_

#include <bit>
#include <cstddef>
#include <cstdint>

namespace dsv2 {

// kI8 / kU8 hold the values and packed nibbles of quantized weights in a
// checkpoint (quant.h); they are never activations and ToF32 / FromF32 do
// not take them.
enum class DType : uint8_t { kF32 = 0, kBF16 = 1, kF16 = 2, kI8 = 3, kU8 = 4 };

// Bytes per element.
constexpr size_t DTypeSize(DType t) {
  return t == DType::kF32 ? 4 : (t == DType::kI8 || t == DType::kU8) ? 1 : 2;
}

// True for the floating-point types (f32, bf16, f16).
constexpr bool IsFloatDType(DType t) {
  return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16;
}

// "f32", "bf16", "f16", "i8", "u8".
const char* DTypeName(DType t);

inline float Bf16ToF32(uint16_t v) { return std::bit_cast<float>(uint32_t{v} << 16); }

inline uint16_t F32ToBf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}

// f32 value rounded through bf16 (what `x.to(bf16).to(f32)` gives).
inline float RoundToBf16(float f) { return Bf16ToF32(F32ToBf16(f)); }

// Exact: every f16 value (subnormals, infinities, NaN payloads) is an f32.
float F16ToF32(uint16_t h);

// f32 -> f16 bits, IEEE round to nearest, ties to even (what F16C's
// VCVTPS2PH and numpy's astype(float16) give): subnormal f16 results are
// rounded correctly, |f| >= 65520 becomes +-inf, NaN stays NaN (quiet, sign
// and top payload bits kept).
uint16_t F32ToF16(float f);

// Rounds n floats in place to what `dtype` can hold (no-op for kF32).
// Used to model an activation stored in the activation dtype while
// computing in f32 buffers.
void RoundInPlace(float* x, size_t n, DType dtype);

// Converts n elements of `src` (in `dtype`, a float type) to f32; aborts on
// kI8 / kU8 (a caller bug: quantized values are dequantized with their scales).
void ToF32(const void* src, DType dtype, size_t n, float* dst);

// Converts n f32 values to `dtype` (rounding to nearest even; kF16 unsupported
// as a target: only checkpoints hold f16).
void FromF32(const float* src, size_t n, DType dtype, void* dst);

}  // namespace dsv2

#endif  // DSV2_KERNELS_DTYPE_H_
