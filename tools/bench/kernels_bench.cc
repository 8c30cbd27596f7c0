// kernels_bench: measures this machine's memory-read bandwidth, then the CPU
// GEMV/GEMM kernels on DeepSeek-V2-Lite shapes (hidden 2048, dense MLP
// intermediate 10944, expert intermediate 1408, vocabulary 102400).
// Each kernel is first checked against its reference (GemmReference,
// QGemmReference), then timed; it prints the weights' bits per weight, time
// per call, bytes moved, GB/s, GFLOP/s and the percentage of the measured
// read bandwidth. Quantized weights (int8, int4: kernels/quant.h) count
// their values and their f16 scales as bytes read.
//
//   kernels_bench [--threads N] [--isa auto|scalar|avx2|avx512bf16|amx] [--quant-only]
//                 [--bandwidth-only]
//
// bf16 weights run with bf16-exact x (XValues::kBf16Exact), the path of a
// bf16 model's linear layers (VDPBF16PS on avx512bf16, AMX tiles on amx).
// The %peak column is GFLOP/s against the measured peak of the instruction
// the kernel's inner loop uses on this ISA (printed first, with the same
// threads): f32 FMA (256-bit on avx2, 512-bit on avx512bf16 / amx; the
// quantized kernels and bf16 weights with f32 x use it too), VDPBF16PS
// (avx512bf16, bf16 weights) or AMX TDPBF16PS (amx, bf16 weights).
//
// Weights are timed "cold": the call cycles through enough copies of the
// weight matrix (>= 256 MiB in all) that every call reads them from DRAM,
// as a decode step does (a model's weights are far larger than the LLC);
// "hot" repeats one copy (cache-resident when it fits the LLC).
#include <immintrin.h>
#include <sys/mman.h>

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
#include "kernels/quant.h"

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

// Weights (and the bandwidth test buffer) live in 2 MiB-aligned buffers advised to use transparent
// huge pages, as a loader should place them: with 4 KiB pages a GEMV streaming 8 rows pays a page
// walk per row every 4 KiB (measured ~10-20% slower).
struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};
using WeightBuffer = std::unique_ptr<uint8_t[], FreeDeleter>;

WeightBuffer AllocWeights(size_t bytes) {
  constexpr size_t kHugePage = size_t{2} << 20;
  const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(kHugePage, rounded));
  if (p == nullptr) {
    std::fprintf(stderr, "out of memory allocating %zu bytes\n", rounded);
    std::abort();
  }
  madvise(p, rounded, MADV_HUGEPAGE);  // advisory; ignored without THP
  return WeightBuffer(p);
}

// Sums `words` (a multiple of 64) uint64 at p, read as 8 interleaved
// sequential streams (the 8 weight rows a GEMV tile streams): more streams
// keep more hardware prefetches in flight than one, which matters on
// high-latency (virtualised, multi-socket) memory. SSE2 is baseline x86-64,
// so no dispatch is needed; 16-byte loads are enough to saturate DRAM.
uint64_t SumWords(const uint64_t* p, size_t words) {
  constexpr size_t kStreams = 8;
  const size_t stream_words = words / kStreams;
  __m128i acc[kStreams];
  for (size_t s = 0; s < kStreams; ++s) acc[s] = _mm_setzero_si128();
  for (size_t i = 0; i + 8 <= stream_words; i += 8) {
    for (size_t s = 0; s < kStreams; ++s) {
      const __m128i* v = reinterpret_cast<const __m128i*>(p + s * stream_words + i);
      const __m128i sum =
          _mm_add_epi64(_mm_add_epi64(_mm_loadu_si128(v), _mm_loadu_si128(v + 1)),
                        _mm_add_epi64(_mm_loadu_si128(v + 2), _mm_loadu_si128(v + 3)));
      acc[s] = _mm_add_epi64(acc[s], sum);
    }
  }
  __m128i total = _mm_setzero_si128();
  for (size_t s = 0; s < kStreams; ++s) total = _mm_add_epi64(total, acc[s]);
  alignas(16) uint64_t out[2];
  _mm_store_si128(reinterpret_cast<__m128i*>(out), total);
  return out[0] + out[1];
}

