// kernels_bench: measures this machine's memory-read bandwidth, then the CPU
// GEMV/GEMM kernels on DeepSeek-V2-Lite shapes (hidden 2048, dense MLP
// intermediate 10944, expert intermediate 1408, vocabulary 102400).
// Each kernel is first checked against GemmReference, then timed; it prints
// time per call, bytes moved, GB/s, GFLOP/s and the percentage of the
// measured read bandwidth.
//
//   kernels_bench [--threads N] [--isa auto|scalar|avx2|avx512bf16]
//
// Weights are timed "cold": the call cycles through enough copies of the
// weight matrix (>= 256 MiB in all) that every call reads them from DRAM,
// as a decode step does (a model's weights are far larger than the LLC);
// "hot" repeats one copy (cache-resident when it fits the LLC).
#include <emmintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu.h"
#include "kernels/dtype.h"

namespace dsv2::kernels {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Deterministic fast fill (xorshift) with values in [-1, 1).
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed * 0x9e3779b97f4a7c15ull + 1) {}
  float Next() {
    s_ ^= s_ << 13;
    s_ ^= s_ >> 7;
    s_ ^= s_ << 17;
    return static_cast<float>(static_cast<int64_t>(s_ >> 40) - (int64_t{1} << 23)) /
           static_cast<float>(1 << 23);
  }

 private:
  uint64_t s_;
};

// Sums `words` (a multiple of 8) uint64 at p: 64 bytes per step into four
// independent SSE2 accumulators (baseline x86-64, so no dispatch needed),
// enough loads in flight that DRAM, not the core, limits it.
uint64_t SumWords(const uint64_t* p, size_t words) {
  __m128i a0 = _mm_setzero_si128(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 8 <= words; i += 8) {
    const __m128i* v = reinterpret_cast<const __m128i*>(p + i);
    a0 = _mm_add_epi64(a0, _mm_loadu_si128(v + 0));
    a1 = _mm_add_epi64(a1, _mm_loadu_si128(v + 1));
    a2 = _mm_add_epi64(a2, _mm_loadu_si128(v + 2));
    a3 = _mm_add_epi64(a3, _mm_loadu_si128(v + 3));
  }
  alignas(16) uint64_t out[2];
  _mm_store_si128(reinterpret_cast<__m128i*>(out),
                  _mm_add_epi64(_mm_add_epi64(a0, a1), _mm_add_epi64(a2, a3)));
  return out[0] + out[1];
}

// Best of several multithreaded read passes over 512 MiB, in GB/s (1e9).
double MeasureReadBandwidth(ThreadPool& pool) {
  const size_t bytes = size_t{512} << 20;
  const size_t words = bytes / 8;
  std::unique_ptr<uint64_t[]> buf = std::make_unique_for_overwrite<uint64_t[]>(words);
  // First touch from the pool, so pages spread like the reads will.
  pool.ParallelFor(words, words / pool.num_threads(), [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) buf[i] = i;
  });
  double best = 0;
  std::atomic<uint64_t> sink{0};  // keeps the sums alive
  for (int pass = 0; pass < 6; ++pass) {
    const auto t0 = Clock::now();
    // Chunks of 4 MiB, taken dynamically.
    const size_t chunk_words = (size_t{4} << 20) / 8;
    pool.ParallelFor(words / chunk_words, 1, [&](size_t b, size_t e) {
      const uint64_t s = SumWords(buf.get() + b * chunk_words, (e - b) * chunk_words);
      sink.fetch_add(s, std::memory_order_relaxed);
    });
    const double gbs = bytes / Seconds(t0, Clock::now()) / 1e9;
    best = std::max(best, gbs);
  }
  return best;
}

struct Shape {
  const char* name;
  size_t M, N, K;
  DType dtype;
};

struct Timing {
  double cold_s;  // per call, weights from DRAM
  double hot_s;   // per call, one weight copy repeated
};

