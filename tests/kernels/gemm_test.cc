// Tests for kernels/cpu.h: ISA naming and resolution, ThreadPool coverage,
// every CPU-supported ISA's Gemm/Gemv against GemmReference, and bitwise
// row invariance across batch size, column range, entry point and threads.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/cpu.h"
#include "tests/kernels/cpu_isa_test_support.h"
#include "kernels/dtype.h"

namespace dsv2::kernels {
namespace {


// ---------------------------------------------------------------- ISA

TEST(CpuIsaTest, NamesRoundTripThroughParse) {
  for (CpuIsa isa : kAllIsas) {
    absl::StatusOr<CpuIsa> parsed = ParseCpuIsa(CpuIsaName(isa));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, isa);
  }
}

TEST(CpuIsaTest, AutoParsesToBestIsa) {
  absl::StatusOr<CpuIsa> parsed = ParseCpuIsa("auto");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, BestCpuIsa());
}

TEST(CpuIsaTest, UnknownNameIsInvalidArgument) {
  for (const char* name : {"", "avx", "AVX2", "avx512", "neon", "avx2 "}) {
    absl::StatusOr<CpuIsa> parsed = ParseCpuIsa(name);
    ASSERT_FALSE(parsed.ok()) << name;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_NE(parsed.status().message().find(std::string("\"") + name + "\""), std::string::npos)
        << parsed.status();
  }
}

TEST(CpuIsaTest, ScalarIsAlwaysSupportedAndBestIsSupported) {
  EXPECT_TRUE(CpuSupports(CpuIsa::kScalar));
  EXPECT_TRUE(CpuSupports(BestCpuIsa()));
  if (CpuSupports(CpuIsa::kAmx)) {
    EXPECT_EQ(BestCpuIsa(), CpuIsa::kAmx);
  } else if (CpuSupports(CpuIsa::kAvx512Bf16)) {
    EXPECT_EQ(BestCpuIsa(), CpuIsa::kAvx512Bf16);
  } else if (CpuSupports(CpuIsa::kAvx2)) {
    EXPECT_EQ(BestCpuIsa(), CpuIsa::kAvx2);
  }
}

// Sets or clears DSV2_CPU_ISA for the test's duration, restoring it after.
class ScopedIsaEnv {
 public:
  explicit ScopedIsaEnv(const char* value) {
    const char* old = std::getenv("DSV2_CPU_ISA");
    had_old_ = old != nullptr;
    if (had_old_) old_ = old;
    if (value == nullptr) {
      unsetenv("DSV2_CPU_ISA");
    } else {
      setenv("DSV2_CPU_ISA", value, 1);
    }
  }
  ~ScopedIsaEnv() {
    if (had_old_) {
      setenv("DSV2_CPU_ISA", old_.c_str(), 1);
    } else {
      unsetenv("DSV2_CPU_ISA");
    }
  }

 private:
  bool had_old_ = false;
  std::string old_;
};

TEST(CpuIsaTest, ResolveWithoutFlagOrEnvIsBest) {
  ScopedIsaEnv env(nullptr);
  absl::StatusOr<CpuIsa> isa = ResolveCpuIsa("");
  ASSERT_TRUE(isa.ok()) << isa.status();
  EXPECT_EQ(*isa, BestCpuIsa());
}

TEST(CpuIsaTest, ResolveHonoursEnvWhenFlagEmpty) {
  ScopedIsaEnv env("scalar");
  absl::StatusOr<CpuIsa> isa = ResolveCpuIsa("");
  ASSERT_TRUE(isa.ok()) << isa.status();
  EXPECT_EQ(*isa, CpuIsa::kScalar);
}

TEST(CpuIsaTest, ResolveFlagOverridesEnv) {
  ScopedIsaEnv env("bogus");
  absl::StatusOr<CpuIsa> isa = ResolveCpuIsa("scalar");
  ASSERT_TRUE(isa.ok()) << isa.status();
  EXPECT_EQ(*isa, CpuIsa::kScalar);
}

TEST(CpuIsaTest, ResolveEmptyEnvMeansUnset) {
  ScopedIsaEnv env("");
  absl::StatusOr<CpuIsa> isa = ResolveCpuIsa("");
  ASSERT_TRUE(isa.ok()) << isa.status();
  EXPECT_EQ(*isa, BestCpuIsa());
}