// ------------------------------------------------------------ peak FLOP/s
// Independent accumulators (more than the instruction's latency x
// throughput), so the loop runs at the issue rate. Each returns the FLOPs
// it executed (a multiply-add counts 2) and stores into `sink` so the work
// is kept.

__attribute__((target("avx2,fma"))) double PeakLoopFma256(size_t iters, float* sink) {
  __m256 acc[12];
  for (auto& a : acc) a = _mm256_set1_ps(0.0f);
  const __m256 x = _mm256_set1_ps(1.0f), w = _mm256_set1_ps(1e-9f);
  for (size_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (auto& a : acc) a = _mm256_fmadd_ps(x, w, a);
  }
  for (int j = 1; j < 12; ++j) acc[0] = _mm256_add_ps(acc[0], acc[j]);
  _mm256_storeu_ps(sink, acc[0]);
  return 12.0 * 8 * 2 * iters;
}

__attribute__((target("avx512f"))) double PeakLoopFma512(size_t iters, float* sink) {
  __m512 acc[12];
  for (auto& a : acc) a = _mm512_set1_ps(0.0f);
  const __m512 x = _mm512_set1_ps(1.0f), w = _mm512_set1_ps(1e-9f);
  for (size_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (auto& a : acc) a = _mm512_fmadd_ps(x, w, a);
  }
  for (int j = 1; j < 12; ++j) acc[0] = _mm512_add_ps(acc[0], acc[j]);
  _mm512_storeu_ps(sink, acc[0]);
  return 12.0 * 16 * 2 * iters;
}

__attribute__((target("avx512f,avx512bf16"))) double PeakLoopDpbf16(size_t iters, float* sink) {
  __m512 acc[12];
  for (auto& a : acc) a = _mm512_set1_ps(0.0f);
  const __m512i x = _mm512_set1_epi16(0x3f80), w = _mm512_set1_epi16(0x3000);  // 1.0, 2^-31
  for (size_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (auto& a : acc) a = _mm512_dpbf16_ps(a, (__m512bh)x, (__m512bh)w);
  }
  for (int j = 1; j < 12; ++j) acc[0] = _mm512_add_ps(acc[0], acc[j]);
  _mm512_storeu_ps(sink, acc[0]);
  return 12.0 * 32 * 2 * iters;
}

// Integer multiply-adds (int8 activations): a u8 x s8 product-add counts 2.
__attribute__((target("avx512f,avx512vnni"))) double PeakLoopVnni512(size_t iters, float* sink) {
  __m512i acc[12];
  for (auto& a : acc) a = _mm512_setzero_si512();
  const __m512i x = _mm512_set1_epi8(1), w = _mm512_set1_epi8(1);
  for (size_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (auto& a : acc) a = _mm512_dpbusd_epi32(a, x, w);
  }
  for (int j = 1; j < 12; ++j) acc[0] = _mm512_add_epi32(acc[0], acc[j]);
  alignas(64) int32_t l[16];  // not _mm512_reduce_add_epi32: GCC 12 PR105593 warnings
  _mm512_store_si512(l, acc[0]);
  sink[0] = static_cast<float>(l[0]);
  return 12.0 * 64 * 2 * iters;
}

// VPMADDUBSW + VPMADDWD + VPADDD: AVX2's int8 dot product step (32 products).
__attribute__((target("avx2"))) double PeakLoopMaddubs256(size_t iters, float* sink) {
  __m256i acc[8];
  for (auto& a : acc) a = _mm256_setzero_si256();
  const __m256i x = _mm256_set1_epi8(1), w = _mm256_set1_epi8(1), ones = _mm256_set1_epi16(1);
  for (size_t i = 0; i < iters; ++i) {
#pragma GCC unroll 8
    for (auto& a : acc) {
      a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), ones));
    }
  }
  for (int j = 1; j < 8; ++j) acc[0] = _mm256_add_epi32(acc[0], acc[j]);
  alignas(32) int32_t l[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(l), acc[0]);
  sink[0] = static_cast<float>(l[0]);
  return 8.0 * 32 * 2 * iters;
}

