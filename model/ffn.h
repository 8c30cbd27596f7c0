// The SwiGLU feed-forward network of MODEL_SPEC.md section 3, shared by the
// dense MLP and shared experts (attention node) and the routed experts
// (expert shard): y = down(silu(gate x) * up x), with the activation-dtype
// rounding PyTorch applies after each linear and after the product.
// Thread-safety: reentrant; uses ctx.pool.
#ifndef DSV2_MODEL_FFN_H_
#define DSV2_MODEL_FFN_H_

#include <cstdint>

#include "kernels/cpu.h"
#include "model/weights.h"

namespace dsv2 {

// x: [n, D] f32 holding `act` values; out: [n, D] f32 (rounded to `act`).
// gate/up: [I, D], down: [D, I]; gate_up (optional): gate and up as one
// [2I, D] matrix, computed with one GEMM (fused checkpoints).
void SwiGluFfn(const kernels::CpuContext& ctx, const WeightMatrix& gate, const WeightMatrix& up,
               const WeightMatrix& down, const WeightMatrix* gate_up, const float* x, int64_t n,
               DType act, float* out);

}  // namespace dsv2

#endif  // DSV2_MODEL_FFN_H_