class KernelBench {
 public:
  KernelBench(CpuContext ctx, double bandwidth_gbs) : ctx_(ctx), bw_(bandwidth_gbs) {}

  // Returns false when the kernel disagrees with GemmReference.
  bool Run(const Shape& s) {
    const size_t w_elem = DTypeSize(s.dtype);
    const size_t w_bytes = s.N * s.K * w_elem;
    const size_t copies = std::max<size_t>(1, ((size_t{256} << 20) + w_bytes - 1) / w_bytes);
    std::vector<std::unique_ptr<uint8_t[]>> w(copies);
    Rng rng(s.N * 31 + s.K * 7 + s.M);
    w[0] = std::make_unique_for_overwrite<uint8_t[]>(w_bytes);
    if (s.dtype == DType::kBF16) {
      auto* p = reinterpret_cast<uint16_t*>(w[0].get());
      for (size_t i = 0; i < s.N * s.K; ++i) p[i] = F32ToBf16(rng.Next() * 0.05f);
    } else {
      auto* p = reinterpret_cast<float*>(w[0].get());
      for (size_t i = 0; i < s.N * s.K; ++i) p[i] = rng.Next() * 0.05f;
    }
    for (size_t c = 1; c < copies; ++c) {
      w[c] = std::make_unique_for_overwrite<uint8_t[]>(w_bytes);
      std::memcpy(w[c].get(), w[0].get(), w_bytes);
    }
    std::vector<float> x(s.M * s.K);
    for (float& v : x) v = rng.Next();
    RoundInPlace(x.data(), x.size(), s.dtype);
    std::vector<float> y(s.M * s.N), ref(s.M * s.N);

    Call(s, x.data(), w[0].get(), y.data());
    GemmReference(x.data(), s.K, w[0].get(), s.dtype, s.K, ref.data(), s.N, s.M, s.N, s.K);
    if (!Check(s, x, w[0].get(), y, ref)) return false;

    Timing t;
    t.cold_s = TimeCalls(s, x.data(), w, y.data(), copies);
    t.hot_s = copies == 1 ? t.cold_s : TimeCalls(s, x.data(), w, y.data(), 1);
    Print(s, w_bytes, t);
    return true;
  }

 private:
  void Call(const Shape& s, const float* x, const void* w, float* y) {
    if (s.M == 1) {
      Gemv(ctx_, x, w, s.dtype, s.K, y, s.N, s.K);
    } else {
      Gemm(ctx_, x, s.K, w, s.dtype, s.K, y, s.N, s.M, s.N, s.K);
    }
  }

  // Seconds per call, cycling over the first `copies` weight copies, for at
  // least 0.4 s and two rounds of copies after a warm-up round.
  double TimeCalls(const Shape& s, const float* x, const std::vector<std::unique_ptr<uint8_t[]>>& w,
                   float* y, size_t copies) {
    for (size_t c = 0; c < copies; ++c) Call(s, x, w[c].get(), y);
    size_t calls = 0;
    const auto t0 = Clock::now();
    double elapsed = 0;
    while (calls < 2 * copies || elapsed < 0.4) {
      Call(s, x, w[calls % copies].get(), y);
      ++calls;
      elapsed = Seconds(t0, Clock::now());
    }
    return elapsed / calls;
  }

  bool Check(const Shape& s, const std::vector<float>& x, const void* w,
             const std::vector<float>& y, const std::vector<float>& ref) {
    const double unit = std::ldexp(1.0, -24);
    for (size_t m = 0; m < s.M; ++m) {
      for (size_t n = 0; n < s.N; ++n) {
        double abs_sum = 0;
        for (size_t k = 0; k < s.K; ++k) {
          const float wv = s.dtype == DType::kBF16
                               ? Bf16ToF32(static_cast<const uint16_t*>(w)[n * s.K + k])
                               : static_cast<const float*>(w)[n * s.K + k];
          abs_sum += std::fabs(double{x[m * s.K + k]} * wv);
        }
        const double tol = 2.0 * (s.K + 2) * unit * abs_sum + 1e-30;
        const double err = std::fabs(double{y[m * s.N + n]} - ref[m * s.N + n]);
        if (!(err <= tol)) {
          std::printf("%-22s MISMATCH at m=%zu n=%zu: %.9g vs reference %.9g (tolerance %.3g)\n",
                      s.name, m, n, y[m * s.N + n], ref[m * s.N + n], tol);
          return false;
        }
      }
    }
    return true;
  }