struct alignas(64) AmxTileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// 4 accumulator tiles, 2 A and 2 B tiles (the GEMM kernel's 2 x 2 shape),
// operands loaded once: the TDPBF16PS issue rate alone.
__attribute__((target("amx-tile,amx-bf16"))) double PeakLoopAmxBf16(size_t iters, float* sink) {
  AmxTileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  asm volatile("" : : "r"(&cfg) : "memory");  // LDTILECFG reads all of cfg
  _tile_loadconfig(&cfg);
  alignas(64) static const uint16_t ones[16 * 32] = {};
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, ones, 64);
  _tile_loadd(5, ones, 64);
  _tile_loadd(6, ones, 64);
  _tile_loadd(7, ones, 64);
  for (size_t i = 0; i < iters; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float c[16 * 16];
  _tile_stored(0, c, 64);
  _tile_release();
  sink[0] = c[0];
  return 4.0 * 16 * 16 * 32 * 2 * iters;
}

// The peak GFLOP/s of one loop on all of the pool's threads: the best of 5
// runs of >= 50 ms each.
double MeasurePeak(ThreadPool& pool, double (*loop)(size_t, float*), size_t iters) {
  double best = 0;
  const size_t n = static_cast<size_t>(pool.num_threads());
  std::vector<float> sinks(16 * n);
  for (int rep = 0; rep < 5; ++rep) {
    std::atomic<uint64_t> flops_bits{0};
    std::vector<double> flops(n, 0.0);
    const auto t0 = Clock::now();
    pool.ParallelFor(n, 1, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) flops[i] = loop(iters, sinks.data() + 16 * i);
    });
    const double s = Seconds(t0, Clock::now());
    double total = 0;
    for (double f : flops) total += f;
    best = std::max(best, total / s / 1e9);
  }
  return best;
}

struct Peaks {
  double fma_gflops = 0;   // the ISA's f32 FMA (256- or 512-bit)
  double bf16_gflops = 0;  // its bf16-weight x bf16-exact-x instruction
  const char* fma_name = "";
  const char* bf16_name = "";
  double int8_gops = 0;  // its int8 dot product instruction (int8 activations)
  const char* int8_name = "";
};

Peaks MeasurePeaks(CpuIsa isa, ThreadPool& pool) {
  Peaks p;
  switch (isa) {
    case CpuIsa::kScalar:
      break;
    case CpuIsa::kAvx2:
      p.fma_name = p.bf16_name = "FMA (256-bit)";
      p.fma_gflops = p.bf16_gflops = MeasurePeak(pool, PeakLoopFma256, size_t{4} << 20);
      p.int8_name = "VPMADDUBSW";
      p.int8_gops = MeasurePeak(pool, PeakLoopMaddubs256, size_t{4} << 20);
      break;
    case CpuIsa::kAvx512Bf16:
      p.fma_name = "FMA (512-bit)";
      p.fma_gflops = MeasurePeak(pool, PeakLoopFma512, size_t{4} << 20);
      p.bf16_name = "VDPBF16PS";
      p.bf16_gflops = MeasurePeak(pool, PeakLoopDpbf16, size_t{4} << 20);
      p.int8_name = "VPDPBUSD";
      p.int8_gops = MeasurePeak(pool, PeakLoopVnni512, size_t{4} << 20);
      break;
    case CpuIsa::kAmx:
      p.fma_name = "FMA (512-bit)";
      p.fma_gflops = MeasurePeak(pool, PeakLoopFma512, size_t{4} << 20);
      p.bf16_name = "AMX TDPBF16PS";
      p.bf16_gflops = MeasurePeak(pool, PeakLoopAmxBf16, size_t{1} << 18);
      p.int8_name = "VPDPBUSD";
      p.int8_gops = MeasurePeak(pool, PeakLoopVnni512, size_t{4} << 20);
      break;
  }
  return p;
}

// Multithreaded read passes over a 512 MiB buffer (far larger than any
// LLC), in GB/s (1e9 bytes/s). Each pass reads one 32 MiB slice, cycling
// over the slices: short passes, like the kernel calls timed below, are
// rarely hit by preemption when the cores are shared, so the best pass is
// the machine's limit.
struct Bandwidth {
  double best_gbs;
  double median_gbs;
};

