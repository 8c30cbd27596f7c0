// QuantActivations::kInt8 (cpu.h): the activation quantizer every ISA
// shares, and the portable scalar kernel, which is the arithmetic of record
// (QGemmReference with kInt8 runs it; the vector kernels in
// qgemm_dot_avx2.cc and qgemm_dot_avx512.cc match it bit for bit: their
// integer sums are exact, and the f32 steps are the same operations in the
// same order). Compiled with -ffp-contract=off (CMakeLists.txt): c_g and the
// final tree must round each operation.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kernels/cpu.h"
#include "kernels/cpu/qgemm_internal.h"
#include "kernels/dtype.h"
#include "kernels/quant.h"

namespace dsv2::kernels::internal {
namespace {

constexpr size_t kGroup = kQuantGroupSize;

// The byte of the QuantizedActivations row holding element k (group g,
// position j in the group) for weights of `format`.
inline size_t XByte(QuantFormat format, size_t g, size_t j) {
  if (format == QuantFormat::kInt8) return g * kGroup + j;
  const size_t block = g / 4, in_block = g % 4;
  return block * 128 + (j < 16 ? 0 : 64) + in_block * 16 + j % 16;
}

// One output element: the arithmetic of record.
[[gnu::noinline]] float DotRow(QuantFormat format, const QuantizedActivations& xq, size_t m,
                               const uint8_t* q_row, const uint16_t* scale_row, size_t K) {
  const int8_t* qx = xq.q + m * xq.ldq;
  const float* d = xq.d + m * xq.ldd;
  const size_t groups = QuantGroupsPerRow(K);
  const size_t padded = GroupsPadded8(K);
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (size_t g = 0; g < padded; ++g) {
    int32_t isum = 0;
    float c = 0.0f;
    if (g < groups) {
      for (size_t j = 0; j < kGroup && g * kGroup + j < K; ++j) {
        isum += QuantValueAt(format, q_row, g * kGroup + j) * qx[XByte(format, g, j)];
      }
      c = F16ToF32(scale_row[g]) * d[g];
    }
    lane[g % 8] = std::fma(static_cast<float>(isum), c, lane[g % 8]);
  }
  return ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
}

// Rows [m_begin, m_end) of x into the arrays of the whole [M, K] layout.
void QuantizeRowsOfX(const float* x, size_t ldx, size_t m_begin, size_t m_end, size_t K,
                     QuantFormat format, int8_t* q, float* d, int32_t* sum8) {
  const size_t groups = QuantGroupsPerRow(K);
  const size_t padded = GroupsPadded8(K);
  const size_t ldq = padded * kGroup;
  for (size_t m = m_begin; m < m_end; ++m) {
    const float* xr = x + m * ldx;
    int8_t* qr = q + m * ldq;
    float* dr = d + m * padded;
    int32_t* sr = sum8 + m * padded;
    std::memset(qr, 0, ldq);
    for (size_t g = groups; g < padded; ++g) {
      dr[g] = 0.0f;
      sr[g] = 0;
    }
    for (size_t g = 0; g < groups; ++g) {
      const size_t begin = g * kGroup;
      const size_t n = K - begin < kGroup ? K - begin : kGroup;
      float amax = 0.0f;
      bool finite = true;
      for (size_t j = 0; j < n; ++j) {
        const float a = std::fabs(xr[begin + j]);
        finite = finite && std::isfinite(a);
        amax = a > amax ? a : amax;
      }
      int32_t sum = 0;
      if (!finite) {
        dr[g] = std::numeric_limits<float>::quiet_NaN();  // y becomes NaN; q stays 0
      } else {
        dr[g] = amax / 127.0f;
        const float r = amax == 0.0f ? 0.0f : 127.0f / amax;
        for (size_t j = 0; j < n; ++j) {
          // |x * r| <= 127 up to one rounding, so the integer is in [-127, 127].
          const auto v = static_cast<int32_t>(std::nearbyint(xr[begin + j] * r));
          qr[XByte(format, g, j)] = static_cast<int8_t>(v);
          sum += v;
        }
      }
      sr[g] = 8 * sum;
    }
  }
}

}  // namespace

QuantizedActivationBuffers::QuantizedActivationBuffers(const float* x, size_t ldx, size_t M,
                                                       size_t K, QuantFormat format,
                                                       ThreadPool* pool) {
  const size_t padded = GroupsPadded8(K);
  q_.resize(M * padded * kGroup);
  d_.resize(M * padded);
  sum8_.resize(M * padded);
  const auto rows = [&](size_t m0, size_t m1) {
    QuantizeRowsOfX(x, ldx, m0, m1, K, format, q_.data(), d_.data(), sum8_.data());
  };
  if (pool != nullptr && M >= 16) {
    pool->ParallelFor(M, 4, rows);
  } else {
    rows(0, M);
  }
  view_ = {q_.data(), padded * kGroup, d_.data(), sum8_.data(), padded};
}

void QGemmDotBlockScalar(const QGemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                         size_t n_end) {
  for (size_t m = m_begin; m < m_end; ++m) {
    float* y = op.y + m * op.ldy;
    for (size_t n = n_begin; n < n_end; ++n) {
      y[n] = DotRow(op.format, *op.xq, m, op.q + n * op.ldq, op.scales + n * op.lds, op.K);
    }
  }
}

}  // namespace dsv2::kernels::internal