TEST(CpuIsaTest, ResolveUnknownEnvIsInvalidArgumentNamingTheVariable) {
  ScopedIsaEnv env("sse9");
  absl::StatusOr<CpuIsa> isa = ResolveCpuIsa("");
  ASSERT_FALSE(isa.ok());
  EXPECT_EQ(isa.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(isa.status().message().find("DSV2_CPU_ISA"), std::string::npos) << isa.status();
  EXPECT_NE(isa.status().message().find("sse9"), std::string::npos) << isa.status();
}

TEST(CpuIsaTest, ResolveUnknownFlagIsInvalidArgument) {
  ScopedIsaEnv env(nullptr);
  absl::StatusOr<CpuIsa> isa = ResolveCpuIsa("fast");
  ASSERT_FALSE(isa.ok());
  EXPECT_EQ(isa.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CpuIsaTest, ResolveUnsupportedIsaIsFailedPrecondition) {
  ScopedIsaEnv env(nullptr);
  for (CpuIsa isa : kAllIsas) {
    absl::StatusOr<CpuIsa> resolved = ResolveCpuIsa(CpuIsaName(isa));
    if (CpuSupports(isa)) {
      ASSERT_TRUE(resolved.ok()) << resolved.status();
      EXPECT_EQ(*resolved, isa);
    } else {
      ASSERT_FALSE(resolved.ok());
      EXPECT_EQ(resolved.status().code(), absl::StatusCode::kFailedPrecondition);
    }
  }
}

// ---------------------------------------------------------------- ThreadPool

TEST(ThreadPoolTest, CoversEveryIndexExactlyOnceWithChunksOfAtLeastGrain) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.num_threads(), threads);
    for (size_t n : {size_t{1}, size_t{2}, size_t{7}, size_t{64}, size_t{1000}, size_t{4099}}) {
      for (size_t grain : {size_t{0}, size_t{1}, size_t{3}, size_t{100}}) {
        std::vector<int> hits(n, 0);  // each index written by one chunk only
        std::mutex mu;
        size_t short_chunks = 0;
        pool.ParallelFor(n, grain, [&](size_t begin, size_t end) {
          ASSERT_LT(begin, end);
          ASSERT_LE(end, n);
          for (size_t i = begin; i < end; ++i) ++hits[i];
          if (end - begin < grain) {
            std::lock_guard<std::mutex> lock(mu);
            ++short_chunks;
            EXPECT_EQ(end, n) << "only the last chunk may be shorter than grain";
          }
        });
        EXPECT_LE(short_chunks, 1u);
        for (size_t i = 0; i < n; ++i) {
          ASSERT_EQ(hits[i], 1) << "threads=" << threads << " n=" << n << " grain=" << grain
                                << " i=" << i;
        }
      }
    }
  }
}

TEST(ThreadPoolTest, ZeroItemsCallsNothing) {
  ThreadPool pool(2);
  int calls = 0;
  pool.ParallelFor(0, 1, [&](size_t, size_t) { ++calls; });
  EXPECT_EQ(calls, 0);
}

TEST(ThreadPoolTest, ManyConsecutiveJobsAllComplete) {
  ThreadPool pool(3);
  std::vector<int> hits(97, 0);
  for (int round = 0; round < 2000; ++round) {
    pool.ParallelFor(hits.size(), 1, [&](size_t begin, size_t end) {
      for (size_t i = begin; i < end; ++i) ++hits[i];
    });
  }
  for (int h : hits) ASSERT_EQ(h, 2000);
}

// ---------------------------------------------------------------- Gemm

// Random operands for one GEMM; x rows at stride ldx, w rows at stride ldw,
// padding filled with NaN so any read past K shows up in the result.
struct Problem {
  size_t M, N, K, ldx, ldw;
  DType w_dtype;
  std::vector<float> x;
  std::vector<float> w_f32;
  std::vector<uint16_t> w_bf16;

  const void* w() const {
    return w_dtype == DType::kBF16 ? static_cast<const void*>(w_bf16.data())
                                   : static_cast<const void*>(w_f32.data());
  }
  // Weight row n (for sub-range calls).
  const void* w_row(size_t n) const {
    return w_dtype == DType::kBF16 ? static_cast<const void*>(w_bf16.data() + n * ldw)
                                   : static_cast<const void*>(w_f32.data() + n * ldw);
  }
  float w_at(size_t n, size_t k) const {
    return w_dtype == DType::kBF16 ? Bf16ToF32(w_bf16[n * ldw + k]) : w_f32[n * ldw + k];
  }
};