Bandwidth MeasureReadBandwidth(ThreadPool& pool) {
  const size_t bytes = size_t{512} << 20;
  const size_t words = bytes / 8;
  const size_t slice_words = (size_t{32} << 20) / 8;
  const size_t chunk_words = (size_t{1} << 20) / 8;  // 1 MiB units, taken dynamically
  WeightBuffer storage = AllocWeights(bytes);
  uint64_t* buf = reinterpret_cast<uint64_t*>(storage.get());
  // First touch from the pool, so pages spread like the reads will.
  pool.ParallelFor(words, words / pool.num_threads(), [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) buf[i] = i;
  });
  std::vector<double> gbs;
  std::atomic<uint64_t> sink{0};  // keeps the sums alive
  for (size_t pass = 0; pass < 3 * words / slice_words; ++pass) {
    const uint64_t* slice = buf + pass % (words / slice_words) * slice_words;
    const auto t0 = Clock::now();
    pool.ParallelFor(slice_words / chunk_words, 1, [&](size_t b, size_t e) {
      const uint64_t s = SumWords(slice + b * chunk_words, (e - b) * chunk_words);
      sink.fetch_add(s, std::memory_order_relaxed);
    });
    gbs.push_back(slice_words * 8 / Seconds(t0, Clock::now()) / 1e9);
  }
  std::sort(gbs.begin(), gbs.end());
  return Bandwidth{gbs.back(), gbs[gbs.size() / 2]};
}

struct Shape {
  const char* name;
  size_t M, N, K;
  DType dtype;
};

struct QuantShape {
  const char* name;
  size_t M, N, K;
  QuantFormat format;
  QuantActivations acts = QuantActivations::kF32;
};

// Seconds per call over many calls: the median is what to expect, the
// minimum what the machine gives when nothing else runs (this bench usually
// shares its cores with other work).
struct CallTimes {
  double median_s;
  double min_s;
};

CallTimes Summarise(std::vector<double> t) {
  std::sort(t.begin(), t.end());
  return CallTimes{t[t.size() / 2], t.front()};
}

class KernelBench {
 public:
  KernelBench(CpuContext ctx, double bandwidth_gbs, Peaks peaks)
      : ctx_(ctx), bw_(bandwidth_gbs), peaks_(peaks) {}

  // Returns false when the kernel disagrees with GemmReference.
  bool Run(const Shape& s) {
    const size_t w_elem = DTypeSize(s.dtype);
    const size_t w_bytes = s.N * s.K * w_elem;
    const size_t copies = std::max<size_t>(1, ((size_t{256} << 20) + w_bytes - 1) / w_bytes);
    std::vector<WeightBuffer> w(copies);
    Rng rng(s.N * 31 + s.K * 7 + s.M);
    w[0] = AllocWeights(w_bytes);
    if (s.dtype == DType::kBF16) {
      auto* p = reinterpret_cast<uint16_t*>(w[0].get());
      for (size_t i = 0; i < s.N * s.K; ++i) p[i] = F32ToBf16(rng.Next() * 0.05f);
    } else {
      auto* p = reinterpret_cast<float*>(w[0].get());
      for (size_t i = 0; i < s.N * s.K; ++i) p[i] = rng.Next() * 0.05f;
    }
    for (size_t c = 1; c < copies; ++c) {
      w[c] = AllocWeights(w_bytes);
      std::memcpy(w[c].get(), w[0].get(), w_bytes);
    }
    std::vector<float> x(s.M * s.K);
    for (float& v : x) v = rng.Next();
    RoundInPlace(x.data(), x.size(), s.dtype);
    std::vector<float> y(s.M * s.N), ref(s.M * s.N);

    Call(s, x.data(), w[0].get(), y.data());
    GemmReference(x.data(), s.K, w[0].get(), s.dtype, s.K, ref.data(), s.N, s.M, s.N, s.K);
    if (!Check(s, x, w[0].get(), y, ref)) return false;

    const CallTimes cold = TimeCalls(s, x.data(), w, y.data(), copies);
    const CallTimes hot = copies == 1 ? cold : TimeCalls(s, x.data(), w, y.data(), 1);
    Print(s.name, DTypeName(s.dtype), s.M, s.N, s.K, w_bytes, cold, hot,
          s.dtype == DType::kBF16 ? peaks_.bf16_gflops : peaks_.fma_gflops);
    return true;
  }

