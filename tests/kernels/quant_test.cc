// Tests for kernels/quant.h: format names and sizes, the quantizer's bytes
// on hand-made rows (short last groups, zero groups, the int4 negative
// extreme, half-away rounding, ties), its bytes on random rows against a
// test-local transcription of the spec, the round-trip error bound, strides
// and padding, and bad input.
#include "kernels/quant.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/dtype.h"

namespace dsv2::kernels {
namespace {

constexpr QuantFormat kFormats[] = {QuantFormat::kInt8, QuantFormat::kInt4};

// Quantized rows at minimum strides.
struct Quantized {
  std::vector<uint8_t> q;
  std::vector<uint16_t> scales;
};

Quantized Quantize(QuantFormat format, const std::vector<float>& w, size_t N, size_t K) {
  Quantized out;
  out.q.assign(N * QuantRowBytes(format, K), 0xee);
  out.scales.assign(N * QuantGroupsPerRow(K), 0xeeee);
  const absl::Status status =
      QuantizeRows(format, w.data(), K, N, K, out.q.data(), QuantRowBytes(format, K),
                   out.scales.data(), QuantGroupsPerRow(K));
  EXPECT_TRUE(status.ok()) << status;
  return out;
}

// The quantizer of quant.h transcribed independently: q of each element
// of one group of n values, and the group's f16 scale.
std::vector<int> SpecGroup(QuantFormat format, const float* w, size_t n, uint16_t* scale) {
  float d;
  if (format == QuantFormat::kInt8) {
    float amax = 0;
    for (size_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(w[i]));
    d = amax / 127.0f;
  } else {
    size_t at = 0;
    for (size_t i = 1; i < n; ++i) {
      if (std::fabs(w[i]) > std::fabs(w[at])) at = i;
    }
    d = w[at] / -8.0f;
  }
  *scale = F32ToF16(d);
  const float dq = F16ToF32(*scale);
  if (dq == 0.0f) *scale = 0;
  const double lo = format == QuantFormat::kInt8 ? -127 : -8;
  const double hi = format == QuantFormat::kInt8 ? 127 : 7;
  std::vector<int> q(n, 0);
  for (size_t i = 0; i < n && dq != 0.0f; ++i) {
    const float ratio = w[i] / dq;
    // Half away from zero, spelled out.
    double r = std::floor(std::fabs(static_cast<double>(ratio)) + 0.5);
    if (ratio < 0) r = -r;
    q[i] = static_cast<int>(std::min(hi, std::max(lo, r)));
  }
  return q;
}

// Element k's q read from the bytes as quant.h's layout describes (not
// through QuantValueAt).
int ByteLayoutQ(QuantFormat format, const uint8_t* row, size_t k) {
  if (format == QuantFormat::kInt8) return static_cast<int8_t>(row[k]);
  const uint8_t byte = row[(k / 32) * 16 + k % 16];
  return ((k % 32) < 16 ? byte & 0xf : byte >> 4) - 8;
}

std::vector<float> RandomRow(size_t n, float scale, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> w(n);
  for (float& v : w) v = dist(rng) * scale;
  return w;
}

TEST(QuantFormatTest, NamesRoundTripThroughParse) {
  for (QuantFormat f : kFormats) {
    absl::StatusOr<QuantFormat> parsed = ParseQuantFormat(QuantFormatName(f));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, f);
  }
  EXPECT_STREQ(QuantFormatName(QuantFormat::kInt8), "int8");
  EXPECT_STREQ(QuantFormatName(QuantFormat::kInt4), "int4");
}

TEST(QuantFormatTest, UnknownNameIsInvalidArgumentNamingIt) {
  for (const char* name : {"", "q8_0", "INT8", "int2", "bf16"}) {
    absl::StatusOr<QuantFormat> parsed = ParseQuantFormat(name);
    ASSERT_FALSE(parsed.ok()) << name;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find(std::string("\"") + name + "\""), std::string::npos)
        << parsed.status();
  }
}

