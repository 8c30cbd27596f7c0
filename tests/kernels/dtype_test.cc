// Tests for kernels/dtype.h's f16 conversions: F32ToF16 against an
// independent nearest-value search over every finite f16 (all f32 near
// every rounding boundary, and a stride through all 2^32 bit patterns), and
// the 65536 f16 -> f32 -> f16 round trips.
#include "kernels/dtype.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace dsv2 {
namespace {

bool IsF16Nan(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }

// Round to nearest, ties to even, found by search instead of bit
// arithmetic: the values of f16 0x0000 .. 0x7bff ascend, and 65536 stands
// in for the next step past 65504 (which rounds to infinity).
class NearestF16 {
 public:
  NearestF16() {
    for (uint32_t h = 0; h <= 0x7bffu; ++h) values_.push_back(F16ToF32(static_cast<uint16_t>(h)));
    values_.push_back(65536.0);  // 0x7c00: the overflow step
  }

  uint16_t operator()(float f) const {
    const uint16_t sign = std::signbit(f) ? 0x8000u : 0u;
    if (std::isnan(f)) return 0x7e00u | sign;
    const double a = std::fabs(static_cast<double>(f));
    // First value > a; the candidates are the one below and this one.
    const size_t hi = std::upper_bound(values_.begin(), values_.end(), a) - values_.begin();
    if (hi == values_.size()) return sign | 0x7c00u;  // >= 65536 or inf
    const size_t lo = hi - 1;
    const double below = a - values_[lo];
    const double above = values_[hi] - a;
    size_t pick;
    if (below < above) {
      pick = lo;
    } else if (above < below) {
      pick = hi;
    } else {
      pick = (lo & 1u) == 0 ? lo : hi;  // tie: even significand
    }
    return static_cast<uint16_t>(sign | pick);
  }

  // Value of f16 bits h, h <= 0x7bff.
  double value(size_t h) const { return values_[h]; }

 private:
  std::vector<double> values_;
};

TEST(F16Test, EveryF16RoundTripsThroughF32) {
  for (uint32_t h = 0; h <= 0xffffu; ++h) {
    const uint16_t bits = static_cast<uint16_t>(h);
    const uint16_t back = F32ToF16(F16ToF32(bits));
    if (IsF16Nan(bits)) {
      ASSERT_TRUE(IsF16Nan(back)) << std::hex << h;
      ASSERT_EQ(back & 0x8000u, bits & 0x8000u) << std::hex << h;
      // Quiet NaNs keep their payload; signalling ones come back quiet.
      ASSERT_EQ(back, bits | 0x200u) << std::hex << h;
    } else {
      ASSERT_EQ(back, bits) << std::hex << h;
    }
  }
}

TEST(F16Test, F32ToF16RoundsToNearestEvenAtEveryBoundary) {
  const NearestF16 nearest;
  for (size_t h = 0; h < 0x7bff; ++h) {
    // The midpoint of two adjacent f16 values needs 12 significant bits:
    // exact in f32. Check it and its f32 neighbours, both signs.
    const float mid = static_cast<float>((nearest.value(h) + nearest.value(h + 1)) / 2);
    ASSERT_EQ(static_cast<double>(mid), (nearest.value(h) + nearest.value(h + 1)) / 2);
    for (float f : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f),
                    static_cast<float>(nearest.value(h))}) {
      ASSERT_EQ(F32ToF16(f), nearest(f)) << f;
      ASSERT_EQ(F32ToF16(-f), nearest(-f)) << -f;
    }
  }
}

TEST(F16Test, F32ToF16MatchesNearestOnAStrideThroughAllF32) {
  const NearestF16 nearest;
  // 4099 is odd and prime, so every mantissa and exponent bit varies.
  for (uint64_t u = 0; u <= 0xffffffffu; u += 4099) {
    const float f = std::bit_cast<float>(static_cast<uint32_t>(u));
    const uint16_t got = F32ToF16(f);
    if (std::isnan(f)) {
      ASSERT_TRUE(IsF16Nan(got)) << std::hex << u;
      ASSERT_EQ(got & 0x8000u, (u >> 16) & 0x8000u) << std::hex << u;
    } else {
      ASSERT_EQ(got, nearest(f)) << std::hex << u << " " << f;
    }
  }
}

TEST(F16Test, F32ToF16EdgeValues) {
  EXPECT_EQ(F32ToF16(0.0f), 0x0000u);
  EXPECT_EQ(F32ToF16(-0.0f), 0x8000u);
  EXPECT_EQ(F32ToF16(1.0f), 0x3c00u);
  EXPECT_EQ(F32ToF16(-2.0f), 0xc000u);
  EXPECT_EQ(F32ToF16(65504.0f), 0x7bffu);
  EXPECT_EQ(F32ToF16(std::nextafter(65520.0f, 0.0f)), 0x7bffu);
  EXPECT_EQ(F32ToF16(65520.0f), 0x7c00u);  // the tie goes to even: infinity
  EXPECT_EQ(F32ToF16(-1e30f), 0xfc00u);
  EXPECT_EQ(F32ToF16(std::numeric_limits<float>::infinity()), 0x7c00u);
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -14)), 0x0400u);  // smallest normal
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -24)), 0x0001u);  // smallest subnormal
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -25)), 0x0000u);  // tie with 0: even
  EXPECT_EQ(F32ToF16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001u);
  EXPECT_EQ(F32ToF16(std::ldexp(3.0f, -25)), 0x0002u);  // 1.5 units: tie to even 2
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -100)), 0x0000u);
  EXPECT_TRUE(IsF16Nan(F32ToF16(std::nanf(""))));
}

}  // namespace
}  // namespace dsv2