  void Print(const Shape& s, size_t w_bytes, const Timing& t) {
    const double bytes = static_cast<double>(w_bytes) + 4.0 * s.M * (s.K + s.N);
    const double flops = 2.0 * s.M * s.N * s.K;
    std::printf("%-22s %4s M=%-4zu N=%-6zu K=%-5zu %9.1f us %8.2f MB %7.2f GB/s %7.1f GFLOP/s "
                "%5.1f%% bw | hot %9.1f us %7.2f GB/s %7.1f GFLOP/s\n",
                s.name, std::string(DTypeName(s.dtype)).c_str(), s.M, s.N, s.K, t.cold_s * 1e6,
                bytes / 1e6, bytes / t.cold_s / 1e9, flops / t.cold_s / 1e9,
                100.0 * bytes / t.cold_s / 1e9 / bw_, t.hot_s * 1e6, bytes / t.hot_s / 1e9,
                flops / t.hot_s / 1e9);
    std::fflush(stdout);
  }

  const CpuContext ctx_;
  const double bw_;
};

int Main(int argc, char** argv) {
  int threads = 2;
  std::string isa_flag;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (arg == "--isa" && i + 1 < argc) {
      isa_flag = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--threads N] [--isa auto|scalar|avx2|avx512bf16]\n",
                   argv[0]);
      return 2;
    }
  }
  if (threads < 1) {
    std::fprintf(stderr, "--threads is %d; must be >= 1\n", threads);
    return 2;
  }
  absl::StatusOr<CpuIsa> isa = ResolveCpuIsa(isa_flag);
  if (!isa.ok()) {
    std::fprintf(stderr, "%s\n", std::string(isa.status().message()).c_str());
    return 2;
  }
  ThreadPool pool(threads);
  const double bw = MeasureReadBandwidth(pool);
  std::printf("isa=%s threads=%d  memory read bandwidth (512 MiB, best of 6): %.2f GB/s\n",
              std::string(CpuIsaName(*isa)).c_str(), threads, bw);
  std::printf("cold: weights cycled through >= 256 MiB of copies (DRAM); hot: one copy repeated\n");

  KernelBench bench(CpuContext{*isa, &pool}, bw);
  const Shape shapes[] = {
      {"gemv q/o-proj", 1, 2048, 2048, DType::kBF16},
      {"gemv q/o-proj", 1, 2048, 2048, DType::kF32},
      {"gemv mlp up", 1, 10944, 2048, DType::kBF16},
      {"gemv mlp up", 1, 10944, 2048, DType::kF32},
      {"gemv expert down", 1, 2048, 1408, DType::kBF16},
      {"gemv expert down", 1, 2048, 1408, DType::kF32},
      {"gemv lm_head", 1, 102400, 2048, DType::kBF16},
      {"gemm", 8, 2048, 2048, DType::kBF16},
      {"gemm", 32, 2048, 2048, DType::kBF16},
      {"gemm", 128, 2048, 2048, DType::kBF16},
      {"gemm", 8, 2048, 2048, DType::kF32},
      {"gemm", 32, 2048, 2048, DType::kF32},
      {"gemm", 128, 2048, 2048, DType::kF32},
  };
  bool ok = true;
  for (const Shape& s : shapes) ok = bench.Run(s) && ok;
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace dsv2::kernels

int main(int argc, char** argv) { return dsv2::kernels::Main(argc, argv); }