Problem MakeProblem(size_t M, size_t N, size_t K, size_t x_pad, size_t w_pad, DType w_dtype,
                    uint32_t seed) {
  Problem p{M, N, K, K + x_pad, K + w_pad, w_dtype, {}, {}, {}};
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  const float nan = std::nanf("");
  // One extra padded row past the end as well.
  p.x.assign((M + 1) * p.ldx, nan);
  for (size_t m = 0; m < M; ++m) {
    for (size_t k = 0; k < K; ++k) {
      float v = dist(rng);
      // bf16 models feed bf16-representable activations (cpu.h).
      p.x[m * p.ldx + k] = w_dtype == DType::kBF16 ? RoundToBf16(v) : v;
    }
  }
  if (w_dtype == DType::kBF16) {
    p.w_bf16.assign((N + 1) * p.ldw, F32ToBf16(nan));
    for (size_t n = 0; n < N; ++n) {
      for (size_t k = 0; k < K; ++k) p.w_bf16[n * p.ldw + k] = F32ToBf16(dist(rng));
    }
  } else {
    p.w_f32.assign((N + 1) * p.ldw, nan);
    for (size_t n = 0; n < N; ++n) {
      for (size_t k = 0; k < K; ++k) p.w_f32[n * p.ldw + k] = dist(rng);
    }
  }
  return p;
}

class GemmIsaTest : public CpuIsaTest {};

// bf16 weights run with both kinds of x (MakeProblem's x is bf16-exact for
// them): kBf16Exact is the bf16 model path (VDPBF16PS, AMX tiles).
std::vector<XValues> XValuesFor(DType dtype) {
  if (dtype == DType::kBF16) return {XValues::kF32, XValues::kBf16Exact};
  return {XValues::kF32};
}
std::string XValuesName(XValues xv) { return xv == XValues::kBf16Exact ? " (bf16-exact x)" : ""; }

// |y - ref| is bounded by the two fp32 reductions' rounding error:
// (K + 2) * 2^-24 * sum_k |x w| each (Higham, 3.1), plus a tiny absolute
// slack for denormal flushing.
void ExpectNearReference(const Problem& p, const std::vector<float>& y, size_t ldy,
                         const std::string& what) {
  std::vector<float> ref(p.M * p.N);
  GemmReference(p.x.data(), p.ldx, p.w(), p.w_dtype, p.ldw, ref.data(), p.N, p.M, p.N, p.K);
  const double unit = std::ldexp(1.0, -24);
  for (size_t m = 0; m < p.M; ++m) {
    for (size_t n = 0; n < p.N; ++n) {
      double abs_sum = 0;
      for (size_t k = 0; k < p.K; ++k) {
        abs_sum += std::fabs(double{p.x[m * p.ldx + k]} * p.w_at(n, k));
      }
      const double tol = 2.0 * (p.K + 2) * unit * abs_sum + 1e-30;
      ASSERT_NEAR(y[m * ldy + n], ref[m * p.N + n], tol)
          << what << " m=" << m << " n=" << n << " M=" << p.M << " N=" << p.N << " K=" << p.K;
    }
  }
}

TEST_P(GemmIsaTest, MatchesReferenceOnOddShapesAndStrides) {
  uint32_t seed = 1;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (size_t K : {1, 7, 31, 33, 100, 577}) {
      for (size_t N : {1, 3, 17}) {
        for (size_t M : {1, 2, 3, 4, 5, 6, 7, 8, 9, 33}) {
          for (size_t pad : {0, 5}) {
            const Problem p = MakeProblem(M, N, K, pad, pad * 3, dtype, seed++);
            const size_t ldy = N + pad;
            for (XValues xv : XValuesFor(dtype)) {
              std::vector<float> y(M * ldy, -7.0f);
              Gemm(Context(), p.x.data(), p.ldx, p.w(), dtype, p.ldw, y.data(), ldy, M, N, K, xv);
              const std::string what = std::string(DTypeName(dtype)) + " Gemm" + XValuesName(xv);
              ExpectNearReference(p, y, ldy, what);
              if (HasFatalFailure()) return;
              // Gemm writes only Y's [M, N] part.
              for (size_t m = 0; m < M; ++m) {
                for (size_t n = N; n < ldy; ++n) ASSERT_EQ(y[m * ldy + n], -7.0f);
              }
            }
          }
        }
      }
    }
  }
}

