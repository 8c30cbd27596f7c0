#include "model/ffn.h"

#include <vector>

#include "kernels/ops.h"

namespace dsv2 {

void SwiGluFfn(const kernels::CpuContext& ctx, const WeightMatrix& gate, const WeightMatrix& up,
               const WeightMatrix& down, const WeightMatrix* gate_up, const float* x, int64_t n,
               DType act, float* out) {
  const int64_t D = gate.cols, I = gate.rows;
  // Activations are act-rounded, so bf16 models may use the bf16 dot path.
  const kernels::XValues xv =
      act == DType::kBF16 ? kernels::XValues::kBf16Exact : kernels::XValues::kF32;
  std::vector<float> gu(n * 2 * I);  // row: [gate (I) | up (I)]
  if (gate_up != nullptr) {
    kernels::Gemm(ctx, x, D, gate_up->data, gate_up->dtype, gate_up->row_stride, gu.data(), 2 * I,
                  n, 2 * I, D, xv);
  } else {
    kernels::Gemm(ctx, x, D, gate.data, gate.dtype, gate.row_stride, gu.data(), 2 * I, n, I, D, xv);
    kernels::Gemm(ctx, x, D, up.data, up.dtype, up.row_stride, gu.data() + I, 2 * I, n, I, D, xv);
  }
  RoundInPlace(gu.data(), gu.size(), act);
  std::vector<float> h(n * I);
  for (int64_t i = 0; i < n; ++i) {
    kernels::SwiGlu(&gu[i * 2 * I], &gu[i * 2 * I + I], I, act, &h[i * I]);
  }
  kernels::Gemm(ctx, h.data(), I, down.data, down.dtype, down.row_stride, out, D, n, D, I, xv);
  RoundInPlace(out, static_cast<size_t>(n * D), act);
}

}  // namespace dsv2
