#include "expert_service/expert_shard.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"

namespace dsv2 {

ExpertShard::ExpertShard(const ModelConfig& config, std::unique_ptr<ExpertWeightSet> weights,
                         kernels::CpuContext ctx)
    : config_(config), weights_(std::move(weights)), ctx_(ctx) {}

absl::StatusOr<router::ExpertReply> ExpertShard::Handle(
    const router::ExpertDispatch& d) const {
  const int64_t D = config_.hidden_size, I = config_.moe_intermediate_size;
  if (d.hidden != D) {
    return absl::InvalidArgumentError(
        absl::StrCat("dispatch hidden size ", d.hidden, " != model hidden size ", D));
  }
  if (d.dtype != DType::kF32 && d.dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("dispatch dtype ", DTypeName(d.dtype), " is not an activation dtype"));
  }
  if (d.num_rows < 0 ||
      d.activations.size() != static_cast<size_t>(d.num_rows) * D * DTypeSize(d.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("dispatch has ", d.activations.size(),
                                                   " activation bytes for ", d.num_rows,
                                                   " rows of ", D, " ", DTypeName(d.dtype)));
  }
  if (d.layer < 0 || d.layer >= config_.num_hidden_layers || !config_.is_moe_layer(d.layer)) {
    return absl::InvalidArgumentError(absl::StrCat("dispatch layer ", d.layer,
                                                   " is not a MoE layer"));
  }
  // Group assignments by expert (ascending id; stable within an expert).
  std::vector<int32_t> order(d.assignments.size());
  for (size_t i = 0; i < order.size(); ++i) {
    const router::Assignment& a = d.assignments[i];
    if (a.row < 0 || a.row >= d.num_rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("assignment ", i, ": row ", a.row, " out of range [0, ", d.num_rows, ")"));
    }
    if (weights_->Find(d.layer, a.expert) == nullptr) {
      return absl::NotFoundError(absl::StrCat("assignment ", i, ": expert ", a.expert,
                                              " of layer ", d.layer, " is not on this shard"));
    }
    order[i] = static_cast<int32_t>(i);
  }
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return d.assignments[a].expert < d.assignments[b].expert;
  });

  router::ExpertReply reply;
  reply.dtype = d.dtype;
  reply.hidden = d.hidden;
  reply.outputs.resize(d.assignments.size() * D * DTypeSize(d.dtype));
  // Dispatched rows and SwiGLU outputs hold activation-dtype values.
  const kernels::XValues xv =
      d.dtype == DType::kBF16 ? kernels::XValues::kBf16Exact : kernels::XValues::kF32;
  std::vector<float> x, gate_up, act, out;
  size_t begin = 0;
  while (begin < order.size()) {
    const int32_t expert = d.assignments[order[begin]].expert;
    size_t end = begin;
    while (end < order.size() && d.assignments[order[end]].expert == expert) ++end;
    const size_t n = end - begin;
    const ExpertWeights& w = *weights_->Find(d.layer, expert);
    x.resize(n * D);
    for (size_t i = 0; i < n; ++i) {
      const size_t row = d.assignments[order[begin + i]].row;
      ToF32(d.activations.data() + row * D * DTypeSize(d.dtype), d.dtype, D, &x[i * D]);
    }
    gate_up.resize(n * 2 * I);
    if (w.gate_up) {
      kernels::Gemm(ctx_, x.data(), D, w.gate_up->data, w.gate_up->dtype, w.gate_up->row_stride,
                    gate_up.data(), 2 * I, n, 2 * I, D, xv);
    } else {
      kernels::Gemm(ctx_, x.data(), D, w.gate.data, w.gate.dtype, w.gate.row_stride,
                    gate_up.data(), 2 * I, n, I, D, xv);
      kernels::Gemm(ctx_, x.data(), D, w.up.data, w.up.dtype, w.up.row_stride,
                    gate_up.data() + I, 2 * I, n, I, D, xv);
    }
    RoundInPlace(gate_up.data(), gate_up.size(), d.dtype);
    act.resize(n * I);
    for (size_t i = 0; i < n; ++i) {
      kernels::SwiGlu(&gate_up[i * 2 * I], &gate_up[i * 2 * I + I], I, d.dtype, &act[i * I]);
    }
    out.resize(n * D);
    kernels::Gemm(ctx_, act.data(), I, w.down.data, w.down.dtype, w.down.row_stride, out.data(), D,
                  n, D, I, xv);
    for (size_t i = 0; i < n; ++i) {
      FromF32(&out[i * D], D, d.dtype,
              reply.outputs.data() + static_cast<size_t>(order[begin + i]) * D * DTypeSize(d.dtype));
    }
    begin = end;
  }
  return reply;
}

}  // namespace dsv2