  // Quantized weights: each copy is one buffer holding the values ([N]
  // rows of QuantRowBytes) followed by the f16 scales ([N, groups]).
  bool Run(const QuantShape& s) {
    const size_t row_bytes = QuantRowBytes(s.format, s.K);
    const size_t groups = QuantGroupsPerRow(s.K);
    const size_t q_bytes = s.N * row_bytes;
    const size_t w_bytes = q_bytes + s.N * groups * sizeof(uint16_t);
    const size_t copies = std::max<size_t>(1, ((size_t{256} << 20) + w_bytes - 1) / w_bytes);
    std::vector<WeightBuffer> w(copies);
    Rng rng(s.N * 31 + s.K * 7 + s.M + static_cast<size_t>(s.format));
    {
      std::vector<float> wf(s.N * s.K);
      for (float& v : wf) v = rng.Next() * 0.05f;
      w[0] = AllocWeights(w_bytes);
      const absl::Status st =
          QuantizeRows(s.format, wf.data(), s.K, s.N, s.K, w[0].get(), row_bytes,
                       reinterpret_cast<uint16_t*>(w[0].get() + q_bytes), groups);
      if (!st.ok()) {
        std::printf("%-17s quantization failed: %s\n", s.name, std::string(st.message()).c_str());
        return false;
      }
    }
    for (size_t c = 1; c < copies; ++c) {
      w[c] = AllocWeights(w_bytes);
      std::memcpy(w[c].get(), w[0].get(), w_bytes);
    }
    const auto view = [&](size_t c) {
      return QuantizedWeights{s.format, w[c].get(), row_bytes,
                              reinterpret_cast<const uint16_t*>(w[c].get() + q_bytes), groups};
    };
    std::vector<float> x(s.M * s.K);
    for (float& v : x) v = rng.Next();
    std::vector<float> y(s.M * s.N), ref(s.M * s.N);
    QGemm(ctx_, x.data(), s.K, view(0), y.data(), s.N, s.M, s.N, s.K, s.acts);
    QGemmReference(x.data(), s.K, view(0), ref.data(), s.N, s.M, s.N, s.K, s.acts);
    const bool int8_x = s.acts == QuantActivations::kInt8;
    // int8 activations: the reference's bits. f32: a tolerance of: two f32 sums of K products and
    // `groups` scalings.
    const QuantizedWeights w0 = view(0);
    std::vector<float> deq(s.K);
    const double unit = std::ldexp(1.0, -24);
    for (size_t n = 0; n < s.N; ++n) {
      DequantizeRow(s.format, w[0].get() + n * row_bytes, w0.scales + n * groups, s.K, deq.data());
      for (size_t m = 0; m < s.M; ++m) {
        double abs_sum = 0;
        for (size_t k = 0; k < s.K; ++k) abs_sum += std::fabs(double{x[m * s.K + k]} * deq[k]);
        const double tol = int8_x ? 0.0 : 2.0 * (s.K + groups + 4) * unit * abs_sum + 1e-30;
        const double err = std::fabs(double{y[m * s.N + n]} - ref[m * s.N + n]);
        if (!(err <= tol)) {
          std::printf("%-17s MISMATCH at m=%zu n=%zu: %.9g vs reference %.9g (tolerance %.3g)\n",
                      s.name, m, n, y[m * s.N + n], ref[m * s.N + n], tol);
          return false;
        }
      }
    }
    const auto call = [&](size_t c) {
      QGemm(ctx_, x.data(), s.K, view(c), y.data(), s.N, s.M, s.N, s.K, s.acts);
    };
    const CallTimes cold = TimeQuantCalls(call, copies);
    const CallTimes hot = copies == 1 ? cold : TimeQuantCalls(call, 1);
    const std::string w_name = std::string(QuantFormatName(s.format)) + (int8_x ? "x8" : "");
    Print(s.name, w_name.c_str(), s.M, s.N, s.K, w_bytes, cold, hot,
          int8_x ? peaks_.int8_gops : peaks_.fma_gflops);
    return true;
  }