// XValues::kF32 (the default) never rounds X, also with bf16 weights: the
// attention operands (q_lat, attention sums) are full f32.
TEST_P(GemmIsaTest, UnroundedXWithBf16WeightsKeepsF32Precision) {
  uint32_t seed = 500;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (size_t K : {7, 33, 577}) {
    for (size_t M : {1, 5}) {
      Problem p = MakeProblem(M, 17, K, 0, 0, DType::kBF16, seed++);
      for (size_t m = 0; m < M; ++m) {
        for (size_t k = 0; k < K; ++k) p.x[m * p.ldx + k] = dist(rng) * (1.0f + 1e-3f);
      }
      std::vector<float> y(M * 17);
      Gemm(Context(), p.x.data(), p.ldx, p.w(), DType::kBF16, p.ldw, y.data(), 17, M, 17, K);
      ExpectNearReference(p, y, 17, "bf16 weights, unrounded x");
      if (HasFatalFailure()) return;
    }
  }
}

// XValues::kBf16Exact (bf16-model activations) matches the reference too
// (on AVX-512 BF16 it takes the VDPBF16PS path).
TEST_P(GemmIsaTest, Bf16ExactXMatchesReference) {
  uint32_t seed = 600;
  for (size_t K : {1, 31, 33, 577}) {
    for (size_t M : {1, 4, 9}) {
      const Problem p = MakeProblem(M, 17, K, 0, 0, DType::kBF16, seed++);
      std::vector<float> y(M * 17);
      Gemm(Context(), p.x.data(), p.ldx, p.w(), DType::kBF16, p.ldw, y.data(), 17, M, 17, K,
           XValues::kBf16Exact);
      ExpectNearReference(p, y, 17, "bf16 exact x");
      if (HasFatalFailure()) return;
    }
  }
}