TEST(QuantFormatTest, RowBytesGroupsAndBitsPerWeight) {
  EXPECT_EQ(QuantGroupsPerRow(0), 0u);
  EXPECT_EQ(QuantGroupsPerRow(1), 1u);
  EXPECT_EQ(QuantGroupsPerRow(32), 1u);
  EXPECT_EQ(QuantGroupsPerRow(33), 2u);
  EXPECT_EQ(QuantRowBytes(QuantFormat::kInt8, 100), 100u);
  EXPECT_EQ(QuantRowBytes(QuantFormat::kInt4, 1), 16u);
  EXPECT_EQ(QuantRowBytes(QuantFormat::kInt4, 32), 16u);
  EXPECT_EQ(QuantRowBytes(QuantFormat::kInt4, 100), 64u);
  EXPECT_DOUBLE_EQ(QuantBitsPerWeight(QuantFormat::kInt8, 2048), 8.5);
  EXPECT_DOUBLE_EQ(QuantBitsPerWeight(QuantFormat::kInt4, 2048), 4.5);
  EXPECT_DOUBLE_EQ(QuantBitsPerWeight(QuantFormat::kInt8, 100), (800.0 + 4 * 16) / 100);
  EXPECT_DOUBLE_EQ(QuantBitsPerWeight(QuantFormat::kInt4, 100), (512.0 + 4 * 16) / 100);
}

TEST(QuantizeTest, Int8HandMadeRowWithShortLastGroup) {
  // K = 33: group 0 has amax 127 (d = 1 exactly), group 1 is element 32 alone.
  std::vector<float> w(33, 0.0f);
  w[0] = 0.5f;     // half: away from zero -> 1
  w[1] = -0.5f;    // -> -1
  w[2] = 1.5f;     // -> 2
  w[3] = -2.5f;    // -> -3
  w[4] = 126.5f;   // -> 127
  w[5] = -127.0f;  // the extreme -> -127
  w[6] = 3.49f;    // -> 3
  w[7] = 0.49f;    // -> 0
  w[32] = -2.54f;  // alone: d = 0.02, q = -127
  const Quantized got = Quantize(QuantFormat::kInt8, w, 1, 33);
  ASSERT_EQ(got.q.size(), 33u);
  ASSERT_EQ(got.scales.size(), 2u);
  EXPECT_EQ(got.scales[0], 0x3c00u);  // 1.0
  EXPECT_EQ(got.scales[1], F32ToF16(2.54f / 127.0f));
  const int expected[] = {1, -1, 2, -3, 127, -127, 3, 0};
  for (size_t k = 0; k < 8; ++k) EXPECT_EQ(static_cast<int8_t>(got.q[k]), expected[k]) << k;
  for (size_t k = 8; k < 32; ++k) EXPECT_EQ(got.q[k], 0u) << k;
  EXPECT_EQ(got.q[32], 0x81u);  // -127 in two's complement
}

TEST(QuantizeTest, Int4HandMadeRowWithNegativeExtremeAndShortLastGroup) {
  // K = 33. Group 0: the extreme is -8 (d = 1); group 1: element 32 alone.
  std::vector<float> w(33, 0.0f);
  w[0] = 1.0f;
  w[1] = 2.5f;    // -> 3 (half away from zero)
  w[2] = 0.49f;   // -> 0
  w[5] = -8.0f;   // m: q = -8 exactly
  w[17] = -3.5f;  // -> -4
  w[20] = 7.5f;   // -> 8, clamped to 7
  w[31] = -0.5f;  // -> -1
  w[32] = 3.0f;   // alone: m = 3, d = -0.375, q = -8
  const Quantized got = Quantize(QuantFormat::kInt4, w, 1, 33);
  ASSERT_EQ(got.q.size(), 32u);
  EXPECT_EQ(got.scales[0], 0x3c00u);  // 1.0
  EXPECT_EQ(got.scales[1], 0xb600u);  // -0.375
  std::vector<int> q(64, 0);
  q[0] = 1;
  q[1] = 3;
  q[5] = -8;
  q[17] = -4;
  q[20] = 7;
  q[31] = -1;
  q[32] = -8;
  // Byte j of group g: element 32 g + j low, 32 g + 16 + j high, as q + 8.
  for (size_t g = 0; g < 2; ++g) {
    for (size_t j = 0; j < 16; ++j) {
      const int lo = q[32 * g + j] + 8;
      const int hi = q[32 * g + 16 + j] + 8;
      EXPECT_EQ(got.q[16 * g + j], static_cast<uint8_t>(lo | hi << 4)) << "g=" << g << " j=" << j;
    }
  }
  EXPECT_EQ(got.q[16], 0x80u);  // element 32 (q = -8) low, element 48 (past K: q = 0) high
  EXPECT_EQ(got.q[17], 0x88u);
}