 private:
  void Call(const Shape& s, const float* x, const void* w, float* y) {
    const XValues xv = s.dtype == DType::kBF16 ? XValues::kBf16Exact : XValues::kF32;
    if (s.M == 1) {
      Gemv(ctx_, x, w, s.dtype, s.K, y, s.N, s.K, xv);
    } else {
      Gemm(ctx_, x, s.K, w, s.dtype, s.K, y, s.N, s.M, s.N, s.K, xv);
    }
  }

  // Times single calls cycling over the first `copies` weight copies, after
  // a warm-up round, for at least 0.4 s and two rounds of copies.
  CallTimes TimeCalls(const Shape& s, const float* x, const std::vector<WeightBuffer>& w, float* y,
                      size_t copies) {
    for (size_t c = 0; c < copies; ++c) Call(s, x, w[c].get(), y);
    std::vector<double> times;
    const auto start = Clock::now();
    while (times.size() < 2 * copies || Seconds(start, Clock::now()) < 0.4) {
      const auto t0 = Clock::now();
      Call(s, x, w[times.size() % copies].get(), y);
      times.push_back(Seconds(t0, Clock::now()));
    }
    return Summarise(std::move(times));
  }

  // TimeCalls for QGemm: call(c) runs on weight copy c.
  template <typename Call>
  CallTimes TimeQuantCalls(const Call& call, size_t copies) {
    for (size_t c = 0; c < copies; ++c) call(c);
    std::vector<double> times;
    const auto start = Clock::now();
    while (times.size() < 2 * copies || Seconds(start, Clock::now()) < 0.4) {
      const auto t0 = Clock::now();
      call(times.size() % copies);
      times.push_back(Seconds(t0, Clock::now()));
    }
    return Summarise(std::move(times));
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

  // w_bytes: the weights' bytes (values and scales) read per call.
  // peak_gflops: the measured peak of the kernel's instruction (0: none).
  void Print(const char* name, const char* w_name, size_t M, size_t N, size_t K, size_t w_bytes,
             const CallTimes& cold, const CallTimes& hot, double peak_gflops) {
    const double bytes = static_cast<double>(w_bytes) + 4.0 * M * (K + N);
    const double flops = 2.0 * M * N * K;
    const double gbs = bytes / cold.median_s / 1e9;
    const double bits_per_weight = 8.0 * w_bytes / (static_cast<double>(N) * K);
    std::printf(
        "%-17s %6s %5.2f %4zu %6zu %5zu %8.2f %9.1f %7.2f %7.1f %5.1f%% | %9.1f %7.2f %5.1f%% | "
        "%9.1f %7.1f %5.1f%%\n",
        name, w_name, bits_per_weight, M, N, K, bytes / 1e6, cold.median_s * 1e6, gbs,
        flops / cold.median_s / 1e9, 100.0 * gbs / bw_, cold.min_s * 1e6, bytes / cold.min_s / 1e9,
        100.0 * bytes / cold.min_s / 1e9 / bw_, hot.median_s * 1e6, flops / hot.median_s / 1e9,
        peak_gflops > 0 ? 100.0 * flops / hot.median_s / 1e9 / peak_gflops : 0.0);
    std::fflush(stdout);
  }

  const CpuContext ctx_;
  const double bw_;
  const Peaks peaks_;
};

int Main(int argc, char** argv) {
  int threads = 2;
  std::string isa_flag;
  bool quant_only = false;      // only the int8/int4 cases
  bool bandwidth_only = false;  // only the read bandwidth line
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quant-only") {
      quant_only = true;
    } else if (arg == "--bandwidth-only") {
      bandwidth_only = true;
    } else if (arg == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (arg == "--isa" && i + 1 < argc) {
      isa_flag = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: %s [--threads N] [--isa auto|scalar|avx2|avx512bf16|amx] "
                   "[--quant-only] [--bandwidth-only]\n",
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
  const Bandwidth bw = MeasureReadBandwidth(pool);
  std::printf(
      "isa=%s threads=%d\nmemory read bandwidth (48 passes of 32 MiB over 512 MiB): best %.2f "
      "GB/s, "
      "median %.2f GB/s; %%bw below is against the best\n",
      std::string(CpuIsaName(*isa)).c_str(), threads, bw.best_gbs, bw.median_gbs);
  if (bandwidth_only) return 0;
  std::printf(
      "cold: weights cycled through >= 256 MiB of copies (read from DRAM each call); hot: one\n"
      "copy repeated (LLC-resident when it fits). Times per call; %%bw = achieved GB/s / measured\n"
      "read bandwidth. Bytes = weights (int8/int4: values + f16 scales) + x + y; bpw = weight\n"
      "bits per weight.\n");
  const Peaks peaks = MeasurePeaks(*isa, pool);
  if (peaks.fma_gflops > 0) {
    std::printf("measured peak, %d threads: %s %.1f GFLOP/s", threads, peaks.fma_name,
                peaks.fma_gflops);
    if (peaks.bf16_gflops != peaks.fma_gflops) {
      std::printf(", %s %.1f GFLOP/s", peaks.bf16_name, peaks.bf16_gflops);
    }
    std::printf(", %s %.1f GOP/s", peaks.int8_name, peaks.int8_gops);
    std::printf(
        "\n%%peak = hot GFLOP/s against the peak of the kernel's instruction (bf16 weights: "
        "%s; int8/int4 weights with int8 activations (w int8x8, int4x8): %s; f32, int8, int4: "
        "%s)\n",
        peaks.bf16_name, peaks.int8_name, peaks.fma_name);
  }
  std::printf("\n%-17s %6s %5s %4s %6s %5s %8s %9s %7s %7s %6s | %9s %7s %6s | %9s %7s %6s\n",
              "kernel", "w", "bpw", "M", "N", "K", "MB", "median_us", "GB/s", "GFLOP/s", "bw",
              "min_us", "GB/s", "bw", "hot_us", "GFLOP/s", "peak");

  KernelBench bench(CpuContext{*isa, &pool}, bw.best_gbs, peaks);
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
      {"gemm", 512, 2048, 2048, DType::kBF16},
      {"gemm expert up", 32, 1408, 2048, DType::kBF16},
      {"gemm expert up", 2, 2816, 2048, DType::kBF16},
      {"gemm lm_head", 8, 102400, 2048, DType::kBF16},
      {"gemm", 8, 2048, 2048, DType::kF32},
      {"gemm", 32, 2048, 2048, DType::kF32},
      {"gemm", 128, 2048, 2048, DType::kF32},
  };
  const QuantShape quant_shapes[] = {
      {"gemv q/o-proj", 1, 2048, 2048, QuantFormat::kInt8},
      {"gemv q/o-proj", 1, 2048, 2048, QuantFormat::kInt4},
      {"gemv mlp up", 1, 10944, 2048, QuantFormat::kInt8},
      {"gemv mlp up", 1, 10944, 2048, QuantFormat::kInt4},
      {"gemv expert down", 1, 2048, 1408, QuantFormat::kInt8},
      {"gemv expert down", 1, 2048, 1408, QuantFormat::kInt4},
      {"gemv lm_head", 1, 102400, 2048, QuantFormat::kInt8},
      {"gemv lm_head", 1, 102400, 2048, QuantFormat::kInt4},
      {"gemm", 8, 2048, 2048, QuantFormat::kInt8},
      {"gemm", 32, 2048, 2048, QuantFormat::kInt8},
      {"gemm", 128, 2048, 2048, QuantFormat::kInt8},
      {"gemm", 8, 2048, 2048, QuantFormat::kInt4},
      {"gemm", 32, 2048, 2048, QuantFormat::kInt4},
      {"gemm", 128, 2048, 2048, QuantFormat::kInt4},
  };
  bool ok = true;
  if (!quant_only) {
    for (const Shape& s : shapes) ok = bench.Run(s) && ok;
  }
  for (const QuantShape& s : quant_shapes) {
    ok = bench.Run(s) && ok;
    QuantShape x8 = s;  // the same shape with int8 activations (the quantized models' default)
    x8.acts = QuantActivations::kInt8;
    ok = bench.Run(x8) && ok;
  }
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace dsv2::kernels

int main(int argc, char** argv) { return dsv2::kernels::Main(argc, argv); }
