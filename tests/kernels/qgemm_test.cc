// Tests for QGemm / QGemmReference (kernels/cpu.h) over the quantized
// formats of kernels/quant.h: the reference against a double-precision dot
// over dequantized weights, every CPU-supported ISA against the reference
// on odd shapes and strides, bitwise row invariance (batch size, position
// in a tile, column range, GEMV vs GEMM path, threads), and bad arguments.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu.h"
#include "kernels/dtype.h"
#include "kernels/quant.h"
#include "tests/kernels/cpu_isa_test_support.h"

namespace dsv2::kernels {
namespace {

constexpr QuantFormat kFormats[] = {QuantFormat::kInt8, QuantFormat::kInt4};

// Random quantized operands for one QGemm. Strides may exceed their
// minimum; the padding holds poison (NaN x, NaN f16 scales, 0x77 bytes) so
// any read of it shows up in the result.
struct Problem {
  QuantFormat format;
  size_t M, N, K, ldx;
  std::vector<float> x;
  std::vector<uint8_t> q;
  std::vector<uint16_t> scales;
  QuantizedWeights w;
  std::vector<float> deq;  // [N, K] dequantized weights

  // The weights from row n on (for column sub-range calls).
  QuantizedWeights w_from(size_t n) const {
    QuantizedWeights v = w;
    v.q = q.data() + n * w.ldq;
    v.scales = scales.data() + n * w.lds;
    return v;
  }
};

Problem MakeProblem(QuantFormat format, size_t M, size_t N, size_t K, size_t pad, uint32_t seed) {
  Problem p;
  p.format = format;
  p.M = M;
  p.N = N;
  p.K = K;
  p.ldx = K + pad;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  // x and the weights both vary in magnitude along K, as real activations
  // and weights do, so groups get different scales.
  p.x.assign((M + 1) * p.ldx, std::nanf(""));
  for (size_t m = 0; m < M; ++m) {
    for (size_t k = 0; k < K; ++k) p.x[m * p.ldx + k] = dist(rng) * (1.0f + (k % 7));
  }
  std::vector<float> wf(N * K);
  for (size_t n = 0; n < N; ++n) {
    for (size_t k = 0; k < K; ++k) wf[n * K + k] = dist(rng) * 0.05f * (1.0f + (k / 32) % 5);
  }
  const size_t groups = QuantGroupsPerRow(K);
  const size_t ldq = QuantRowBytes(format, K) + pad * 3;
  const size_t lds = groups + pad;
  p.q.assign((N + 1) * ldq + 1, 0x77);
  p.scales.assign((N + 1) * lds + 1, 0x7e00);  // f16 NaN
  const absl::Status st =
      QuantizeRows(format, wf.data(), K, N, K, p.q.data(), ldq, p.scales.data(), lds);
  EXPECT_TRUE(st.ok()) << st;
  p.w = QuantizedWeights{format, p.q.data(), ldq, p.scales.data(), lds};
  p.deq.resize(N * K);
  for (size_t n = 0; n < N; ++n) {
    DequantizeRow(format, p.q.data() + n * ldq, p.scales.data() + n * lds, K, p.deq.data() + n * K);
  }
  return p;
}

// sum_k |x w| over row m of x and row n of the dequantized weights.
double AbsDot(const Problem& p, size_t m, size_t n) {
  double s = 0;
  for (size_t k = 0; k < p.K; ++k) {
    s += std::fabs(static_cast<double>(p.x[m * p.ldx + k]) * p.deq[n * p.K + k]);
  }
  return s;
}

// f32 summation error bound of a K-term dot product with G group scalings,
// for two such sums (kernel and reference): (K + G + 4) 2^-24 sum |x w| each.
double Tolerance(const Problem& p, size_t m, size_t n) {
  const double unit = std::ldexp(1.0, -24);
  return 2.0 * static_cast<double>(p.K + QuantGroupsPerRow(p.K) + 4) * unit * AbsDot(p, m, n) +
         1e-30;
}

TEST(QGemmReferenceTest, MatchesDoubleDotOverDequantizedWeights) {
  uint32_t seed = 1;
  for (QuantFormat f : kFormats) {
    for (size_t K : {1, 7, 31, 32, 33, 100, 577, 2048}) {
      const Problem p = MakeProblem(f, 3, 9, K, 2, seed++);
      std::vector<float> y(3 * 9);
      QGemmReference(p.x.data(), p.ldx, p.w, y.data(), 9, 3, 9, K);
      for (size_t m = 0; m < 3; ++m) {
        for (size_t n = 0; n < 9; ++n) {
          double exact = 0;
          for (size_t k = 0; k < K; ++k) {
            exact += static_cast<double>(p.x[m * p.ldx + k]) * p.deq[n * K + k];
          }
          ASSERT_NEAR(y[m * 9 + n], exact, Tolerance(p, m, n) / 2)
              << QuantFormatName(f) << " K=" << K << " m=" << m << " n=" << n;
        }
      }
    }
  }
}

class QGemmIsaTest : public CpuIsaTest {};

void ExpectNearReference(const Problem& p, const std::vector<float>& y, size_t ldy,
                         const std::string& what) {
  std::vector<float> ref(p.M * p.N);
  QGemmReference(p.x.data(), p.ldx, p.w, ref.data(), p.N, p.M, p.N, p.K);
  for (size_t m = 0; m < p.M; ++m) {
    for (size_t n = 0; n < p.N; ++n) {
      ASSERT_NEAR(y[m * ldy + n], ref[m * p.N + n], Tolerance(p, m, n))
          << what << " " << QuantFormatName(p.format) << " m=" << m << " n=" << n << " M=" << p.M
          << " N=" << p.N << " K=" << p.K;
    }
  }
}

TEST_P(QGemmIsaTest, MatchesReferenceOnOddShapesAndStrides) {
  uint32_t seed = 100;
  for (QuantFormat f : kFormats) {
    for (size_t K : {1, 7, 31, 32, 33, 100, 257, 577}) {
      for (size_t N : {1, 3, 17}) {
        for (size_t M : {1, 2, 3, 4, 5, 6, 7, 9, 33}) {
          for (size_t pad : {0, 5}) {
            const Problem p = MakeProblem(f, M, N, K, pad, seed++);
            const size_t ldy = N + pad;
            std::vector<float> y(M * ldy, -7.0f);
            QGemm(Context(), p.x.data(), p.ldx, p.w, y.data(), ldy, M, N, K);
            ExpectNearReference(p, y, ldy, "QGemm");
            if (HasFatalFailure()) return;
            for (size_t m = 0; m < M; ++m) {  // only Y's [M, N] part is written
              for (size_t n = N; n < ldy; ++n) ASSERT_EQ(y[m * ldy + n], -7.0f);
            }
          }
        }
      }
    }
  }
}

TEST_P(QGemmIsaTest, GemvPathMatchesReferenceOnManyColumns) {
  uint32_t seed = 200;
  for (QuantFormat f : kFormats) {
    for (size_t K : {32, 33, 2048}) {
      for (size_t N : {8, 15, 300}) {
        const Problem p = MakeProblem(f, 1, N, K, 1, seed++);
        std::vector<float> y(N);
        QGemm(Context(), p.x.data(), p.ldx, p.w, y.data(), N, 1, N, K);
        ExpectNearReference(p, y, N, "QGemm M=1");
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST_P(QGemmIsaTest, ZeroKGivesZeros) {
  const float x = 1.0f;
  const uint8_t q = 0;
  const uint16_t s = 0;
  std::vector<float> y(6, -1.0f);
  QGemm(Context(), &x, 0, QuantizedWeights{QuantFormat::kInt4, &q, 0, &s, 0}, y.data(), 3, 2, 3, 0);
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

// Every row computed alone (M = 1: the GEMV path, one thread) must come out
// bitwise the same inside batches of several sizes and offsets, with 1-3
// threads, and over column sub-ranges.
void CheckRowInvariance(CpuIsa isa, QuantFormat f, size_t N, size_t K, size_t max_m,
                        const std::vector<size_t>& batch_sizes, uint32_t seed,
                        QuantActivations acts = QuantActivations::kF32) {
  const Problem p = MakeProblem(f, max_m, N, K, 3, seed);
  std::vector<float> alone(max_m * N);
  for (size_t m = 0; m < max_m; ++m) {
    QGemm(CpuContext{isa, nullptr}, p.x.data() + m * p.ldx, p.ldx, p.w, alone.data() + m * N, N, 1,
          N, K, acts);
  }
  const std::string what = std::string(acts == QuantActivations::kInt8 ? "int8 x " : "") +
                           QuantFormatName(f) + " N=" + std::to_string(N) +
                           " K=" + std::to_string(K);
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    const CpuContext ctx{isa, &pool};
    for (size_t m = 0; m < max_m; ++m) {
      std::vector<float> y(N);
      QGemm(ctx, p.x.data() + m * p.ldx, p.ldx, p.w, y.data(), N, 1, N, K, acts);
      ASSERT_EQ(std::memcmp(y.data(), alone.data() + m * N, N * sizeof(float)), 0)
          << "threaded GEMV differs at row " << m << " threads=" << threads << " " << what;
    }
    for (size_t M : batch_sizes) {
      for (size_t m0 : {size_t{0}, size_t{1}, size_t{3}}) {
        if (m0 + M > max_m) continue;
        std::vector<float> y(M * N);
        QGemm(ctx, p.x.data() + m0 * p.ldx, p.ldx, p.w, y.data(), N, M, N, K, acts);
        for (size_t m = 0; m < M; ++m) {
          ASSERT_EQ(std::memcmp(y.data() + m * N, alone.data() + (m0 + m) * N, N * sizeof(float)),
                    0)
              << "row " << m0 + m << " inside a batch of " << M << " at offset " << m0
              << " differs from the GEMV row; threads=" << threads << " " << what;
        }
      }
    }
    for (size_t n0 : {size_t{1}, size_t{5}}) {
      const size_t nc = N - n0 - N / 3;
      for (size_t M : {size_t{1}, max_m}) {
        std::vector<float> y(M * nc);
        QGemm(ctx, p.x.data(), p.ldx, p.w_from(n0), y.data(), nc, M, nc, K, acts);
        for (size_t m = 0; m < M; ++m) {
          ASSERT_EQ(std::memcmp(y.data() + m * nc, alone.data() + m * N + n0, nc * sizeof(float)),
                    0)
              << "columns from " << n0 << " differ at row " << m << " M=" << M
              << " threads=" << threads << " " << what;
        }
      }
    }
  }
}

TEST_P(QGemmIsaTest, RowsAreBitwiseInvariantOnSmallShapes) {
  uint32_t seed = 300;
  for (QuantFormat f : kFormats) {
    for (size_t K : {1, 31, 33, 100, 577}) {
      for (size_t N : {17, 40}) {
        CheckRowInvariance(GetParam(), f, N, K, 70, {2, 3, 4, 5, 7, 8, 9, 13, 64}, seed++);
        if (HasFatalFailure()) return;
      }
    }
  }
}

// Shapes large enough that the GEMV and GEMM splits run on several threads
// (column blocks; row blocks too for K = 2000).
TEST_P(QGemmIsaTest, RowsAreBitwiseInvariantAcrossThreadSplits) {
  uint32_t seed = 400;
  for (QuantFormat f : kFormats) {
    CheckRowInvariance(GetParam(), f, 1003, 577, 40, {3, 7, 37}, seed++);
    if (HasFatalFailure()) return;
    CheckRowInvariance(GetParam(), f, 130, 2000, 40, {2, 33, 37}, seed++);
    if (HasFatalFailure()) return;
    CheckRowInvariance(GetParam(), f, 4099, 257, 9, {3, 9}, seed++);
    if (HasFatalFailure()) return;
  }
}

// ------------------------------------- int8 activations (integer dot product)

// y of one element by QuantActivations::kInt8's definition (cpu.h), with the
// f32 steps in double: the exact integer sums times f32 c_g. Only f32
// rounding of the fma chain and tree separate it from the kernels.
double Int8ActivationsDot(const Problem& p, size_t m, size_t n, double* abs_sum) {
  const float* x = p.x.data() + m * p.ldx;
  double y = 0;
  *abs_sum = 0;
  for (size_t g = 0; g < QuantGroupsPerRow(p.K); ++g) {
    const size_t k0 = g * kQuantGroupSize;
    const size_t k1 = std::min(p.K, k0 + kQuantGroupSize);
    float amax = 0;
    for (size_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(x[k]));
    const float d = amax / 127.0f;
    const float r = amax == 0 ? 0.0f : 127.0f / amax;
    int64_t isum = 0;
    for (size_t k = k0; k < k1; ++k) {
      const auto qx = static_cast<int64_t>(std::nearbyint(x[k] * r));
      EXPECT_LE(std::abs(qx), 127);
      isum += qx * QuantValueAt(p.format, p.q.data() + n * p.w.ldq, k);
    }
    const float c = F16ToF32(p.scales[n * p.w.lds + g]) * d;
    y += static_cast<double>(isum) * c;
    *abs_sum += std::fabs(static_cast<double>(isum) * c);
  }
  return y;
}

TEST(QGemmInt8ActivationsTest, ReferenceFollowsTheDefinitionAndStaysNearTheF32Product) {
  uint32_t seed = 500;
  for (QuantFormat f : kFormats) {
    for (size_t K : {1, 7, 31, 32, 33, 100, 255, 256, 257, 577, 2048}) {
      const Problem p = MakeProblem(f, 3, 9, K, 2, seed++);
      std::vector<float> y(3 * 9);
      QGemmReference(p.x.data(), p.ldx, p.w, y.data(), 9, 3, 9, K, QuantActivations::kInt8);
      for (size_t m = 0; m < 3; ++m) {
        for (size_t n = 0; n < 9; ++n) {
          double abs_sum = 0;
          const double def = Int8ActivationsDot(p, m, n, &abs_sum);
          const size_t groups = QuantGroupsPerRow(K);
          ASSERT_NEAR(y[m * 9 + n], def,
                      static_cast<double>(groups + 8) * std::ldexp(1.0, -23) * abs_sum + 1e-30)
              << QuantFormatName(f) << " K=" << K << " m=" << m << " n=" << n;
          // Against the f32 product: each x moves by at most d_g / 2.
          double exact = 0, bound = 0;
          for (size_t g = 0; g < groups; ++g) {
            float amax = 0, wabs = 0;
            for (size_t k = g * 32; k < std::min(K, g * 32 + 32); ++k) {
              amax = std::max(amax, std::fabs(p.x[m * p.ldx + k]));
              wabs += std::fabs(p.deq[n * K + k]);
            }
            bound += (amax / 127.0) / 2 * wabs * 1.0001;
          }
          for (size_t k = 0; k < K; ++k) {
            exact += static_cast<double>(p.x[m * p.ldx + k]) * p.deq[n * K + k];
          }
          ASSERT_NEAR(y[m * 9 + n], exact, bound + Tolerance(p, m, n))
              << QuantFormatName(f) << " K=" << K << " m=" << m << " n=" << n;
        }
      }
    }
  }
}

// The integer sums are exact, so every ISA gives the reference's bits.
void ExpectReferenceBits(const Problem& p, const std::vector<float>& y, size_t ldy,
                         const std::string& what) {
  std::vector<float> ref(p.M * p.N);
  QGemmReference(p.x.data(), p.ldx, p.w, ref.data(), p.N, p.M, p.N, p.K, QuantActivations::kInt8);
  for (size_t m = 0; m < p.M; ++m) {
    ASSERT_EQ(std::memcmp(y.data() + m * ldy, ref.data() + m * p.N, p.N * sizeof(float)), 0)
        << what << " " << QuantFormatName(p.format) << " m=" << m << " M=" << p.M << " N=" << p.N
        << " K=" << p.K;
  }
}

TEST_P(QGemmIsaTest, Int8ActivationsGiveTheReferenceBits) {
  uint32_t seed = 600;
  for (QuantFormat f : kFormats) {
    for (size_t K : {1, 7, 31, 32, 33, 100, 255, 256, 257, 300, 577, 1024}) {
      for (size_t N : {1, 2, 3, 5, 17}) {
        for (size_t M : {1, 2, 3, 4, 5, 6, 9, 33}) {
          for (size_t pad : {0, 5}) {
            Problem p = MakeProblem(f, M, N, K, pad, seed++);
            if (f == QuantFormat::kInt8 && K > 3) {
              // -128 is outside what the quantizer writes but a valid byte:
              // the kernels read it as -128 like the reference.
              p.q[0 * p.w.ldq + 1] = 0x80;
              p.q[(N - 1) * p.w.ldq + K - 1] = 0x80;
            }
            const size_t ldy = N + pad;
            std::vector<float> y(M * ldy, -7.0f);
            QGemm(Context(), p.x.data(), p.ldx, p.w, y.data(), ldy, M, N, K,
                  QuantActivations::kInt8);
            ExpectReferenceBits(p, y, ldy, "QGemm int8 x");
            if (HasFatalFailure()) return;
            for (size_t m = 0; m < M; ++m) {
              for (size_t n = N; n < ldy; ++n) ASSERT_EQ(y[m * ldy + n], -7.0f);
            }
          }
        }
      }
    }
  }
}

TEST_P(QGemmIsaTest, Int8ActivationsRowsAreBitwiseInvariant) {
  uint32_t seed = 700;
  for (QuantFormat f : kFormats) {
    for (size_t K : {31, 100, 577}) {
      CheckRowInvariance(GetParam(), f, 17, K, 70, {2, 3, 4, 5, 9, 64}, seed++,
                         QuantActivations::kInt8);
      if (HasFatalFailure()) return;
    }
    CheckRowInvariance(GetParam(), f, 1003, 577, 40, {3, 37}, seed++, QuantActivations::kInt8);
    if (HasFatalFailure()) return;
    CheckRowInvariance(GetParam(), f, 130, 2000, 40, {2, 33}, seed++, QuantActivations::kInt8);
    if (HasFatalFailure()) return;
  }
}

TEST_P(QGemmIsaTest, Int8ActivationsNonFiniteXGivesNanInItsRowOnly) {
  for (QuantFormat f : kFormats) {
    Problem p = MakeProblem(f, 3, 5, 70, 0, 800);
    p.x[1 * p.ldx + 40] = std::numeric_limits<float>::infinity();
    std::vector<float> y(3 * 5);
    QGemm(Context(), p.x.data(), p.ldx, p.w, y.data(), 5, 3, 5, 70, QuantActivations::kInt8);
    for (size_t n = 0; n < 5; ++n) {
      EXPECT_TRUE(std::isfinite(y[n])) << n;
      EXPECT_TRUE(std::isnan(y[5 + n])) << n;
      EXPECT_TRUE(std::isfinite(y[10 + n])) << n;
    }
  }
}

TEST_P(QGemmIsaTest, Int8ActivationsZeroKGivesZeros) {
  const float x = 1.0f;
  const uint8_t q = 0;
  const uint16_t s = 0;
  std::vector<float> y(6, -1.0f);
  QGemm(Context(), &x, 0, QuantizedWeights{QuantFormat::kInt8, &q, 0, &s, 0}, y.data(), 3, 2, 3, 0,
        QuantActivations::kInt8);
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

INSTANTIATE_TEST_SUITE_P(AllIsas, QGemmIsaTest, testing::ValuesIn(kAllIsas), IsaParamName);

// ---------------------------------------------------------------- bad input

using QGemmDeathTest = testing::Test;

TEST_F(QGemmDeathTest, RowStrideBelowRowBytesAborts) {
  std::vector<float> x(2 * 40, 1.0f), y(4);
  std::vector<uint8_t> q(2 * 40, 0x88);
  std::vector<uint16_t> s(4, 0x3c00);
  EXPECT_DEATH(
      QGemm(CpuContext{}, x.data(), 40,
            QuantizedWeights{QuantFormat::kInt4, q.data(), 16, s.data(), 2}, y.data(), 2, 2, 2, 40),
      "ldq < QuantRowBytes\\(format, K\\) \\(16 vs 32\\)");
}

TEST_F(QGemmDeathTest, ScaleStrideBelowGroupsAborts) {
  std::vector<float> x(2 * 40, 1.0f), y(4);
  std::vector<uint8_t> q(2 * 40, 0);
  std::vector<uint16_t> s(4, 0x3c00);
  EXPECT_DEATH(
      QGemm(CpuContext{}, x.data(), 40,
            QuantizedWeights{QuantFormat::kInt8, q.data(), 40, s.data(), 1}, y.data(), 2, 2, 2, 40),
      "lds < groups \\(1 vs 2\\)");
}

TEST_F(QGemmDeathTest, ActivationStrideBelowKAborts) {
  std::vector<float> x(2 * 40, 1.0f), y(4);
  std::vector<uint8_t> q(2 * 40, 0);
  std::vector<uint16_t> s(4, 0x3c00);
  EXPECT_DEATH(
      QGemm(CpuContext{}, x.data(), 39,
            QuantizedWeights{QuantFormat::kInt8, q.data(), 40, s.data(), 2}, y.data(), 2, 2, 2, 40),
      "ldx < K \\(39 vs 40\\)");
}

TEST_F(QGemmDeathTest, UnknownFormatAborts) {
  std::vector<float> x(40, 1.0f), y(1);
  std::vector<uint8_t> q(40, 0);
  std::vector<uint16_t> s(2, 0x3c00);
  EXPECT_DEATH(QGemm(CpuContext{}, x.data(), 40,
                     QuantizedWeights{static_cast<QuantFormat>(7), q.data(), 40, s.data(), 2},
                     y.data(), 1, 1, 1, 40),
               "unknown quantized format 7");
}

TEST_F(QGemmDeathTest, UnsupportedIsaAborts) {
  if (CpuSupports(CpuIsa::kAmx)) GTEST_SKIP() << "every ISA is supported here";
  std::vector<float> x(40, 1.0f), y(1);
  std::vector<uint8_t> q(40, 0);
  std::vector<uint16_t> s(2, 0x3c00);
  EXPECT_DEATH(
      QGemm(CpuContext{CpuIsa::kAmx, nullptr}, x.data(), 40,
            QuantizedWeights{QuantFormat::kInt8, q.data(), 40, s.data(), 2}, y.data(), 1, 1, 1, 40),
      "amx is not supported");
}

}  // namespace
}  // namespace dsv2::kernels