TEST(QuantizeTest, Int4TieOnLargestMagnitudeTakesTheFirst) {
  std::vector<float> w = {2.0f, -2.0f, 1.0f};
  const Quantized got = Quantize(QuantFormat::kInt4, w, 1, 3);
  EXPECT_EQ(got.scales[0], 0xb400u);  // m = 2 (first): d = -0.25
  EXPECT_EQ(QuantValueAt(QuantFormat::kInt4, got.q.data(), 0), -8);
  EXPECT_EQ(QuantValueAt(QuantFormat::kInt4, got.q.data(), 1), 7);  // 8, clamped
  EXPECT_EQ(QuantValueAt(QuantFormat::kInt4, got.q.data(), 2), -4);
  std::vector<float> w2 = {-2.0f, 2.0f};
  const Quantized got2 = Quantize(QuantFormat::kInt4, w2, 1, 2);
  EXPECT_EQ(got2.scales[0], 0x3400u);  // m = -2: d = 0.25
  EXPECT_EQ(QuantValueAt(QuantFormat::kInt4, got2.q.data(), 0), -8);
  EXPECT_EQ(QuantValueAt(QuantFormat::kInt4, got2.q.data(), 1), 7);
}

TEST(QuantizeTest, ZeroGroupsHavePositiveZeroScaleAndZeroValues) {
  for (QuantFormat f : kFormats) {
    // K = 64: group 0 all +0, group 1 all -0 except nothing else.
    std::vector<float> w(64, 0.0f);
    for (size_t k = 32; k < 64; ++k) w[k] = -0.0f;
    const Quantized got = Quantize(f, w, 1, 64);
    EXPECT_EQ(got.scales[0], 0x0000u) << QuantFormatName(f);
    EXPECT_EQ(got.scales[1], 0x0000u) << QuantFormatName(f);
    for (size_t k = 0; k < 64; ++k) EXPECT_EQ(QuantValueAt(f, got.q.data(), k), 0) << k;
    if (f == QuantFormat::kInt4) {
      for (uint8_t b : got.q) EXPECT_EQ(b, 0x88u);
    } else {
      for (uint8_t b : got.q) EXPECT_EQ(b, 0u);
    }
    // A scale that underflows f16 is a zero scale too.
    std::vector<float> tiny(5, 1e-9f);
    const Quantized t = Quantize(f, tiny, 1, 5);
    EXPECT_EQ(t.scales[0], 0x0000u) << QuantFormatName(f);
    for (size_t k = 0; k < 5; ++k) EXPECT_EQ(QuantValueAt(f, t.q.data(), k), 0);
  }
}

TEST(QuantizeTest, SingleElementRows) {
  const std::vector<float> w = {-0.75f, 3.0f};  // N = 2 rows of K = 1
  const Quantized i8 = Quantize(QuantFormat::kInt8, w, 2, 1);
  EXPECT_EQ(i8.scales[0], F32ToF16(0.75f / 127.0f));
  EXPECT_EQ(static_cast<int8_t>(i8.q[0]), -127);
  EXPECT_EQ(static_cast<int8_t>(i8.q[1]), 127);
  const Quantized i4 = Quantize(QuantFormat::kInt4, w, 2, 1);
  EXPECT_EQ(i4.scales[0], F32ToF16(0.75f / 8.0f));  // m = -0.75: d = +0.09375
  EXPECT_EQ(i4.scales[1], 0xb600u);                 // m = 3: d = -0.375
  EXPECT_EQ(i4.q[0], 0x80u);                        // q = -8, then 15 nibbles of 8
  EXPECT_EQ(i4.q[16], 0x80u);
  for (size_t j = 1; j < 16; ++j) EXPECT_EQ(i4.q[j], 0x88u);
}

