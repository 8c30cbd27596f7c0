// Test helper: copies a conformance fixture checkpoint into a temp directory
// as one model.safetensors, letting the test edit the tensor list first
// (drop a tensor, change a shape, convert the dtype).
#ifndef DSV2_TESTS_COMMON_CHECKPOINT_REWRITE_H_
#define DSV2_TESTS_COMMON_CHECKPOINT_REWRITE_H_

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/safetensors.h"
#include "tests/common/conformance_checkpoint.h"

namespace dsv2::testing_util {

inline std::string RewriteCheckpoint(const std::string& variant, const std::string& name,
                                     const std::function<void(std::vector<TensorToWrite>&)>& edit) {
  auto src = Checkpoint::OpenDir(FixtureDir(variant));
  EXPECT_TRUE(src.ok()) << src.status();
  std::vector<TensorToWrite> tensors;
  if (src.ok()) {
    for (const std::string& n : (*src)->Names()) {
      const TensorView* t = (*src)->Find(n);
      tensors.push_back({n, t->dtype, t->shape,
                         std::string(reinterpret_cast<const char*>(t->data), t->num_bytes)});
    }
  }
  edit(tensors);
  const std::string dir = ::testing::TempDir() + "/dsv2_rewrite_" + name;
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(FixtureDir(variant) + "/config.json", dir + "/config.json",
                             std::filesystem::copy_options::overwrite_existing);
  EXPECT_TRUE(WriteSafetensors(dir + "/model.safetensors", tensors).ok());
  return dir;
}

// The IEEE binary16 bits nearest to `f`: round to nearest even, overflow to
// infinity, NaN to the quiet NaN 0x7e00. Bit arithmetic rather than a cast to
// _Float16, which clang before 15 does not support on x86-64. (F. Giesen's
// float_to_half_fast3_rtne; the same result as GCC's _Float16 cast for every
// non-NaN float.)
inline uint16_t F32ToF16Bits(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x >= (127u + 16) << 23) {  // |f| >= 2^16 (or NaN): infinity or NaN
    return sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u);
  }
  if (x < (127u - 14) << 23) {  // |f| < 2^-14: a subnormal half or zero
    // Adding 0.5 aligns the half's 10 mantissa bits at the bottom of the
    // float's; the float addition rounds to nearest even.
    constexpr uint32_t kMagic = (127u - 1) << 23;
    const uint32_t sum = std::bit_cast<uint32_t>(std::bit_cast<float>(x) + 0.5f);
    return sign | static_cast<uint16_t>(sum - kMagic);
  }
  const uint32_t mantissa_odd = (x >> 13) & 1;
  x += ((15u - 127u) << 23) + 0xfffu + mantissa_odd;  // rebias; round half to even
  return sign | static_cast<uint16_t>(x >> 13);
}

// The value of binary16 `bits`, decoded from the format's definition (not
// with the model's converter, which the tests check).
inline float F16BitsToF32(uint16_t bits) {
  const int exponent = (bits >> 10) & 0x1f;
  const int mantissa = bits & 0x3ff;
  float v;
  if (exponent == 0) {
    v = std::ldexp(static_cast<float>(mantissa), -24);
  } else if (exponent == 31) {
    v = mantissa == 0 ? INFINITY : NAN;
  } else {
    v = std::ldexp(static_cast<float>(mantissa | 0x400), exponent - 25);
  }
  return (bits & 0x8000) != 0 ? -v : v;
}

// Converts every f32 tensor to f16 (round to nearest even).
inline void ConvertF32ToF16(std::vector<TensorToWrite>& tensors) {
  for (TensorToWrite& x : tensors) {
    if (x.dtype != DType::kF32) continue;
    const size_t n = x.bytes.size() / 4;
    std::string out(n * 2, '\0');
    for (size_t i = 0; i < n; ++i) {
      float f;
      std::memcpy(&f, x.bytes.data() + 4 * i, 4);
      const uint16_t h = F32ToF16Bits(f);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
    x.bytes = std::move(out);
    x.dtype = DType::kF16;
  }
}

}  // namespace dsv2::testing_util

#endif  // DSV2_TESTS_COMMON_CHECKPOINT_REWRITE_H_