TEST_P(GemmIsaTest, GemvMatchesReference) {
  uint32_t seed = 100;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (size_t K : {1, 7, 8, 9, 31, 32, 33, 100, 577, 2048}) {
      for (size_t N : {1, 3, 8, 17, 300}) {
        const Problem p = MakeProblem(1, N, K, 0, 3, dtype, seed++);
        for (XValues xv : XValuesFor(dtype)) {
          std::vector<float> y(N, -7.0f);
          Gemv(Context(), p.x.data(), p.w(), dtype, p.ldw, y.data(), N, K, xv);
          ExpectNearReference(p, y, N, std::string(DTypeName(dtype)) + " Gemv" + XValuesName(xv));
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

TEST_P(GemmIsaTest, ZeroKGivesZeros) {
  const float x = 1.0f;
  const float w = 1.0f;
  std::vector<float> y(6, -1.0f);
  Gemm(Context(), &x, 0, &w, DType::kF32, 0, y.data(), 3, 2, 3, 0);
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

// Computes every row alone (Gemv and Gemm with M = 1, one thread) and checks
// that Gemm on batches of several sizes, with 1-3 threads, and on column
// sub-ranges gives the same bits.
void CheckRowInvariance(CpuIsa isa, size_t N, size_t K, size_t max_m, DType dtype,
                        const std::vector<size_t>& batch_sizes, uint32_t seed,
                        XValues xv = XValues::kF32) {
  const Problem p = MakeProblem(max_m, N, K, 3, 1, dtype, seed);
  std::vector<float> alone(max_m * N);
  for (size_t m = 0; m < max_m; ++m) {
    Gemv(CpuContext{isa, nullptr}, p.x.data() + m * p.ldx, p.w(), dtype, p.ldw,
         alone.data() + m * N, N, K, xv);
    std::vector<float> y1(N);
    Gemm(CpuContext{isa, nullptr}, p.x.data() + m * p.ldx, p.ldx, p.w(), dtype, p.ldw, y1.data(), N,
         1, N, K, xv);
    ASSERT_EQ(std::memcmp(y1.data(), alone.data() + m * N, N * sizeof(float)), 0)
        << "Gemm(M=1) differs from Gemv at row " << m;
  }
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    const CpuContext ctx{isa, &pool};
    for (size_t m = 0; m < max_m; ++m) {
      std::vector<float> y(N);
      Gemv(ctx, p.x.data() + m * p.ldx, p.w(), dtype, p.ldw, y.data(), N, K, xv);
      ASSERT_EQ(std::memcmp(y.data(), alone.data() + m * N, N * sizeof(float)), 0)
          << "threaded Gemv differs at row " << m << " threads=" << threads;
    }
    for (size_t M : batch_sizes) {
      // Batches start at several row offsets so a row sits at different
      // positions inside the register tiles.
      for (size_t m0 : {size_t{0}, size_t{1}, size_t{3}}) {
        if (m0 + M > max_m) continue;
        std::vector<float> y(M * N);
        Gemm(ctx, p.x.data() + m0 * p.ldx, p.ldx, p.w(), dtype, p.ldw, y.data(), N, M, N, K, xv);
        for (size_t m = 0; m < M; ++m) {
          ASSERT_EQ(std::memcmp(y.data() + m * N, alone.data() + (m0 + m) * N, N * sizeof(float)),
                    0)
              << "row " << m0 + m << " inside a batch of " << M << " at offset " << m0
              << " differs; threads=" << threads << " N=" << N << " K=" << K;
        }
      }
    }
    // Column sub-range [n0, n0 + nc): the element's tile column changes.
    for (size_t n0 : {size_t{1}, size_t{5}}) {
      const size_t nc = N - n0 - N / 3;
      std::vector<float> y(max_m * nc);
      Gemm(ctx, p.x.data(), p.ldx, p.w_row(n0), dtype, p.ldw, y.data(), nc, max_m, nc, K, xv);
      for (size_t m = 0; m < max_m; ++m) {
        ASSERT_EQ(std::memcmp(y.data() + m * nc, alone.data() + m * N + n0, nc * sizeof(float)), 0)
            << "columns from " << n0 << " differ at row " << m << " threads=" << threads;
      }
    }
  }
}

TEST_P(GemmIsaTest, RowsAreBitwiseInvariantOnSmallShapes) {
  uint32_t seed = 500;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (XValues xv : XValuesFor(dtype)) {
      for (size_t K : {1, 7, 31, 33, 100, 577}) {
        for (size_t N : {17, 40}) {
          CheckRowInvariance(GetParam(), N, K, 40, dtype, {1, 2, 3, 4, 5, 7, 8, 9, 13, 37}, seed++,
                             xv);
          if (HasFatalFailure()) return;
        }
      }
      // Small enough to run on the calling thread as one block of > 64 rows
      // (the AVX-512 bf16 path converts x in chunks of 64 rows).
      CheckRowInvariance(GetParam(), 20, 33, 75, dtype, {66, 70}, seed++, xv);
      if (HasFatalFailure()) return;
    }
  }
}

// Shapes large enough that Gemv and Gemm actually split over threads
// (column blocks for both; row blocks too for K = 2000, where a row block
// holds 32 rows, so batches of 33 and 37 end in a 1- and a 5-row block).
TEST_P(GemmIsaTest, RowsAreBitwiseInvariantAcrossThreadSplits) {
  uint32_t seed = 900;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (XValues xv : XValuesFor(dtype)) {
      CheckRowInvariance(GetParam(), 1003, 577, 40, dtype, {2, 5, 9, 37}, seed++, xv);
      if (HasFatalFailure()) return;
      CheckRowInvariance(GetParam(), 130, 2000, 40, dtype, {2, 33, 37}, seed++, xv);
      if (HasFatalFailure()) return;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllIsas, GemmIsaTest, testing::ValuesIn(kAllIsas), IsaParamName);

// ---------------------------------------------------------------- bad input

using GemmDeathTest = testing::Test;

TEST_F(GemmDeathTest, WeightStrideBelowKAborts) {
  std::vector<float> x(16, 1.0f), w(16, 1.0f), y(4);
  EXPECT_DEATH(Gemm(CpuContext{}, x.data(), 8, w.data(), DType::kF32, 4, y.data(), 2, 2, 2, 8),
               "ldw < K \\(4 vs 8\\)");
}

TEST_F(GemmDeathTest, F16WeightsAbort) {
  std::vector<float> x(8, 1.0f), y(1);
  std::vector<uint16_t> w(8, 0);
  EXPECT_DEATH(Gemv(CpuContext{}, x.data(), w.data(), DType::kF16, 8, y.data(), 1, 8),
               "weight dtype f16 unsupported");
}

TEST_F(GemmDeathTest, UnsupportedIsaAborts) {
  if (CpuSupports(CpuIsa::kAmx)) GTEST_SKIP() << "every ISA is supported here";
  std::vector<float> x(8, 1.0f), w(8, 1.0f), y(1);
  EXPECT_DEATH(
      Gemv(CpuContext{CpuIsa::kAmx, nullptr}, x.data(), w.data(), DType::kF32, 8, y.data(), 1, 8),
      "amx is not supported");
}

}  // namespace
}  // namespace dsv2::kernels