TEST(QuantizeTest, RandomRowsMatchTheSpecByteForByte) {
  std::mt19937 rng(13);
  for (QuantFormat f : kFormats) {
    for (size_t K : {1, 31, 32, 33, 100, 577}) {
      const size_t N = 5;
      std::vector<float> w;
      for (size_t n = 0; n < N; ++n) {
        const std::vector<float> row =
            RandomRow(K, std::ldexp(1.0f, static_cast<int>(n) * 3 - 6), rng);
        w.insert(w.end(), row.begin(), row.end());
      }
      const Quantized got = Quantize(f, w, N, K);
      const size_t row_bytes = QuantRowBytes(f, K);
      const size_t groups = QuantGroupsPerRow(K);
      for (size_t n = 0; n < N; ++n) {
        const uint8_t* row = got.q.data() + n * row_bytes;
        for (size_t g = 0; g < groups; ++g) {
          const size_t len = std::min<size_t>(32, K - 32 * g);
          uint16_t scale;
          const std::vector<int> q = SpecGroup(f, w.data() + n * K + 32 * g, len, &scale);
          ASSERT_EQ(got.scales[n * groups + g], scale) << "n=" << n << " g=" << g;
          for (size_t i = 0; i < len; ++i) {
            ASSERT_EQ(ByteLayoutQ(f, row, 32 * g + i), q[i]) << "n=" << n << " k=" << 32 * g + i;
            ASSERT_EQ(QuantValueAt(f, row, 32 * g + i), q[i]);
          }
          if (f == QuantFormat::kInt4) {
            for (size_t i = len; i < 32; ++i) ASSERT_EQ(ByteLayoutQ(f, row, 32 * g + i), 0);
          }
        }
      }
    }
  }
}

TEST(QuantizeTest, RoundTripErrorIsAtMostHalfAScaleStep) {
  std::mt19937 rng(7);
  size_t checked = 0;
  for (QuantFormat f : kFormats) {
    for (size_t K : {1, 31, 33, 100, 577, 2048}) {
      for (float magnitude : {0.05f, 1.0f, 300.0f}) {
        const std::vector<float> w = RandomRow(K, magnitude, rng);
        const Quantized got = Quantize(f, w, 1, K);
        std::vector<float> deq(K);
        DequantizeRow(f, got.q.data(), got.scales.data(), K, deq.data());
        for (size_t k = 0; k < K; ++k) {
          const float dq = F16ToF32(got.scales[k / 32]);
          const int q = QuantValueAt(f, got.q.data(), k);
          ASSERT_EQ(deq[k], dq * static_cast<float>(q)) << k;  // exact
          // The bound holds for scales in f16's normal range (quant.h); a
          // group of tiny random values may fall below it.
          if (std::fabs(dq) < std::ldexp(1.0f, -14)) continue;
          ++checked;
          const double err = std::fabs(static_cast<double>(w[k]) - deq[k]);
          // Half a step, plus the f32 division's rounding of w / dq.
          double bound = std::fabs(dq) * (0.5 + 128 * std::ldexp(1.0, -24));
          // int4 values of m's opposite sign beyond 7.5 steps clamp to 7.
          if (f == QuantFormat::kInt4 && q == 7 && w[k] / dq > 7.5f) {
            bound = std::fabs(dq) * (1 + std::ldexp(1.0, -8));
          }
          ASSERT_LE(err, bound) << QuantFormatName(f) << " K=" << K << " k=" << k << " w=" << w[k]
                                << " deq=" << deq[k] << " scale=" << dq;
        }
      }
    }
  }
  EXPECT_GT(checked, 2 * 3 * (1 + 31 + 33 + 100 + 577 + 2048) * 9 / 10);
}

