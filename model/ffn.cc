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
    Linear(ctx, x, D, *gate_up, gu.data(), 2 * I, n, xv);
  } else {
    Linear(ctx, x, D, gate, gu.data(), 2 * I, n, xv);
    Linear(ctx, x, D, up, gu.data() + I, 2 * I, n, xv);
  }
  RoundInPlace(gu.data(), gu.size(), act);
  std::vector<float> h(n * I);
  for (int64_t i = 0; i < n; ++i) {
    kernels::SwiGlu(&gu[i * 2 * I], &gu[i * 2 * I + I], I, act, &h[i * I]);
  }
  Linear(ctx, h.data(), I, down, out, D, n, xv);
  RoundInPlace(out, static_cast<size_t>(n * D), act);
}

}  // namespace dsv2