TEST(QuantizeTest, StridesLeavePaddingUntouched) {
  std::mt19937 rng(3);
  for (QuantFormat f : kFormats) {
    const size_t N = 4, K = 45, ldw = 50;
    const size_t ldq = QuantRowBytes(f, K) + 7;
    const size_t lds = QuantGroupsPerRow(K) + 3;
    std::vector<float> w(N * ldw, std::nanf(""));  // padding past K is never read
    for (size_t n = 0; n < N; ++n) {
      for (size_t k = 0; k < K; ++k) w[n * ldw + k] = RandomRow(1, 1.0f, rng)[0];
    }
    std::vector<uint8_t> q(N * ldq, 0xa5);
    std::vector<uint16_t> s(N * lds, 0x5a5a);
    ASSERT_TRUE(QuantizeRows(f, w.data(), ldw, N, K, q.data(), ldq, s.data(), lds).ok());
    for (size_t n = 0; n < N; ++n) {
      for (size_t b = QuantRowBytes(f, K); b < ldq; ++b) ASSERT_EQ(q[n * ldq + b], 0xa5u);
      for (size_t g = QuantGroupsPerRow(K); g < lds; ++g) ASSERT_EQ(s[n * lds + g], 0x5a5au);
      // Each row equals that row quantized alone.
      std::vector<float> row(w.begin() + n * ldw, w.begin() + n * ldw + K);
      const Quantized alone = Quantize(f, row, 1, K);
      for (size_t b = 0; b < QuantRowBytes(f, K); ++b) ASSERT_EQ(q[n * ldq + b], alone.q[b]);
      for (size_t g = 0; g < QuantGroupsPerRow(K); ++g) {
        ASSERT_EQ(s[n * lds + g], alone.scales[g]);
      }
    }
  }
}

TEST(QuantizeTest, NonFiniteWeightIsInvalidArgumentNamingRowAndElement) {
  for (QuantFormat f : kFormats) {
    for (float bad : {std::nanf(""), INFINITY, -INFINITY}) {
      std::vector<float> w(3 * 40, 0.25f);
      w[2 * 40 + 5] = bad;
      std::vector<uint8_t> q(3 * QuantRowBytes(f, 40));
      std::vector<uint16_t> s(3 * 2);
      const absl::Status st =
          QuantizeRows(f, w.data(), 40, 3, 40, q.data(), QuantRowBytes(f, 40), s.data(), 2);
      ASSERT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
      EXPECT_NE(st.message().find("row 2 element 5"), std::string::npos) << st;
    }
  }
}

TEST(QuantizeTest, ScaleBeyondF16IsInvalidArgument) {
  // int8: d = amax / 127; int4: d = |m| / 8.
  struct Case {
    QuantFormat f;
    float big;
    bool ok;
  };
  for (const Case& c :
       {Case{QuantFormat::kInt8, 1e7f, false}, Case{QuantFormat::kInt8, 8e6f, true},
        Case{QuantFormat::kInt4, 6e5f, false}, Case{QuantFormat::kInt4, 5e5f, true}}) {
    std::vector<float> w(2 * 33, 1.0f);
    w[33 + 32] = c.big;  // row 1, group 1
    std::vector<uint8_t> q(2 * QuantRowBytes(c.f, 33));
    std::vector<uint16_t> s(2 * 2);
    const absl::Status st =
        QuantizeRows(c.f, w.data(), 33, 2, 33, q.data(), QuantRowBytes(c.f, 33), s.data(), 2);
    if (c.ok) {
      EXPECT_TRUE(st.ok()) << st;
    } else {
      ASSERT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.big;
      EXPECT_NE(st.message().find("row 1 group 1"), std::string::npos) << st;
      EXPECT_NE(st.message().find("65504"), std::string::npos) << st;
    }
  }
}

TEST(QuantizeTest, StridesBelowMinimumAreInvalidArgument) {
  std::vector<float> w(2 * 40, 1.0f);
  std::vector<uint8_t> q(2 * 40);
  std::vector<uint16_t> s(4);
  EXPECT_EQ(QuantizeRows(QuantFormat::kInt8, w.data(), 39, 2, 40, q.data(), 40, s.data(), 2).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(QuantizeRows(QuantFormat::kInt8, w.data(), 40, 2, 40, q.data(), 39, s.data(), 2).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(QuantizeRows(QuantFormat::kInt4, w.data(), 40, 2, 40, q.data(), 31, s.data(), 2).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(QuantizeRows(QuantFormat::kInt4, w.data(), 40, 2, 40, q.data(), 32, s.data(), 1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      QuantizeRows(static_cast<QuantFormat>(3), w.data(), 40, 2, 40, q.data(), 40, s.data(), 2)
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      QuantizeRows(QuantFormat::kInt4, w.data(), 40, 2, 40, q.data(), 32, s.data(), 2).ok());
}

}  // namespace
}  // namespace dsv2::kernels
